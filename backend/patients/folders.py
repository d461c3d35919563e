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

from blender_addon.core.dataset import plain_name
from blender_addon.core.files import atomic_write_bytes
from blender_addon.core.geometry import (
    Mesh,
    MeshError,
    edge_manifold_report,
    inside,
)
from blender_addon.core.ply import write_ply
from blender_addon.core.seeds import patient_key

from .anatomy import cavity_from_shell, default_patients, generate_patient, organs_around
from .reading import LONG_READ_BYTES, check_face_limit, check_source, load_mesh
from .repair import PRE_DECIMATION_FACTOR, check_solid, reduce_early, repair

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
        hint = f"--units {forced} does not fit it; check the file or the unit" if forced else \
            "check the file or pass --units"
        raise MeshError(f"{name}: liver measures {size_mm:.0f} mm in {unit} (expected 80 to 400 mm); {hint}")
    return unit, UNIT_FACTORS[unit]


# ----------------------------------------------------------------------------- import

def file_to_scene(liver: Mesh, axes: str, factor: float) -> np.ndarray:
    """One rigid map for every organ: scale to mm, rotate to scene axes, move the liver into place."""
    A = np.eye(4)
    A[:3, :3] = axes_matrix(axes) * factor
    v = liver.vertices @ A[:3, :3].T
    A[:3, 3] = SCENE_LIVER_CENTER - (v.min(0) + v.max(0)) / 2
    return A


def generated_level(max_faces: int) -> int:
    """Icosphere level of the generated organs: the wall (20 x 4**level faces; fat and ligament a
    quarter of that) within `max_faces`, at most the bundled patients' level 5."""
    level = 1
    while level < 5 and 20 * 4 ** (level + 1) <= max_faces:
        level += 1
    return level


def complete_organs(meshes: dict[str, Mesh], repairs: dict[str, list[str]], name: str, level: int = 5) -> list[str]:
    """Add the fat, ligament and wall a CT does not give (a wall given as a tissue layer becomes a
    cavity), at icosphere `level`; returns the generated organs' names."""
    rng = np.random.default_rng(patient_key(name))
    given_wall = meshes.pop("abdominal_wall", None)
    if given_wall is not None and not inside(meshes["liver"].vertices.mean(0)[None], given_wall)[0]:
        organs = [meshes["liver"]] + ([meshes["gallbladder"]] if "gallbladder" in meshes else [])
        given_wall = cavity_from_shell(given_wall, organs, level)
        repairs["abdominal_wall"].append("the wall does not enclose the liver (a tissue layer): cavity made "
                                         "from the convex hull of the wall and the organs")
    extra = organs_around(meshes["liver"], meshes.get("gallbladder"), rng, level, wall=given_wall)
    meshes.update(extra)
    if given_wall is not None:
        meshes["abdominal_wall"] = given_wall
    return sorted(extra)


def check_target(out: Path, name: str, overwrite: bool) -> None:
    """Before any file is read: `out` is a folder or can be made, and `out/name` is absent or, with
    --overwrite, a patient folder this command may replace (not a link, not a file, not some other folder)."""
    if out.exists() and not out.is_dir():
        raise MeshError(f"--out {out}: exists and is not a folder")
    target = out / name
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise MeshError(f"{target}: patient exists (pass --overwrite to replace it)")
    if target.is_symlink() or not target.is_dir():
        raise MeshError(f"{target}: exists and is {'a symbolic link' if target.is_symlink() else 'not a folder'}; "
                        "--overwrite replaces patient folders only: remove it by hand or pick another --name")
    try:
        entries = {p.name for p in target.iterdir()}
    except OSError as e:
        raise MeshError(f"{target}: cannot be read ({e.strerror})") from None
    if entries and not entries & {"liver.ply", "patient.json"}:
        raise MeshError(f"{target}: not a patient folder (no liver.ply or patient.json), so --overwrite does not "
                        "delete it: remove it by hand or pick another --name")


