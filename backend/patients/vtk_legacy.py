"""Reader for legacy VTK POLYDATA files (ASCII and binary), as 3D-IRCADb ships its meshes.

trimesh and meshio do not read these. Supports the classic layout (versions 1 to 4.2):
POINTS, then POLYGONS and/or TRIANGLE_STRIPS; VERTICES, LINES and attribute data are skipped, and so are
FIELD arrays (ParaView writes the data set's FieldData before POINTS) and the METADATA blocks VTK 8 and
later write after an array. Binary data is big-endian, as the format prescribes.
"""
from __future__ import annotations

import os

import numpy as np

from blender_addon.core.geometry import Mesh, MeshError, check_mesh, read_mesh_bytes

_TYPES = {"float": "f4", "double": "f8", "int": "i4", "unsigned_int": "u4", "long": "i8",
          "unsigned_long": "u8", "short": "i2", "unsigned_short": "u2", "char": "i1", "unsigned_char": "u1",
          "vtktypeint64": "i8", "vtktypeint32": "i4"}


class _Cursor:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.path = data, 0, path

    def line(self) -> str:
        while True:
            if self.pos >= len(self.data):
                return ""
            end = self.data.find(b"\n", self.pos)
            end = len(self.data) if end < 0 else end
            text = self.data[self.pos:end].decode("ascii", "replace").strip()
            self.pos = end + 1
            if text:
                return text

    def skip_block(self) -> None:
        """Up to and including the next blank line (a METADATA block's end)."""
        while self.pos < len(self.data):
            end = self.data.find(b"\n", self.pos)
            end = len(self.data) if end < 0 else end
            blank = not self.data[self.pos:end].strip()
            self.pos = end + 1
            if blank:
                return

    def values(self, count: int, dtype: str, binary: bool) -> np.ndarray:
        if binary:
            dt = np.dtype(">" + dtype)
            n = dt.itemsize * count
            if self.pos + n > len(self.data):
                raise MeshError(f"{self.path}: truncated VTK file (binary data ends early)")
            arr = np.frombuffer(self.data, dt, count, self.pos)
            self.pos += n
            if self.pos < len(self.data) and self.data[self.pos:self.pos + 1] == b"\n":
                self.pos += 1
            return arr.astype(np.float64 if dtype[0] == "f" else np.int64)
        out = []
        while sum(len(o) for o in out) < count:
            text = self.line()
            if not text:
                raise MeshError(f"{self.path}: truncated VTK file (ASCII data ends early)")
            out.append(np.array(text.split(), dtype=np.float64 if dtype[0] == "f" else np.int64))
        arr = np.concatenate(out)
        if len(arr) != count:
            raise MeshError(f"{self.path}: malformed ASCII VTK data block")
        return arr


def _cells(flat: np.ndarray, n: int, path: str) -> list[np.ndarray]:
    """A cell list (each cell its size k, then k point indices) as n arrays; the header's counts are checked
    against the data before anything is built, so a few bytes cannot declare two billion cells."""
    if not 0 <= n <= len(flat):  # every cell takes at least its size entry
        raise MeshError(f"{path}: cell list header declares {n} cells in a list of {len(flat)} numbers")
    cells, pos = [], 0
    for i in range(n):
        k = int(flat[pos]) if pos < len(flat) else -1
        if k < 0 or pos + 1 + k > len(flat):
            raise MeshError(f"{path}: cell {i} of the cell list has size {k}, outside the list's {len(flat)} numbers")
        cells.append(flat[pos + 1:pos + 1 + k])
        pos += 1 + k
    if pos != len(flat):
        raise MeshError(f"{path}: cell list size does not match its header")
    return cells


def _skip_field(cur: _Cursor, parts: list[str], binary: bool, path: str) -> None:
    """FIELD name n: n arrays, each 'name components tuples type' then its values (NULL_ARRAY: none)."""
    for _ in range(int(parts[2])):
        head = cur.line().split()
        if head[:1] == ["NULL_ARRAY"]:
            continue
        if len(head) != 4 or head[3].lower() not in _TYPES:
            raise MeshError(f"{path}: FIELD {parts[1]}: unreadable array header {' '.join(head)!r}")
        cur.values(int(head[1]) * int(head[2]), _TYPES[head[3].lower()], binary)
        _skip_metadata(cur)


