"""Patient folders for the renderer: the bundled default patients, and CT meshes imported into the
same layout (units, axes, recentring, repair, decimation, generated fat/ligament/wall).
See backend/meshes.py for the command and the rules in full."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from blender_addon.core.files import atomic_write_bytes
from blender_addon.core.geometry import (
    Mesh,
    MeshError,
    check_mesh,
    edge_manifold_report,
    inside,
)
from blender_addon.core.ply import read_ply, write_ply
from blender_addon.core.seeds import patient_key

from .anatomy import cavity_from_shell, default_patients, generate_patient, organs_around
from .vtk_legacy import read_vtk

SCENE_LIVER_CENTER = np.array([-38.0, 92.0, -20.0])  # where the bundled livers' boxes are centred
AXIS_LETTERS = {"L": (0, 1), "R": (0, -1), "S": (1, 1), "I": (1, -1), "A": (2, 1), "P": (2, -1)}
UNIT_FACTORS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def generate(out: Path, names: list[str] | None = None) -> list[str]:
    known = [spec.name for spec in default_patients()]
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise MeshError(f"--patients: unknown {unknown} (the defaults are {known[0]} .. {known[-1]})")
    written = []
    for spec in default_patients():
        if names and spec.name not in names:
            continue
        meshes = generate_patient(spec)
        folder = out / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        for organ, mesh in meshes.items():
            report = edge_manifold_report(mesh)
            if not all(report.values()):
                raise RuntimeError(f"{spec.name}/{organ}: generated mesh failed its checks {report}")
            write_ply(folder / f"{organ}.ply", mesh, comment=f"lapsynth default anatomy {spec.name} seed {spec.seed}")
        info = {"name": spec.name, "source": "generated", "seed": spec.seed, "units": "mm",
                "gallbladder": spec.gallbladder, "axes": "+X patient left, +Y cranial (head), +Z anterior"}
        atomic_write_bytes(folder / "patient.json", (json.dumps(info, indent=2) + "\n").encode())
        written.append(spec.name)
    return written


# ----------------------------------------------------------------------------- reading

def load_mesh(path: str | os.PathLike) -> Mesh:
    """Any supported mesh file as a Mesh in file units; a clear MeshError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MeshError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".vtk":
        return read_vtk(path)
    if suffix == ".ply":
        return read_ply(path)
    if suffix in (".stl", ".obj"):
        try:
            m = trimesh.load(path, force="mesh", process=False)
        except Exception as e:  # trimesh raises many kinds for garbage input
            raise MeshError(f"{path}: not a readable {suffix[1:].upper()} mesh ({type(e).__name__}: {e})") from None
        if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
            raise MeshError(f"{path}: no triangles in the file")
        return check_mesh(Mesh(np.asarray(m.vertices, float), np.asarray(m.faces, np.int64)), str(path))
    raise MeshError(f"{path}: unsupported mesh format {suffix!r} (use .stl, .ply, .obj or .vtk)")


def axes_matrix(code: str) -> np.ndarray:
    """3x3 rotation taking file coordinates to scene coordinates (+X left, +Y superior, +Z anterior)."""
    code = code.upper()
    if len(code) != 3 or any(c not in AXIS_LETTERS for c in code) or \
            len({AXIS_LETTERS[c][0] for c in code}) != 3:
        raise MeshError(f"--axes {code!r}: give three letters, one of L/R, one of A/P, one of S/I (e.g. LPS)")
    M = np.zeros((3, 3))
    for file_axis, c in enumerate(code):
        scene_axis, sign = AXIS_LETTERS[c]
        M[scene_axis, file_axis] = sign
    if np.linalg.det(M) < 0:
        # A mirror: the CT's handedness differs from the scene's. Keep it (anatomy is not symmetric,
        # but the user said so) and flip face order later so normals stay outward.
        pass
    return M


def detect_units(liver: Mesh, forced: str | None, name: str) -> tuple[str, float]:
    extent = float(np.ptp(liver.vertices, axis=0).max())
    if forced:
        unit = forced
    elif extent < 1.0:
        unit = "m"
    elif extent < 40.0:
        unit = "cm"
    elif extent < 1000.0:
        unit = "mm"
    else:
        raise MeshError(f"{name}: liver extent {extent:g} in file units fits no unit (mm, cm, m)")
    size_mm = extent * UNIT_FACTORS[unit]
    if not 80.0 <= size_mm <= 400.0:
        raise MeshError(f"{name}: liver measures {size_mm:.0f} mm in {unit} (expected 80 to 400 mm); "
                        f"check the file or pass --units")
    return unit, UNIT_FACTORS[unit]


# ----------------------------------------------------------------------------- repairs

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


def repair(mesh: Mesh, name: str, max_faces: int) -> tuple[Mesh, list[str]]:
    """Make a CT surface watertight, manifold and outward, within the triangle budget."""
    notes = []
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
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
    if len(tm.faces) > max_faces:
        n = len(tm.faces)
        tm = tm.simplify_quadric_decimation(face_count=max_faces)
        notes.append(f"decimated {n} -> {len(tm.faces)} faces")
        tm.merge_vertices()
        tm.update_faces(tm.nondegenerate_faces())
        v, f, loops = _fill_holes(np.asarray(tm.vertices), np.asarray(tm.faces))
        tm = trimesh.Trimesh(v, f, process=False)
        trimesh.repair.fix_winding(tm)
    out = Mesh(np.asarray(tm.vertices, float), np.asarray(tm.faces, np.int64))
    if out.volume() < 0:
        out = Mesh(out.vertices, out.faces[:, ::-1].copy())
        notes.append("flipped inward-facing normals")
    report = edge_manifold_report(out)
    if not all(report.values()):
        raise MeshError(f"{name}: could not be repaired into a closed surface ({report})")
    return out, notes


