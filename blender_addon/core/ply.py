"""PLY files: reading ASCII and binary triangle meshes (refusing truncated or corrupt ones by name) and
writing binary ones atomically. Pure Python + numpy, like the rest of core."""
from __future__ import annotations

import os

import numpy as np

from .errors import MeshError
from .files import atomic_write_bytes
from .geometry import Mesh, check_mesh, read_mesh_bytes

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class _Corrupt(Exception):
    """What is wrong with a PLY file's header or data; read_ply adds the file's name."""


def read_ply(path: str | os.PathLike) -> Mesh:
    """Read a triangle mesh from an ASCII or binary PLY file (vertices x, y, z and a face list).

    Any file that does not parse (truncated, garbled, counts that do not match the data) is one
    MeshError naming it."""
    path = os.fspath(path)
    data = read_mesh_bytes(path)
    if not data.startswith(b"ply"):
        raise MeshError(f"{path}: not a PLY file (no 'ply' magic)")
    try:
        vertices, faces = _ply_parse(data, path)
    except MeshError:
        raise
    except _Corrupt as e:
        raise MeshError(f"{path}: truncated or corrupt PLY file ({e})") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:  # whatever the checks missed
        raise MeshError(f"{path}: truncated or corrupt PLY file ({type(e).__name__}: {e})") from None
    return check_mesh(Mesh(vertices, faces), path)


