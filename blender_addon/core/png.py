"""8-bit PNG encoding with numpy and zlib alone (Blender's Python has no imaging library).

Files are standard PNGs that any reader opens; `decode` reads back the ones `encode` writes
(filter type 0 or 2 on every row) and falls back to imageio for others. The "up" filter (each row
stored as its difference from the row above) makes rendered and translated images 20% smaller than
no filter and lets zlib level 1 do it 2.5x faster than level 6 without a filter (docs/evaluation.md,
"less CPU work around each render"). zlib's run-length strategy (matches at distance 1 only) on the
"up"-filtered rows of rendered images was 10-13% faster than its default at level 1 and 5-9% smaller, and
class images took 0.14 ms instead of 0.44-0.53 ms at level 6 without a filter, about as small
(bench/render_bench.py --png): the renderer writes both that way.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


FILTERS = {"none": 0, "up": 2}
STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "rle": zlib.Z_RLE}


def encode(image: np.ndarray, level: int = 6, filter: str = "none", strategy: str = "default") -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB / (H, W, 4) RGBA to PNG bytes, every row with one filter, the
    rows compressed with zlib's `strategy` at `level`."""
    a = np.ascontiguousarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"PNG encoder takes uint8, got {a.dtype}")
    if a.ndim == 2:
        color_type, channels = 0, 1
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        color_type, channels = (2, 3) if a.shape[2] == 3 else (6, 4)
    else:
        raise ValueError(f"PNG encoder takes (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    if filter not in FILTERS:
        raise ValueError(f"PNG filter {filter!r}: one of {', '.join(FILTERS)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"PNG zlib strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    h, w = a.shape[:2]
    flat = a.reshape(h, w * channels)
    rows = np.empty((h, 1 + w * channels), np.uint8)
    rows[:, 0] = FILTERS[filter]  # the filter byte of each row
    rows[:, 1:] = flat
    if filter == "up":  # the first row's "above" is zeros, so it stays as it is
        np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG's
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", _deflate(rows.tobytes(), level, STRATEGIES[strategy])) + _chunk(b"IEND", b""))


def _deflate(data: bytes, level: int, strategy: int) -> bytes:
    if strategy == zlib.Z_DEFAULT_STRATEGY:
        return zlib.compress(data, level)
    z = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 8, strategy)  # memLevel 8: zlib's default
    return z.compress(data) + z.flush()


def decode(data: bytes) -> np.ndarray:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        tag = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        pos += 12 + length
    w, h, depth, color_type, _, _, interlace = hdr
    channels = {0: 1, 2: 3, 6: 4}.get(color_type)
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8) if channels else None
    kinds = raw.reshape(h, -1)[:, 0] if channels else None
    if depth != 8 or interlace or channels is None or not (np.all(kinds == 0) or np.all(kinds == 2)):
        import imageio.v3 as iio  # not one of ours: let a full decoder handle it

        return iio.imread(data, extension=".png")
    pix = raw.reshape(h, 1 + w * channels)[:, 1:]
    if kinds[0] == 2:  # "up" on every row: the running sum down the columns, modulo 256
        pix = np.cumsum(pix, axis=0, dtype=np.uint8)
    return pix.reshape(h, w) if channels == 1 else pix.reshape(h, w, channels)
