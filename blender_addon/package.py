"""Build and validate the installable extension zip without a Blender binary.

    python blender_addon/package.py [--out dist]

Uses Blender's own extension tool, which the bpy wheel ships (bl_pkg/cli/blender_ext.py). Install
the zip with Edit > Preferences > Get Extensions > Install from Disk (Blender 4.5 LTS or 5.0).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def extension_tool() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package.py: the bpy module is not installed (pip install bpy==5.0.1)")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise SystemExit("package.py: bpy has no bl_pkg/cli/blender_ext.py")
    return found[-1]


def build(out: Path) -> Path:
    tool = extension_tool()
    out.mkdir(parents=True, exist_ok=True)
    manifest = (HERE / "blender_manifest.toml").read_text()
    version = next(ln.split('"')[1] for ln in manifest.splitlines() if ln.startswith("version"))
    zip_path = out / f"lapsynth-{version}.zip"
    subprocess.run([sys.executable, str(tool), "build", "--source-dir", str(HERE), "--output-filepath",
                    str(zip_path)], check=True)
    subprocess.run([sys.executable, str(tool), "validate", str(zip_path)], check=True)
    return zip_path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE.parent / "dist")
    args = p.parse_args()
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
