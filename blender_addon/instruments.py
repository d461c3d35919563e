"""Laparoscopic instrument geometry in the tool frame (numpy, no bpy).

Tool frame: origin at the tip point, +z along the shaft towards the tip, so the shaft lies at
negative z. Each tool is a shaft (class tool_shaft) and a tip part (class tool_tip). Vertex
counts do not depend on the jaw opening, so the renderer can re-pose a tool by rewriting
vertex coordinates without creating data blocks.
"""
from __future__ import annotations

import numpy as np

from .core.geometry import Mesh, box, cylinder, merge, rotation_about
from .sampling import SHAFT_LENGTH, SHAFT_RADIUS

JAW_LENGTH = 16.0
COLLAR_LENGTH = 7.0
HOOK_ROD = 14.0
HOOK_LENGTH = 5.0


def _tapered_jaw(length: float, base_w: float, tip_w: float, thickness: float) -> Mesh:
    """A jaw along +z from the hinge (z=0), tapering towards its end, flat side at y=0."""
    m = box((1.0, 1.0, 1.0), center=(0.0, 0.5, 0.5))
    v = m.vertices.copy()
    w = base_w + (tip_w - base_w) * v[:, 2]
    v[:, 0] = (v[:, 0]) * w
    v[:, 1] = v[:, 1] * thickness
    v[:, 2] = v[:, 2] * length
    return Mesh(v, m.faces)


def tool_parts(kind: str, opening_deg: float = 0.0) -> tuple[Mesh, Mesh]:
    """(shaft, tip) meshes of an instrument in its tool frame."""
    if kind == "grasper":
        half = np.radians(opening_deg) / 2
        hinge_z = -JAW_LENGTH * np.cos(half)
        jaws = []
        for sign in (1.0, -1.0):
            jaw = _tapered_jaw(JAW_LENGTH, 4.0, 2.2, 1.8)
            v = jaw.vertices.copy()
            v[:, 1] *= sign
            faces = jaw.faces if sign > 0 else jaw.faces[:, ::-1]  # keep outward orientation
            R = rotation_about(np.array([1.0, 0, 0]), -sign * half)
            v = v @ R.T + np.array([0, 0, hinge_z])
            jaws.append(Mesh(v, faces))
        collar = cylinder(SHAFT_RADIUS * 0.95, COLLAR_LENGTH, 20, z0=hinge_z - COLLAR_LENGTH)
        tip = merge(jaws + [collar])
        shaft_end = hinge_z - COLLAR_LENGTH
    elif kind == "hook":
        rod = cylinder(0.9, HOOK_ROD, 12, z0=-HOOK_ROD)
        hook = cylinder(0.9, HOOK_LENGTH, 12, z0=0.0)
        hv = hook.vertices[:, [2, 1, 0]] * np.array([1, 1, 1]) - np.array([0, 0, 0.9])  # along +x
        hook = Mesh(hv, hook.faces[:, ::-1])  # axis swap mirrors: flip faces to stay outward
        collar = cylinder(SHAFT_RADIUS * 0.95, COLLAR_LENGTH, 20, z0=-HOOK_ROD - COLLAR_LENGTH)
        tip = merge([rod, hook, collar])
        shaft_end = -HOOK_ROD - COLLAR_LENGTH
    else:
        raise ValueError(f"unknown tool type {kind!r}")
    shaft = cylinder(SHAFT_RADIUS, SHAFT_LENGTH, 24, z0=shaft_end - SHAFT_LENGTH)
    return shaft, tip
