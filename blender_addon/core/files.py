"""Atomic files: written to a temporary name in the same folder, fsynced, then renamed into place.

A reader (or a run killed with -9 and restarted) sees either the old file or the whole new one.
Every writer in the project goes through `atomic_write`.
"""
from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temporary file beside `path`, fsync, then rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed whatever happens below
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
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


# An atomic write's temporary lives for the milliseconds of one write; one this old was left by a writer
# killed with -9. Younger ones are left alone: another shard of the same data set may be writing them now.
STALE_TEMPORARY_S = 3600.0


def sweep_temporaries(folders: Iterable[str | os.PathLike], older_than_s: float = STALE_TEMPORARY_S,
                      suffixes: tuple[str, ...] | None = None, recursive: bool = True,
                      say: Callable[[str], None] | None = None) -> list[Path]:
    """Remove atomic_write's temporaries (`.tmp-*` files, of these suffixes when given) older than
    `older_than_s` in the folders (and below, when recursive); the paths removed, and a line to `say` when
    there were any. Missing folders and files that vanish meanwhile are skipped."""
    now, removed = time.time(), []
    for folder in folders:
        for dirpath, subdirs, names in os.walk(folder):
            if not recursive:
                subdirs.clear()
            for name in names:
                if not name.startswith(".tmp-") or (suffixes is not None and not name.endswith(suffixes)):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
                        os.unlink(path)
                        removed.append(Path(path))
                except FileNotFoundError:  # its writer renamed it, or another sweep took it
                    pass
    if removed and say is not None:
        say(f"removed {len(removed)} temporaries of interrupted writes (.tmp-*, over {older_than_s / 3600:g} h old)")
    return removed


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    atomic_write(path, lambda f: f.write(payload))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text for people (Markdown reports): a file name that is not UTF-8 (its bytes kept by Python as
    lone surrogates) is written as a \\udcXX escape instead of failing after the work is done."""
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=True, default=float) + "\n"
    atomic_write_bytes(path, text.encode())


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_place(p: Path, path, option: str, is_dir: bool) -> None:
    for q in (p, *p.parents):
        if not q.exists():
            continue
        if q == p:
            if is_dir and not q.is_dir():
                raise InputError(f"{option} {path}: exists and is not a folder")
            if not is_dir and q.is_dir():
                raise InputError(f"{option} {path}: is a folder, expected a file name")
        elif not q.is_dir():
            raise InputError(f"{option} {path}: cannot be created, {q} is a file")
        if q.is_dir() and not os.access(q, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: {q} is not writable")
        if q.is_dir():
            return


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work starts, an output folder that cannot be made: a file at it or above it,
    or a first existing folder that is not writable. The message names the option and the culprit."""
    _check_place(Path(os.path.abspath(path)), path, option, is_dir=True)


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Refuse an output file that cannot be written: a folder in its place or a file above it."""
    _check_place(Path(os.path.abspath(path)), path, option, is_dir=False)
