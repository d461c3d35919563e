"""Patients: the bundled default anatomy (`anatomy`), CT mesh import and patient folders (`folders`),
legacy VTK files (`vtk_legacy`). numpy, scipy, trimesh and blender_addon.core only (no torch)."""
