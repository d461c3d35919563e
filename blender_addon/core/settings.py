"""Policies about settings that every program shares.

- Sizes are written WxH everywhere (`--resolution 452x256`), as image tools and Blender do.
- Resuming: output made with other settings is never continued silently. Each program states which
  of its settings may change on a resume; any other difference is refused, naming every key that
  differs and both values (`settings_conflicts`, `refuse_other_settings`).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .errors import ConfigError, InputError


def parse_resolution(text: str, option: str = "--resolution", multiple: int = 1) -> tuple[int, int]:
    """'WxH' -> (width, height); both 8..8192 and multiples of `multiple`."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"{option} {text!r}: expected WxH (width x height), e.g. 452x256")
    w, h = int(m.group(1)), int(m.group(2))
    if not (8 <= w <= 8192 and 8 <= h <= 8192):
        raise ConfigError(f"{option} {text!r}: width and height must be between 8 and 8192")
    if w % multiple or h % multiple:
        raise ConfigError(f"{option} {text!r}: width and height must be multiples of {multiple}")
    return w, h


def settings_conflicts(old: dict, new: dict, may_change: Iterable[str] = (), old_name: str = "on disk",
                       new_name: str = "asked", _prefix: str = "") -> list[str]:
    """'key: old <old_name>, new <new_name>' for every (dotted, nested) key whose values differ."""
    may_change = set(may_change)
    diffs = []
    for k in sorted(set(old) | set(new), key=str):
        key = f"{_prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += settings_conflicts(a, b, may_change, old_name, new_name, f"{key}.")
        elif a != b and key not in may_change:
            diffs.append(f"{key}: {a!r} {old_name}, {b!r} {new_name}")
    return diffs


def refuse_other_settings(conflicts: list[str], what: str, remedy: str, error: type[InputError] = ConfigError) -> None:
    """Raise `error` naming every conflict, unless there are none."""
    if conflicts:
        raise error(f"{what} was made with other settings ({'; '.join(conflicts)}); {remedy}")


def lines_digest(lines: Iterable[str]) -> str:
    """First 16 hex digits of the SHA-256 of the lines joined by newlines: what a resume compares to know its
    inputs (frame lists, style frames) are the ones it started with, not only at the same paths."""
    # surrogateescape: a file name that is not UTF-8 (a Latin-1 name) hashes as its bytes; UTF-8 names as before
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def files_digest(paths: Iterable[str | os.PathLike], error: type[InputError] = InputError, workers: int = 4) -> str:
    """lines_digest of the files' SHA-256s, in order: what a resume compares to know its input files hold the
    bytes they held when it started (a frame replaced under the same name changes it). `error` names a file
    that cannot be read."""
    def one(path) -> str:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)  # hashlib releases the GIL on large buffers: threads overlap
        except OSError as e:
            raise error(f"{path}: cannot be read ({e.strerror or e})") from None
        return h.hexdigest()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return lines_digest(pool.map(one, list(paths)))
