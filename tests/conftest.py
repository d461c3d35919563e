import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RENDER = ROOT / "blender_addon" / "render.py"
MESHES = ROOT / "meshes"
sys.path.insert(0, str(ROOT))

# Small but real renders: the same code path as the default, at a size CI can afford.
TINY = ["--resolution", "96x64", "--samples", "2", "--preview-frames", "3"]


def run_render(*args, check=True, timeout=600, **kw):
    """Run render.py as a user would (the bpy-module form); returns the CompletedProcess."""
    cmd = [sys.executable, str(RENDER), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data not available: {SHARED} is missing (present in CI)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Two patients (one with, one without gallbladder), 4 frames each, rendered once per session."""
    out = tmp_path_factory.mktemp("ds") / "A"
    prebuilt = os.environ.get("LAPSYNTH_TEST_DATASET")
    if prebuilt:  # machines without bpy (the GPU machine): the same set, rendered elsewhere with these arguments
        shutil.copytree(prebuilt, out)
        return out
    run_render("--meshes", MESHES, "--out", out, "--patients", "patient01,patient07",
               "--frames-per-scene", 4, "--seed", 7, *TINY)
    return out