def write_patient(out: Path, name: str, meshes: dict[str, Mesh], info: dict) -> Path:
    """Write the patient folder beside its final place (same file system), then rename it there; an old
    folder is renamed aside first and deleted last, so a kill at any moment leaves the old patient or the
    new one (the other in a hidden .tmp-* folder, which patient discovery skips)."""
    target = out / name
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=out))
    old = None
    try:
        for organ, m in meshes.items():
            report = edge_manifold_report(m)
            if not all(report.values()):
                raise MeshError(f"{name}: {organ} failed the mesh checks {report}")
            write_ply(tmp / f"{organ}.ply", m, comment=f"lapsynth import {name}")
        atomic_write_bytes(tmp / "patient.json", (json.dumps(info, indent=2) + "\n").encode())
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{name}-", dir=out))
            os.replace(target, old / name)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not os.path.lexists(target):  # put the old patient back
            os.replace(old / name, target)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _read_organ(path: str, organ: str, count: int | None, log) -> Mesh:
    """Read one checked source (see check_source), saying so first when that takes a while."""
    if Path(path).stat().st_size > LONG_READ_BYTES:
        log(f"{organ}: reading {path}" + (f" ({count:,} faces)" if count else "") + " ...")
    mesh = load_mesh(path)
    check_face_limit(path, len(mesh.faces))
    check_solid(mesh, path)
    return mesh


def _to_scene(mesh: Mesh, A: np.ndarray) -> Mesh:
    """The mesh under the rigid map; a mirroring map also reverses the faces so normals stay outward."""
    faces = mesh.faces[:, ::-1] if np.linalg.det(A[:3, :3]) < 0 else mesh.faces
    return Mesh(mesh.vertices @ A[:3, :3].T + A[:3, 3], np.ascontiguousarray(faces))


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def import_patient(liver: str, name: str, out: Path, gallbladder: str | None = None, wall: str | None = None,
                   axes: str = "LPS", units: str | None = None, max_faces: int = 30_000,
                   overwrite: bool = False, log=print) -> Path:
    """Make `out/name` from CT meshes (see backend/meshes.py). Every file is checked (exists, format,
    header size under MAX_INPUT_FACES) before any is read; then one organ at a time is read, moved into
    the scene, decimated early when large, repaired and decimated to `max_faces`. Progress of long steps
    and the repairs go to `log`."""
    if not plain_name(name):  # the data set's rule for patient folders
        raise MeshError(f"--name {name!r}: give a plain folder name")
    if max_faces < 100:
        raise MeshError(f"--max-faces {max_faces}: must be at least 100")
    check_target(out, name, overwrite)
    axes_matrix(axes)  # a bad --axes fails before any file is read
    sources = {organ: p for organ, p in {"liver": liver, "gallbladder": gallbladder, "abdominal_wall": wall}.items()
               if p}
    counts = {organ: check_source(p) for organ, p in sources.items()}
    raw = _read_organ(liver, "liver", counts["liver"], log)
    unit, factor = detect_units(raw, units, liver)
    A = file_to_scene(raw, axes, factor)
    meshes, repairs = {}, {}
    for organ, path in sources.items():
        if organ != "liver":
            raw = _read_organ(path, organ, counts[organ], log)
        moved, raw = _to_scene(raw, A), None  # the file's full-size mesh is not needed any more
        moved, early = reduce_early(moved, PRE_DECIMATION_FACTOR * max_faces, organ, log)
        meshes[organ], notes = repair(moved, path, max_faces)
        repairs[organ] = early + notes
    generated = complete_organs(meshes, repairs, name, generated_level(max_faces))
    over = {organ: len(m.faces) for organ, m in meshes.items() if len(m.faces) > max_faces}
    if over:
        raise MeshError(f"{name}: {over} faces, above --max-faces {max_faces}")
    info = {
        "name": name,
        "source": "imported",
        "sources": {organ: {"path": str(Path(p).resolve()), "sha256": _sha256(p)} for organ, p in sources.items()},
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