def _check_solid(mesh: Mesh, name: str) -> None:
    if len(mesh.faces) < 100:
        raise MeshError(f"{name}: degenerate mesh, only {len(mesh.faces)} faces")
    ext = np.ptp(mesh.vertices, axis=0)
    if ext.min() <= 1e-6 * ext.max():
        raise MeshError(f"{name}: degenerate mesh, flat (zero volume)")


# ----------------------------------------------------------------------------- import

def file_to_scene(liver: Mesh, axes: str, factor: float) -> np.ndarray:
    """One rigid map for every organ: scale to mm, rotate to scene axes, move the liver into place."""
    A = np.eye(4)
    A[:3, :3] = axes_matrix(axes) * factor
    v = liver.vertices @ A[:3, :3].T
    A[:3, 3] = SCENE_LIVER_CENTER - (v.min(0) + v.max(0)) / 2
    return A


def complete_organs(meshes: dict[str, Mesh], repairs: dict[str, list[str]], name: str) -> list[str]:
    """Add the fat, ligament and wall a CT does not give (a wall given as a tissue layer becomes a
    cavity); returns the generated organs' names."""
    rng = np.random.default_rng(patient_key(name))
    given_wall = meshes.pop("abdominal_wall", None)
    if given_wall is not None and not inside(meshes["liver"].vertices.mean(0)[None], given_wall)[0]:
        organs = [meshes["liver"]] + ([meshes["gallbladder"]] if "gallbladder" in meshes else [])
        given_wall = cavity_from_shell(given_wall, organs)
        repairs["abdominal_wall"].append("the wall does not enclose the liver (a tissue layer): cavity made "
                                         "from the convex hull of the wall and the organs")
    extra = organs_around(meshes["liver"], meshes.get("gallbladder"), rng, wall=given_wall)
    meshes.update(extra)
    if given_wall is not None:
        meshes["abdominal_wall"] = given_wall
    return sorted(extra)


def write_patient(out: Path, name: str, meshes: dict[str, Mesh], info: dict) -> Path:
    """Write the patient folder next to its final place, then rename it there (all or nothing)."""
    target = out / name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=out if out.is_dir() else None))
    try:
        for organ, m in meshes.items():
            report = edge_manifold_report(m)
            if not all(report.values()):
                raise MeshError(f"{name}: {organ} failed the mesh checks {report}")
            write_ply(tmp / f"{organ}.ply", m, comment=f"lapsynth import {name}")
        atomic_write_bytes(tmp / "patient.json", (json.dumps(info, indent=2) + "\n").encode())
        out.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def import_patient(liver: str, name: str, out: Path, gallbladder: str | None = None, wall: str | None = None,
                   axes: str = "LPS", units: str | None = None, max_faces: int = 30_000,
                   overwrite: bool = False, log=print) -> Path:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise MeshError(f"--name {name!r}: give a plain folder name")
    if max_faces < 100:
        raise MeshError(f"--max-faces {max_faces}: must be at least 100")
    if (out / name).exists() and not overwrite:
        raise MeshError(f"{out / name}: patient exists (pass --overwrite to replace it)")
    axes_matrix(axes)  # a bad --axes fails before any file is read
    sources = {"liver": liver, "gallbladder": gallbladder, "abdominal_wall": wall}
    raw = {organ: load_mesh(p) for organ, p in sources.items() if p}
    for organ, m in raw.items():
        _check_solid(m, sources[organ])
    unit, factor = detect_units(raw["liver"], units, sources["liver"])
    A = file_to_scene(raw["liver"], axes, factor)
    mirror = np.linalg.det(A[:3, :3]) < 0
    meshes, repairs = {}, {}
    for organ, m in raw.items():
        moved = m.transformed(A)
        if mirror:
            moved = Mesh(moved.vertices, moved.faces[:, ::-1].copy())
        meshes[organ], repairs[organ] = repair(moved, sources[organ], max_faces)
    generated = complete_organs(meshes, repairs, name)
    info = {
        "name": name,
        "source": "imported",
        "sources": {organ: {"path": str(Path(p).resolve()), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
                    for organ, p in sources.items() if p},
        "units": {"detected": unit, "factor_to_mm": factor, "forced": bool(units)},
        "axes": {"file": axes.upper(), "scene": "+X patient left, +Y cranial (head), +Z anterior"},
        "file_to_scene": A.tolist(),
        "repairs": repairs,
        "generated": generated,
        "gallbladder": "gallbladder" in meshes,
        "faces": {organ: len(m.faces) for organ, m in meshes.items()},
    }
    target = write_patient(out, name, meshes, info)
    for organ, notes in repairs.items():
        for note in notes:
            log(f"{name}/{organ}: {note}")
    log(f"{name}: generated {', '.join(generated) or 'nothing'}; wrote {target}")
    return target
