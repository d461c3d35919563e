"""The segmentation proof: TernausNet-11 trained on synthetic and/or real frames, evaluated with the
paper's Table 1 protocol (`python -m backend.segment`).

Modules: `labels` (evaluation classes, real data sets' label presets, SegmentError), `metrics` (Dice),
`model` (the network and its files), `data` (frames, targets, augmentation, class weights),
`training` (training loop, prediction, evaluation), `protocol` (the train / eval / protocol commands
and their resume policy), `report` (tables, charts, overlays). Imports torch, torchvision,
blender_addon.core and backend.common, never another stage package.
"""