def _skip_metadata(cur: _Cursor) -> None:
    """A METADATA block (VTK 8+ writes one after an array; it ends at a blank line), if one follows."""
    pos = cur.pos
    if cur.line().upper() == "METADATA":
        cur.skip_block()
    else:
        cur.pos = pos


def read_vtk(path: str | os.PathLike) -> Mesh:
    """A legacy VTK POLYDATA file as a Mesh; anything that does not parse (truncated, garbled, counts
    that do not match the data) is one MeshError naming the file."""
    path = os.fspath(path)
    data = read_mesh_bytes(path)
    try:
        return _read_vtk(data, path)
    except MeshError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:  # whatever the checks missed
        raise MeshError(f"{path}: truncated or corrupt VTK file ({type(e).__name__}: {e})") from None


def _read_vtk(data: bytes, path: str) -> Mesh:
    cur = _Cursor(data, path)
    head = cur.line()
    if not head.lower().startswith("# vtk datafile version"):
        raise MeshError(f"{path}: not a legacy VTK file")
    version = head.split()[-1]
    if version.startswith("5"):
        raise MeshError(f"{path}: VTK legacy version {version} (OFFSETS/CONNECTIVITY) is not supported; "
                        f"save as version 4.2 or as PLY/STL")
    cur.line()  # title
    mode = cur.line().upper()
    if mode not in ("ASCII", "BINARY"):
        raise MeshError(f"{path}: expected ASCII or BINARY, found {mode!r}")
    binary = mode == "BINARY"
    dataset = cur.line().split()
    if dataset[:2] != ["DATASET", "POLYDATA"]:
        raise MeshError(f"{path}: only DATASET POLYDATA is supported (found {' '.join(dataset)})")
    points = None
    faces: list[np.ndarray] = []
    while True:
        text = cur.line()
        if not text:
            break
        parts = text.split()
        key = parts[0].upper()
        if key == "POINTS":
            n, typ = int(parts[1]), parts[2].lower()
            points = cur.values(3 * n, _TYPES.get(typ, "f4"), binary).reshape(n, 3)
            _skip_metadata(cur)
        elif key in ("POLYGONS", "TRIANGLE_STRIPS", "VERTICES", "LINES"):
            n, size = int(parts[1]), int(parts[2])
            cells = _cells(cur.values(size, "i4", binary), n, path)
            _skip_metadata(cur)
            if key == "POLYGONS":
                faces += [np.stack([np.full(len(c) - 2, c[0]), c[1:-1], c[2:]], 1) for c in cells if len(c) >= 3]
            elif key == "TRIANGLE_STRIPS":
                for c in cells:
                    for i in range(len(c) - 2):
                        tri = (c[i], c[i + 1], c[i + 2]) if i % 2 == 0 else (c[i + 1], c[i], c[i + 2])
                        faces.append(np.array([tri]))
        elif key == "FIELD" and len(parts) == 3 and points is None:  # the data set's FieldData, before POINTS
            _skip_field(cur, parts, binary, path)
        elif key == "METADATA":
            cur.skip_block()
        elif key in ("POINT_DATA", "CELL_DATA", "FIELD"):
            break  # attributes follow: nothing we need
        else:
            raise MeshError(f"{path}: unexpected VTK section {parts[0]!r}")
    if points is None or not faces:
        raise MeshError(f"{path}: VTK file has no points or no polygons")
    return check_mesh(Mesh(points, np.concatenate(faces).astype(np.int64)), path)


def write_vtk(path: str | os.PathLike, mesh: Mesh, binary: bool) -> None:
    """Writer for tests and for users who need the legacy format."""
    head = (f"# vtk DataFile Version 3.0\nwritten by lapsynth\n{'BINARY' if binary else 'ASCII'}\n"
            f"DATASET POLYDATA\nPOINTS {len(mesh.vertices)} float\n").encode()
    cells = np.column_stack([np.full(len(mesh.faces), 3), mesh.faces])
    poly = f"POLYGONS {len(mesh.faces)} {cells.size}\n".encode()
    if binary:
        body = head + mesh.vertices.astype(">f4").tobytes() + b"\n" + poly + cells.astype(">i4").tobytes() + b"\n"
    else:
        pts = "\n".join(" ".join(f"{x:.6f}" for x in v) for v in mesh.vertices)
        cel = "\n".join(" ".join(str(int(x)) for x in c) for c in cells)
        body = head + pts.encode() + b"\n" + poly + cel.encode() + b"\n"
    with open(path, "wb") as f:
        f.write(body)
