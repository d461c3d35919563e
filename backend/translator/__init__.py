"""The render -> real translator: config, networks, losses, one training step (`trainer`), the
training run (`training`), checkpoints, training data (`data`), translation of a data set
(`translation`, `sheet`), its quality metrics (`quality`) and real frames from video (`video`).
Imports torch, blender_addon.core and backend.common."""
