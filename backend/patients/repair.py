"""Repairing and decimating CT surfaces: watertight, manifold, outward, at most --max-faces faces."""
from __future__ import annotations

import time

import fast_simplification
import numpy as np
import trimesh

from blender_addon.core.geometry import Mesh, MeshError, edge_manifold_report

from .reading import merge_exact

PRE_DECIMATION_FACTOR = 4  # organs above this x --max-faces are decimated right after reading
DECIMATION_ROUNDS = 4  # the last decimation runs until an organ has at most --max-faces faces


def _fill_holes(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Close every boundary loop with a fan around its centroid, oriented like its neighbours."""
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = directed[:, 0] * (len(v) + 1) + directed[:, 1]
    rev = directed[:, 1] * (len(v) + 1) + directed[:, 0]
    boundary = directed[~np.isin(keys, rev)]
    if len(boundary) == 0:
        return v, f, 0
    nxt: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        nxt.setdefault(a, []).append(b)
    used = set()
    new_v, new_f, loops = [v], [f], 0
    n = len(v)
    for a0, b0 in boundary.tolist():
        if (a0, b0) in used:
            continue
        loop, a, b = [], a0, b0
        while (a, b) not in used:
            used.add((a, b))
            loop.append((a, b))
            options = [c for c in nxt.get(b, []) if (b, c) not in used]
            if not options:
                break
            a, b = b, options[0]
        if len(loop) < 3:
            continue
        verts = [e[0] for e in loop]
        centre = v[verts].mean(axis=0)
        new_v.append(centre[None])
        # The existing face uses a->b, so the cap uses b->a.
        new_f.append(np.array([[b_, a_, n] for a_, b_ in loop], dtype=np.int64))
        n += 1
        loops += 1
    return np.concatenate(new_v), np.concatenate(new_f), loops


def _clean(tm: trimesh.Trimesh, notes: list[str]) -> trimesh.Trimesh:
    """Merge, drop degenerate faces and loose parts, cut non-manifold edges, fix winding, close holes."""
    n0 = len(tm.vertices)
    tm.merge_vertices()
    if len(tm.vertices) < n0:
        notes.append(f"merged {n0 - len(tm.vertices)} duplicate vertices")
    keep = tm.nondegenerate_faces() & tm.unique_faces()
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} degenerate or duplicate faces")
        tm.update_faces(keep)
    parts = tm.split(only_watertight=False)
    if len(parts) > 1:
        biggest = max(parts, key=lambda p: len(p.faces))
        dropped = sum(len(p.faces) for p in parts) - len(biggest.faces)
        notes.append(f"kept the largest of {len(parts)} parts (dropped {dropped} faces in loose pieces)")
        tm = biggest
    for _ in range(3):
        edges = tm.edges_sorted
        uniq, inv, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
        bad = counts[inv.reshape(-1)] > 2
        if not bad.any():
            break
        faces_bad = np.unique(tm.edges_face[bad])
        notes.append(f"removed {len(faces_bad)} faces on non-manifold edges")
        keep = np.ones(len(tm.faces), bool)
        keep[faces_bad] = False
        tm.update_faces(keep)
        tm.remove_unreferenced_vertices()
    trimesh.repair.fix_winding(tm)
    v, f, loops = _fill_holes(np.asarray(tm.vertices), np.asarray(tm.faces))
    if loops:
        notes.append(f"closed {loops} holes")
        tm = trimesh.Trimesh(v, f, process=False)
        trimesh.repair.fix_winding(tm)
    return tm


def reduce_early(mesh: Mesh, budget: int, label: str, log=print) -> tuple[Mesh, list[str]]:
    """Decimate a mesh above `budget` faces straight after reading (its corners merged first), so that
    the repairs run on a small mesh; says what it does through `log` (these steps take a while)."""
    n = len(mesh.faces)
    if n <= budget:
        return mesh, []
    log(f"{label}: {n:,} faces read; decimating to {budget:,} ...")
    t0 = time.monotonic()
    vertices, index = merge_exact(mesh.vertices)
    f = index[mesh.faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    v, f = fast_simplification.simplify(vertices, f, target_count=budget)
    log(f"{label}: {n:,} -> {len(f):,} faces in {time.monotonic() - t0:.0f} s; repairing ...")
    return Mesh(v, f.astype(np.int64)), [f"decimated {n} -> {len(f)} faces before the repairs"]


def _decimate(tm: trimesh.Trimesh, max_faces: int, name: str, notes: list[str]) -> trimesh.Trimesh:
    """Quadric decimation to at most `max_faces`, each round cleaned up like the input and aiming lower
    by what the clean-up added (closing holes adds faces) and more aggressive when the last fell short."""
    n0, target, rounds, cleanup = len(tm.faces), max_faces, 0, []
    while len(tm.faces) > max_faces and rounds < DECIMATION_ROUNDS:
        v, f = fast_simplification.simplify(np.asarray(tm.vertices), np.asarray(tm.faces),
                                            target_count=target, agg=min(7 + 1.5 * rounds, 10))
        tm = _clean(trimesh.Trimesh(v, f.astype(np.int64), process=False), cleanup)
        target = max(target - max(len(tm.faces) - len(f), 0), max_faces // 2)
        rounds += 1
    if len(tm.faces) > max_faces:
        raise MeshError(f"{name}: {len(tm.faces)} faces after {rounds} rounds of decimation, "
                        f"still above --max-faces {max_faces}")
    if rounds:
        notes.append(f"decimated {n0} -> {len(tm.faces)} faces" + (f" in {rounds} rounds" if rounds > 1 else "")
                     + (f" (then {'; '.join(cleanup)})" if cleanup else ""))
    return tm


def repair(mesh: Mesh, name: str, max_faces: int) -> tuple[Mesh, list[str]]:
    """Make a CT surface watertight, manifold and outward, with at most `max_faces` triangles."""
    notes: list[str] = []
    tm = _clean(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False), notes)
    tm = _decimate(tm, max_faces, name, notes)
    out = Mesh(np.asarray(tm.vertices, float), np.asarray(tm.faces, np.int64))
    if out.volume() < 0:
        out = Mesh(out.vertices, out.faces[:, ::-1].copy())
        notes.append("flipped inward-facing normals")
    if len(out.faces) < 4:  # the checks below pass vacuously on no faces
        raise MeshError(f"{name}: could not be repaired into a closed surface (nothing solid left: "
                        f"{len(out.faces)} faces after removing degenerate faces and loose parts)")
    report = edge_manifold_report(out)
    if not all(report.values()):
        failed = ", ".join(k for k, ok in report.items() if not ok)
        raise MeshError(f"{name}: could not be repaired into a closed surface (failed: {failed})")
    return out, notes


def check_solid(mesh: Mesh, name: str) -> None:
    if len(mesh.faces) < 100:
        raise MeshError(f"{name}: degenerate mesh, only {len(mesh.faces)} faces")
    ext = np.ptp(mesh.vertices, axis=0)
    if ext.min() <= 1e-6 * ext.max():
        raise MeshError(f"{name}: degenerate mesh, flat (zero volume)")
