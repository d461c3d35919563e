"""Reading CT surface meshes (STL, PLY, OBJ, legacy VTK) within a documented size limit, naming the
file in every refusal; binary STL by a numpy reader with exact vertex merging (trimesh's loader took
about 3x the memory)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from blender_addon.core.geometry import Mesh, MeshError, check_mesh
from blender_addon.core.ply import read_ply

from .vtk_legacy import read_vtk

# Import size limits (see bench/import_memory.py). Organs above PRE_DECIMATION_FACTOR x --max-faces are
# decimated right after reading, so the repairs run on a small mesh; the last decimation runs up to
# DECIMATION_ROUNDS rounds until an organ has at most --max-faces faces. A file above MAX_INPUT_FACES
# faces is refused with the reason: binary STL and PLY from their header, before reading; ASCII STL, OBJ
# and VTK right after reading, before any processing. Measured peak memory of an import (binary STL or
# PLY): 0.59, 0.88, 1.21 GB at 1.0, 2.0, 2.8 million faces, i.e. 0.25 GB + 0.34 GB per million (the
# decimator's growing arrays can add up to 0.15 GB per million more): 4.3 to 6.1 GB at the limit, which
# a 16 GB workstation runs (the former import took 1.0 to 1.4 GB per million).
MAX_INPUT_FACES = 12_000_000
LONG_READ_BYTES = 32 << 20  # reading a file this big takes seconds: say so first
_STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])


def _check_path(path: Path) -> str:
    """The file's lower-case suffix, once it is known to be a non-empty file of a supported format."""
    try:
        if not path.is_file():
            raise MeshError(f"{path}: file not found")
        size = path.stat().st_size
    except OSError as e:  # a folder on the way it may not enter (Path.is_file raises on EACCES in 3.11)
        raise MeshError(f"{path}: cannot be read ({e.strerror})") from None
    if size == 0:
        raise MeshError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix not in (".vtk", ".ply", ".stl", ".obj"):
        raise MeshError(f"{path}: unsupported mesh format {suffix!r} (use .stl, .ply, .obj or .vtk)")
    return suffix


def header_face_count(path: str | os.PathLike) -> int | None:
    """The faces a binary STL or a PLY announces in its header (the file is not read further); None
    for other formats and for headers that do not parse."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as e:
        raise MeshError(f"{path}: cannot read ({e.strerror})") from None
    suffix = path.suffix.lower()
    if suffix == ".stl":
        return _binary_stl_count(head, path.stat().st_size)
    if suffix == ".ply" and head.startswith(b"ply"):
        for line in head.split(b"end_header")[0].splitlines():
            parts = line.split()
            if parts[:2] == [b"element", b"face"] and len(parts) == 3 and parts[2].isdigit():
                return int(parts[2])
    return None


def check_face_limit(path: str | os.PathLike, count: int | None) -> None:
    if count is not None and count > MAX_INPUT_FACES:
        raise MeshError(f"{path}: {count:,} faces, above the import limit of {MAX_INPUT_FACES:,} (an import "
                        f"needs about 0.4 GB of memory per million faces); decimate it first, e.g. with "
                        f"Blender's Decimate modifier or MeshLab's quadric edge collapse")


def check_source(path: str | os.PathLike) -> int | None:
    """Refuse a missing, empty, unsupported or too large mesh file before reading it; its header's
    face count, where the format has one."""
    path = Path(path)
    _check_path(path)
    count = header_face_count(path)
    check_face_limit(path, count)
    return count


def merge_exact(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bitwise-equal points merged: the unique points (float64) and each point's index among them."""
    order = np.lexsort(points.T[::-1])
    ordered = points[order]
    new = np.empty(len(points), bool)
    new[:1] = True
    np.any(ordered[1:] != ordered[:-1], axis=1, out=new[1:])
    del ordered
    inverse = np.empty(len(points), np.int64)
    inverse[order] = np.cumsum(new) - 1
    return points[order[new]].astype(np.float64), inverse


def _is_ascii_stl(head: bytes) -> bool:
    return head.lstrip().startswith(b"solid") and b"facet" in head[:1024]  # a binary header may say solid too


def _binary_stl_count(head: bytes, size: int) -> int | None:
    """The triangles to read from a binary STL: the header's count where the size matches it, also with
    fewer than 50 bytes after the last record (a writer's trailing newline or padding), or the size's when
    the header says 0 and the size is a whole number of records (writers that never fill the count in);
    None for ASCII STL and for sizes that fit neither (_check_stl says why)."""
    if len(head) < 84 or _is_ascii_stl(head):
        return None
    n, records = int.from_bytes(head[80:84], "little"), size - 84
    if n and 0 <= records - 50 * n < 50:
        return n
    if n == 0 and records > 0 and records % 50 == 0:
        return records // 50
    return None


def _read_binary_stl(path: Path, count: int) -> Mesh:
    """A binary STL with its corners merged, reading the file once (trimesh needs ~3x the memory)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MeshError(f"{path}: cannot read ({e.strerror})") from None
    corners = np.frombuffer(data, _STL_RECORD, count, 84)["v"].reshape(-1, 3)
    vertices, index = merge_exact(corners)
    return check_mesh(Mesh(vertices, index.reshape(-1, 3)), str(path))


def _check_stl(path: Path) -> None:
    """Refuse an STL that is cut short or whose counts do not match its size, before trimesh (which reads
    what it can and calls the rest 'no triangles') sees it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(1024)
        fh.seek(max(0, size - 1024))
        tail = fh.read()
    if _is_ascii_stl(head):
        lines = tail.decode("ascii", "replace").strip().splitlines()
        if not lines or not lines[-1].lstrip().startswith("endsolid"):
            raise MeshError(f"{path}: truncated ASCII STL (the file does not end with 'endsolid')")
        return
    if len(head) < 84:
        raise MeshError(f"{path}: not an STL file, or a truncated one ({size} bytes: no ASCII 'solid ... facet' "
                        f"and less than a binary STL's 84-byte header)")
    n = int.from_bytes(head[80:84], "little")
    if size < 84 + 50 * n:
        raise MeshError(f"{path}: truncated binary STL ({n:,} triangles announced need {84 + 50 * n:,} bytes, "
                        f"the file has {size:,})")
    raise MeshError(f"{path}: binary STL whose header announces {n:,} triangles ({84 + 50 * n:,} bytes) but the "
                    f"file has {size:,} bytes ({(size - 84) / 50:,.2f} records of 50): not a valid STL")


def load_mesh(path: str | os.PathLike) -> Mesh:
    """Any supported mesh file as a Mesh in file units; a clear MeshError naming the file otherwise."""
    path = Path(path)
    suffix = _check_path(path)
    if suffix == ".vtk":
        return read_vtk(path)
    if suffix == ".ply":
        return read_ply(path)
    count = header_face_count(path) if suffix == ".stl" else None
    if suffix == ".stl" and count is None:
        _check_stl(path)  # ASCII, or a refusal saying why the sizes do not fit
    if count is not None:
        return _read_binary_stl(path, count)
    try:
        m = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many kinds for garbage input
        raise MeshError(f"{path}: not a readable {suffix[1:].upper()} mesh ({type(e).__name__}: {e})") from None
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise MeshError(f"{path}: no triangles in the file")
    return check_mesh(Mesh(np.asarray(m.vertices, float), np.asarray(m.faces, np.int64)), str(path))
