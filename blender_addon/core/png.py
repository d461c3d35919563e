"""8-bit PNG encoding with numpy and zlib alone (Blender's Python has no imaging library).

Files are standard PNGs that any reader opens; `decode` reads back the ones `encode` writes
(filter type 0) and falls back to imageio for others.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode(image: np.ndarray, level: int = 6) -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB / (H, W, 4) RGBA to PNG bytes."""
    a = np.ascontiguousarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"PNG encoder takes uint8, got {a.dtype}")
    if a.ndim == 2:
        color_type, channels = 0, 1
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        color_type, channels = (2, 3) if a.shape[2] == 3 else (6, 4)
    else:
        raise ValueError(f"PNG encoder takes (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    h, w = a.shape[:2]
    rows = np.zeros((h, 1 + w * channels), np.uint8)  # filter byte 0 per row
    rows[:, 1:] = a.reshape(h, w * channels)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b""))


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
    if depth != 8 or interlace or channels is None or not np.all(raw.reshape(h, -1)[:, 0] == 0):
        import imageio.v3 as iio  # not one of ours: let a full decoder handle it

        return iio.imread(data, extension=".png")
    pix = raw.reshape(h, 1 + w * channels)[:, 1:]
    return pix.reshape(h, w) if channels == 1 else pix.reshape(h, w, channels)