def _ply_parse(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    end = data.find(b"end_header")
    if end < 0:
        raise _Corrupt("the header has no end_header")
    newline = data.find(b"\n", end)
    if newline < 0:
        raise _Corrupt("nothing after end_header")
    body = memoryview(data)[newline + 1:]
    fmt, elements = _ply_header(data[:end].decode("ascii", "replace").splitlines())
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshError(f"{path}: unsupported PLY format {fmt!r}")
    if fmt == "ascii":
        vertices, faces = _ply_ascii(bytes(body), elements)
    else:
        vertices, faces = _ply_binary(body, elements, "<" if fmt == "binary_little_endian" else ">", path)
    if vertices is None or faces is None:
        raise MeshError(f"{path}: PLY file has no vertex or face element")
    return vertices, faces


def _ply_header(lines: list[str]) -> tuple[str | None, list[tuple[str, int, list]]]:
    """The format and the elements (name, count, properties) of a PLY header, each line checked."""
    fmt = None
    elements: list[tuple[str, int, list]] = []
    for line in lines[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format" and len(parts) == 3:
            fmt = parts[1]
        elif parts[0] == "element" and len(parts) == 3 and parts[2].isdigit():
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements and _ply_property_ok(parts[1:]):
            elements[-1][2].append(parts[1:])
        else:
            raise _Corrupt(f"bad header line {line[:60]!r}")
    for name, _, props in elements:
        if name == "vertex" and not {"x", "y", "z"} <= {p[-1] for p in props}:
            raise _Corrupt("the vertex element lacks property x, y or z")
    return fmt, elements


def _ply_property_ok(prop: list[str]) -> bool:
    if prop[:1] == ["list"]:
        return len(prop) == 4 and prop[1] in _PLY_TYPES and prop[2] in _PLY_TYPES
    return len(prop) == 2 and prop[0] in _PLY_TYPES


def _ply_ascii(body: bytes, elements) -> tuple[np.ndarray | None, np.ndarray | None]:
    vertices = faces = None
    tokens = body.split()
    pos = 0
    for name, count, props in elements:
        if all(p[0] != "list" for p in props):
            n = len(props)
            if pos + n * count > len(tokens):
                raise _Corrupt(f"the data ends within element {name!r} ({count} announced)")
            block = np.array(tokens[pos:pos + n * count], dtype=np.float64).reshape(count, n)
            pos += n * count
            if name == "vertex":
                names = [p[1] for p in props]
                vertices = block[:, [names.index(a) for a in "xyz"]]
            continue
        rows, pos = _ply_ascii_lists(tokens, pos, name, count, props)
        if name == "face":
            faces = _triangulate(rows)
    if pos != len(tokens):
        raise _Corrupt(f"{len(tokens) - pos} values after the last element (the header's counts do not match)")
    return vertices, faces


def _ply_ascii_lists(tokens: list[bytes], pos: int, name: str, count: int, props) -> tuple[list, int]:
    """The first list of each of `count` rows starting at token `pos`, and the position after them."""
    rows = []
    for _ in range(count):
        row = []
        for p in props:
            if pos >= len(tokens):
                raise _Corrupt(f"the data ends within element {name!r} ({count} announced)")
            if p[0] == "list":
                k = int(tokens[pos])
                if k < 0 or pos + 1 + k > len(tokens):
                    raise _Corrupt(f"a list of {k} values in element {name!r} does not fit the data")
                row.append([int(t) for t in tokens[pos + 1:pos + 1 + k]])
                pos += 1 + k
            else:
                pos += 1
        rows.append(row[0])
    return rows, pos


def _ply_binary(buf: memoryview, elements, end_char: str, path: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    vertices = faces = None
    offset = 0
    for name, count, props in elements:
        if all(p[0] != "list" for p in props):
            dt = np.dtype([(p[1], end_char + _PLY_TYPES[p[0]]) for p in props])
            _ply_need(buf, offset, dt.itemsize * count, name, count)
            arr = np.frombuffer(buf, dtype=dt, count=count, offset=offset)
            offset += dt.itemsize * count
            if name == "vertex":
                vertices = np.stack([arr[a].astype(np.float64) for a in "xyz"], axis=1)
            continue
        rows, offset = _ply_binary_lists(buf, offset, name, count, props, end_char)
        if name == "face":
            faces = rows if isinstance(rows, np.ndarray) else _triangulate(rows)
    if offset != len(buf):
        raise _Corrupt(f"{len(buf) - offset} bytes after the last element (the header's counts do not match)")
    return vertices, faces


def _ply_need(buf: memoryview, offset: int, size: int, name: str, count: int) -> None:
    if offset + size > len(buf):
        raise _Corrupt(f"the data ends within element {name!r}: {count} announced, "
                       f"{size} bytes needed from byte {offset} of the data, {len(buf)} there")


def _ply_binary_lists(buf: memoryview, offset: int, name: str, count: int, props, end_char: str):
    """Rows of the first list property of an element whose properties (lists and scalars, e.g. a face's
    vertex_indices then its colour) start at `offset`: a (count, 3) int64 array of triangles when every
    row's lists are as long as the first row's (triangles, or quads and other fans, split at once), else
    lists row by row; and the offset after the element."""
    first = next(i for i, p in enumerate(props) if p[0] == "list")
    types = [(np.dtype(end_char + _PLY_TYPES[p[1]]), np.dtype(end_char + _PLY_TYPES[p[2]])) if p[0] == "list"
             else np.dtype(end_char + _PLY_TYPES[p[0]]) for p in props]
    lengths, _, _ = _ply_binary_rows(buf, offset, name, 1, types, first) if count else ([], [], offset)
    fields = []  # fast path: every row's lists as long as the first row's
    for i, t in enumerate(types):
        if isinstance(t, tuple):
            fields += [(f"n{i}", t[0]), (f"v{i}", t[1], (lengths[i],))]
        else:
            fields.append((f"s{i}", t))
    dt = np.dtype(fields)
    k = lengths[first] if count else 0
    if count and k >= 3 and offset + dt.itemsize * count <= len(buf):
        arr = np.frombuffer(buf, dtype=dt, count=count, offset=offset)
        if all(np.all(arr[f"n{i}"] == lengths[i]) for i, t in enumerate(types) if isinstance(t, tuple)):
            v = arr[f"v{first}"].astype(np.int64)
            tris = np.stack([np.repeat(v[:, :1], k - 2, 1), v[:, 1:-1], v[:, 2:]], 2).reshape(-1, 3)  # fans
            return tris, offset + dt.itemsize * count
    _, rows, offset = _ply_binary_rows(buf, offset, name, count, types, first)
    return rows, offset


def _ply_binary_rows(buf: memoryview, offset: int, name: str, count: int, types: list, first: int):
    """Row by row: the list lengths of the last row (by property), the values of list `first` of each row, and
    the offset after them."""
    rows, lengths = [], {}
    for _ in range(count):
        for i, t in enumerate(types):
            if not isinstance(t, tuple):  # a scalar: stepped over
                _ply_need(buf, offset, t.itemsize, name, count)
                offset += t.itemsize
                continue
            count_t, value_t = t
            _ply_need(buf, offset, count_t.itemsize, name, count)
            k = int(np.frombuffer(buf, count_t, 1, offset)[0])
            offset += count_t.itemsize
            if k < 0:
                raise _Corrupt(f"a list of {k} values in element {name!r}")
            _ply_need(buf, offset, value_t.itemsize * k, name, count)
            if i == first:
                rows.append(np.frombuffer(buf, value_t, k, offset).tolist())
            lengths[i] = k
            offset += value_t.itemsize * k
    return lengths, rows, offset


def _triangulate(polygons: list) -> np.ndarray:
    tris = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def write_ply(path: str | os.PathLike, mesh: Mesh, comment: str = "") -> None:
    """Write a binary little-endian PLY (float32 vertices, int32 triangles) atomically."""
    path = os.fspath(path)
    header = ["ply", "format binary_little_endian 1.0"]
    if comment:
        header.append(f"comment {comment}")
    header += [
        f"element vertex {len(mesh.vertices)}",
        "property float x", "property float y", "property float z",
        f"element face {len(mesh.faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    faces = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    faces["n"] = 3
    faces["i"] = mesh.faces
    payload = ("\n".join(header) + "\n").encode() + mesh.vertices.astype("<f4").tobytes() + faces.tobytes()
    atomic_write_bytes(path, payload)


