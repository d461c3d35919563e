"""Minimal reader for the uncompressed scanline OpenEXR files the renderer writes itself.

Blender's bundled Python has no OpenEXR module, so the render passes are written with
compression NONE and read here with numpy alone. Handles single-part multilayer files
(Blender 4.x) and multi-part files (Blender 5.0). Anything else is refused.
"""
from __future__ import annotations

import struct

import numpy as np

_MAGIC = 20000630
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class ExrError(ValueError):
    pass


def _read_cstr(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8"), end + 1


def _read_header(buf: bytes, pos: int) -> tuple[dict, int]:
    attrs = {}
    while True:
        if buf[pos] == 0:
            return attrs, pos + 1
        name, pos = _read_cstr(buf, pos)
        typ, pos = _read_cstr(buf, pos)
        (size,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        value = buf[pos:pos + size]
        pos += size
        if typ == "chlist":
            chans, p = [], 0
            while value[p] != 0:
                cname, p = _read_cstr(value, p)
                ptype, _linear, xs, ys = struct.unpack_from("<iB3xii", value, p)
                p += 16
                if (xs, ys) != (1, 1):
                    raise ExrError(f"channel {cname!r} is subsampled")
                chans.append((cname, _PIXEL_TYPES[ptype]))
            attrs[name] = chans
        elif typ == "box2i":
            attrs[name] = struct.unpack("<4i", value)
        elif typ == "compression":
            attrs[name] = value[0]
        elif typ == "string":
            attrs[name] = value.decode("utf-8")
        else:
            attrs[name] = value


def _scanlines_in_one_read(path, buf, table, row_dtype, part, y0, y1):
    """Uncompressed scanlines written in order and back to back (what Blender writes) as one structured
    array over the file's bytes, checked like the one-at-a-time reads; None when they are not laid out so."""
    height = y1 - y0 + 1
    chunk = np.dtype(([("part", "<i4")] if part is not None else []) + [("y", "<i4"), ("size", "<i4"),
                                                                        ("data", row_dtype)])
    if len(table) != height or np.any(np.diff(table.astype(np.int64)) != chunk.itemsize) \
            or int(table[0]) + height * chunk.itemsize > len(buf):
        return None
    blocks = np.frombuffer(buf, chunk, height, int(table[0]))
    if part is not None and np.any(blocks["part"] != part):
        raise ExrError(f"{path}: a chunk of another part in the table of part {part}")
    if np.any(blocks["size"] != row_dtype.itemsize):
        raise ExrError(f"{path}: unexpected chunk size (expected {row_dtype.itemsize})")
    if not np.array_equal(blocks["y"], np.arange(y0, y1 + 1)):
        raise ExrError(f"{path}: scanlines out of order")
    return blocks["data"]


def read_exr(path: str, keep=None) -> dict[str, np.ndarray]:
    """Channels as float32 arrays of shape (H, W), keyed by full channel name, top row first: all of them,
    or those whose name keep(name) accepts (a render's passes skip the noisy image it always carries)."""
    with open(path, "rb") as f:
        buf = f.read()
    magic, version = struct.unpack_from("<ii", buf, 0)
    if magic != _MAGIC:
        raise ExrError(f"{path}: not an OpenEXR file")
    if version & 0x200 or version & 0x800:
        raise ExrError(f"{path}: tiled or deep EXR not supported")
    multipart = bool(version & 0x1000)
    pos = 8
    headers = []
    while True:
        h, pos = _read_header(buf, pos)
        headers.append(h)
        if not multipart or buf[pos] == 0:
            pos += 1 if multipart else 0
            break
    tables = []
    for h in headers:
        if h.get("compression", 0) != 0:
            raise ExrError(f"{path}: compressed EXR (write with codec NONE)")
        if h.get("lineOrder", b"\0")[:1] not in (b"\0",):
            raise ExrError(f"{path}: only increasing line order is supported")
        x0, y0, x1, y1 = h["dataWindow"]
        n = y1 - y0 + 1
        tables.append(np.frombuffer(buf, "<u8", n, pos))
        pos += 8 * n
    out: dict[str, np.ndarray] = {}
    for part, (h, table) in enumerate(zip(headers, tables)):
        x0, y0, x1, y1 = h["dataWindow"]
        width, height = x1 - x0 + 1, y1 - y0 + 1
        chans = h["channels"]
        row_dtype = np.dtype([(name, dt, (width,)) for name, dt in chans])
        rows = _scanlines_in_one_read(path, buf, table, row_dtype, part if multipart else None, y0, y1)
        if rows is None:  # chunks not evenly laid out: one at a time
            rows = np.empty(height, dtype=row_dtype)
            for off in table:
                p = int(off)
                if multipart:
                    (pnum,) = struct.unpack_from("<i", buf, p)
                    if pnum != part:
                        raise ExrError(f"{path}: chunk of part {pnum} in the table of part {part}")
                    p += 4
                y, size = struct.unpack_from("<ii", buf, p)
                p += 8
                if size != row_dtype.itemsize:
                    raise ExrError(f"{path}: unexpected chunk size {size} (expected {row_dtype.itemsize})")
                rows[y - y0] = np.frombuffer(buf, row_dtype, 1, p)[0]
        for name, _ in chans:
            if keep is None or keep(name):
                out[name] = rows[name].astype(np.float32)  # a copy: the arrays own their memory
    return out
