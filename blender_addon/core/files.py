"""Atomic files: written to a temporary name in the same folder, fsynced, then renamed into place.

A reader (or a run killed with -9 and restarted) sees either the old file or the whole new one.
Every writer in the project goes through `atomic_write`.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import BinaryIO, Callable

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temporary file beside `path`, fsync, then rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    atomic_write(path, lambda f: f.write(payload))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=True, default=float) + "\n"
    atomic_write_bytes(path, text.encode())


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
