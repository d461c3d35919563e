import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RENDER = ROOT / "blender_addon" / "render.py"
MESHES = ROOT / "meshes"
sys.path.insert(0, str(ROOT))

# Small but real renders: the same code path as the default, at a size CI can afford.
TINY = ["--resolution", "96x64", "--samples", "2", "--preview-frames", "3"]
HAS_BPY = importlib.util.find_spec("bpy") is not None

# The system's temp folder, where a killed render leaves lapsynth-* and Blender's blender_* folders, torchrun its
# torchelastic_* folders and torch.compile torchinductor_*. The tests and every program they start use a folder of
# the session instead, made before collection (imports included) and deleted at the end; pytest's own tmp_path
# folders stay where pytest keeps them. With CI set (or LAPSYNTH_CHECK_TMP=1) a run that still leaves such
# folders in the system's temp folder fails.
SYSTEM_TMP = Path(tempfile.gettempdir())
LEFTOVERS = ("lapsynth-*", "blender_*", "torchelastic_*", "torchinductor_*")
_BEFORE = pytest.StashKey[set]()
_PRIVATE = pytest.StashKey[tuple]()
_SHM = pytest.StashKey[object]()


def leftovers(folder: Path = SYSTEM_TMP) -> set[str]:
    return {p.name for pattern in LEFTOVERS for p in folder.glob(pattern)}


def pytest_configure(config):
    config.stash[_BEFORE] = leftovers()
    folder = Path(tempfile.mkdtemp(prefix="pytest-lapsynth-tmp-", dir=SYSTEM_TMP))
    config.stash[_PRIVATE] = (folder, os.environ.get("TMPDIR"), os.environ.get("PYTEST_DEBUG_TEMPROOT"),
                              tempfile.tempdir)
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(SYSTEM_TMP))  # tmp_path: where pytest would put it
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    # Renders keep their passes EXR in /dev/shm where there is one (pipeline.scratch_dir): a folder of the
    # session there too, so a render killed by a test leaves nothing in the machine's memory.
    shm = None
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        shm = tempfile.mkdtemp(prefix="pytest-lapsynth-shm-", dir="/dev/shm")
        os.environ["LAPSYNTH_SHM"] = shm
    config.stash[_SHM] = shm


def pytest_unconfigure(config):
    folder, tmpdir, temproot, tempdir = config.stash[_PRIVATE]
    for name, value in (("TMPDIR", tmpdir), ("PYTEST_DEBUG_TEMPROOT", temproot)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tempfile.tempdir = tempdir
    shutil.rmtree(folder, ignore_errors=True)
    if config.stash.get(_SHM, None):
        os.environ.pop("LAPSYNTH_SHM", None)
        shutil.rmtree(config.stash[_SHM], ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    if not (os.environ.get("CI") or os.environ.get("LAPSYNTH_CHECK_TMP")):
        return
    new = sorted(leftovers() - session.config.stash.get(_BEFORE, set()))
    if new:
        print(f"\nthe tests left {len(new)} folders in {SYSTEM_TMP}: {', '.join(new[:8])}", file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def private_temp_folder(pytestconfig) -> Path:
    """TMPDIR of the tests and the programs they start (renders, Blender, torchrun), deleted at the end."""
    return pytestconfig.stash[_PRIVATE][0]


def run_render(*args, check=True, timeout=600, **kw):
    """Run render.py as a user would (the bpy-module form); returns the CompletedProcess. Skips the test where
    bpy is not installed (the backend's own environments, e.g. Python 3.12)."""
    if not HAS_BPY:
        pytest.skip("renders need bpy: pip install -e '.[render]' on Python 3.11 or 3.13")
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


@pytest.fixture
def endoscapes_subset(tmp_path):
    """Two frames of each of three Endoscapes patients (images + masks)."""
    endo = shared_data() / "real" / "endoscapes"
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    chosen = {}
    for p in sorted((endo / "images").glob("*.jpg")):
        patient = p.name.split("_")[0]
        if (len(chosen) < 3 or patient in chosen) and chosen.get(patient, 0) < 2:
            chosen[patient] = chosen.get(patient, 0) + 1
            shutil.copy(p, images / p.name)
            shutil.copy(endo / "masks" / (p.stem + ".png"), masks / (p.stem + ".png"))
    return images, masks, chosen
