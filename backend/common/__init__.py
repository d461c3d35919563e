"""What every backend stage shares: --device (`devices`), image files and tensors (`images`), the
data set reader for downstream training (`labelled`), signal handling (`signals`) and CLI helpers
(`cli`). Imports torch and blender_addon.core, never a stage package."""
