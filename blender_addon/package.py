"""Build and validate the installable extension zip without a Blender binary.

    python blender_addon/package.py [--out dist]

Uses Blender's own extension tool, which the bpy wheel ships (bl_pkg/cli/blender_ext.py), with Blender's
list of valid tags (what `blender --command extension build` and extensions.blender.org check). Install
the zip with Edit > Preferences > Get Extensions > Install from Disk (Blender 4.5 LTS to 5.3). A manifest
the tool refuses is one line on stderr naming it, exit status 2.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class PackageError(Exception):
    """The extension cannot be built: the message names the file or tool at fault."""


def _bpy_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise PackageError("the bpy module is not installed (pip install -e '.[render]')")
    return Path(list(spec.submodule_search_locations)[0])


def _newest(pattern: str, what: str) -> Path:
    found = sorted(_bpy_root().glob(pattern))
    if not found:
        raise PackageError(f"bpy has no {what}")
    return found[-1]


def extension_tool() -> Path:
    return _newest("*/scripts/addons_core/bl_pkg/cli/blender_ext.py", "bl_pkg/cli/blender_ext.py")


def valid_tags_file() -> Path:
    """Blender's own list of extension tags (a Python file of sets; the tool reads it as Blender does)."""
    return _newest("*/scripts/modules/_bpy_internal/extensions/tags.py", "_bpy_internal/extensions/tags.py")


def _run_tool(args: list[str], manifest: Path) -> None:
    proc = subprocess.run([sys.executable, str(extension_tool()), *args, "--valid-tags", str(valid_tags_file())],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        text = " ".join((proc.stderr + proc.stdout).split()) or f"exit status {proc.returncode}"
        raise PackageError(f"{manifest}: refused by Blender's extension tool: {text}")


def build(out: Path, source: Path = HERE) -> Path:
    """Build <out>/lapsynth-<version>.zip from the add-on folder `source` and validate it."""
    manifest_path = source / "blender_manifest.toml"
    manifest = manifest_path.read_text()
    version = next(ln.split('"')[1] for ln in manifest.splitlines() if ln.startswith("version"))
    out.mkdir(parents=True, exist_ok=True)
    zip_path = out / f"lapsynth-{version}.zip"
    _run_tool(["build", "--source-dir", str(source), "--output-filepath", str(zip_path)], manifest_path)
    _run_tool(["validate", str(zip_path)], manifest_path)
    return zip_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="package.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE.parent / "dist")
    args = p.parse_args(argv)
    try:
        print(build(args.out))
    except PackageError as e:
        print(f"package.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
