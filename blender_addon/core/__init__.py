"""The pure core of lapsynth: what renderer and backend agree on, importable without bpy or torch.

- `dataset`: the on-disk contract (layout of renders *and* translations, index writer and readers,
  manifest, shards, the settings-conflict check), docs/dataset-format.md;
- `classes`: the label classes and their palette;
- `files`: atomic writes; `seeds`: per-frame seed derivation; `settings`: sizes and resume checks;
- `png` and `ply`: the PNG and PLY codecs; `geometry`: the mesh type, mesh checks and camera maths;
- `progress`: the progress line every long program prints and the Blender panel parses;
- `errors`: one base class for every refusal of bad input.

Rule: this package imports only the standard library and numpy (PIL and imageio optionally,
inside functions). It is the only part of `blender_addon` that `backend` may import
(tests/test_architecture.py checks both).
"""
from .version import __version__

__all__ = ["__version__"]
