"""Render Domain A: laparoscopic scenes with exact labels (Blender extension; the panel is in ui.py).

The pure modules (geometry, dataset, sampling, labels, config) import without bpy, so the
backend and the tests can use them outside Blender; bpy is imported only by the scene and
render modules and when Blender registers the extension.
"""

__version__ = "0.1.0"


def register():
    from . import ui

    ui.register()


def unregister():
    from . import ui

    ui.unregister()
