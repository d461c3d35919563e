"""Render Domain A: laparoscopic scenes with exact labels (Blender extension; the panel is in ui.py).

Layout: `core/` is the pure contract shared with the backend (data set, classes, PNG, meshes);
the other pure modules (config, sampling, instruments, labels, exr, jobs) import without bpy too,
so tests use them outside Blender; bpy is imported only by engine, scene, pipeline's `run`, ui
and when Blender registers the extension.
"""
from .core import __version__

__all__ = ["__version__", "register", "unregister"]


def register():
    from . import ui

    ui.register()


def unregister():
    from . import ui

    ui.unregister()
