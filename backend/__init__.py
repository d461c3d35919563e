"""The PyTorch side of lapsynth. Commands (thin: arguments, then one call into a stage):

    python -m backend.meshes      patients: default anatomy, CT mesh import        -> patients/
    python -m backend.frames      real frames from surgical video                 -> translator/video.py
    python -m backend.train       train the render -> real translator              -> translator/
    python -m backend.translate   write K translations beside every render         -> translator/
    python -m backend.evaluate    translation quality (structure, diversity, FID)  -> translator/quality.py
    python -m backend.segment     segmentation proof on real frames (Table 1)      -> segmenter/

`common/` holds what stages share (devices, images, the data-set reader, CLI helpers). Import
rule: stages import `common` and `blender_addon.core` (the data-set contract), never each other
except segmenter -> common; nothing here imports bpy (tests/test_architecture.py checks it).
"""
