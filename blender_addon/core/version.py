"""The project's one version string: the extension manifest's `version` (Blender requires it there).

pyproject.toml reads it from here (dynamic version), the renderer records it in every data set.
"""
from __future__ import annotations

import re
from pathlib import Path

_MANIFEST = Path(__file__).resolve().parents[1] / "blender_manifest.toml"


def _read() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', _MANIFEST.read_text(encoding="utf-8"), re.MULTILINE)
    if not m:
        raise RuntimeError(f"{_MANIFEST}: no version line")
    return m.group(1)


__version__ = _read()
