"""Installing by role: the backend without bpy, the `lapsynth` command, the packaging markers, and tests that
leave nothing in the system's temp folder."""
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, SYSTEM_TMP

BLOCK_BPY = """
import importlib.abc, sys
class NoBlender(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bpy", "mathutils", "bmesh"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the backend must not need bpy)")
sys.meta_path.insert(0, NoBlender())
sys.modules.pop("bpy", None)
"""


def _backend_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "backend").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_backend_module_imports_with_bpy_absent():
    modules = _backend_modules()
    assert len(modules) >= 40 and "backend.translator.training" in modules
    script = BLOCK_BPY + textwrap.dedent(f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
        assert not [m for m in sys.modules if m.split(".")[0] in ("bpy", "mathutils", "bmesh")]
        print("IMPORTED", len({modules!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and f"IMPORTED {len(modules)}" in proc.stdout, proc.stderr[-3000:]


def test_the_block_really_hides_bpy():
    proc = subprocess.run([sys.executable, "-c", BLOCK_BPY + "import bpy"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "blocked" in proc.stderr


def test_lapsynth_command_dispatches_to_every_program(capsys):
    from backend.cli import COMMANDS, main

    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"lapsynth {c} ARGS" in usage for c in COMMANDS)
    assert main(["paint"]) == 2
    assert capsys.readouterr().err.strip() == ("lapsynth: error: unknown command 'paint' (choose one of "
                                               "render, meshes, frames, train, translate, segment, evaluate, efficacy, stats)")
    assert main(["meshes", "import", "--liver", "/nonexistent/liver.stl", "--name", "p", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lapsynth meshes: error: ") and "/nonexistent" in err[0], err


def _installed_script() -> Path:
    """The `lapsynth` script pip put beside this interpreter (make setup's .venv has it; CI must)."""
    script = Path(sys.executable).parent / "lapsynth"
    if not script.is_file() and not os.environ.get("CI"):
        pytest.skip(f"no {script}: this environment's lapsynth is not installed from this checkout (pip install -e .)")
    return script


@pytest.mark.parametrize("argv, code, needle", [
    (["--version"], 0, "lapsynth 0."),
    (["train", "--renders", "/nonexistent", "--real", "/nonexistent", "--out", "/nonexistent/run"], 2,
     "lapsynth train: error: "),
    (["render", "--meshes", "/nonexistent/meshes", "--out", "OUT"], 2, "render.py: error: --meshes"),
])
def test_installed_console_script(argv, code, needle, tmp_path):
    script = _installed_script()
    if argv[0] == "render":
        from conftest import HAS_BPY

        if not HAS_BPY:
            code, needle = 2, "lapsynth render: error: the bpy module is not installed"
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == code and needle in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "OUT").exists()


def test_packaging_markers_give_each_interpreter_its_bpy():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.split(";")[0].strip().startswith("bpy") for d in meta["dependencies"])
    render = meta["optional-dependencies"]["render"]
    assert "bpy==5.0.1; python_version == '3.11'" in render and "numpy<2; python_version == '3.11'" in render
    assert any(r.startswith("bpy>=5.3,<5.4") and r.endswith("python_version == '3.13'") for r in render)
    assert meta["requires-python"] == ">=3.11,<3.14" and "numpy>=1.26,<3" in meta["dependencies"]
    assert meta["scripts"] == {"lapsynth": "backend.cli:main"}


def test_programs_started_by_the_tests_use_the_sessions_temp_folder(private_temp_folder):
    out = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == private_temp_folder and Path(out) != SYSTEM_TMP


def test_the_temp_folder_check_fails_a_run_that_leaves_folders(tmp_path):
    """The conftest check, run on a session that leaves a blender_* folder and on one that leaves nothing."""
    fake_tmp, tests = tmp_path / "systmp", tmp_path / "suite"
    fake_tmp.mkdir()
    tests.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_leaks.py").write_text(textwrap.dedent("""
        import os

        def test_leaves_a_folder():
            os.mkdir(os.path.join(os.environ["FAKE_SYSTEM_TMP"], "blender_leftover"))
    """))
    (tests / "test_clean.py").write_text("import tempfile\n\ndef test_clean():\n    tempfile.mkdtemp(prefix='lapsynth-')\n")
    env = {**os.environ, "TMPDIR": str(fake_tmp), "FAKE_SYSTEM_TMP": str(fake_tmp), "CI": "true"}
    for name in ("LAPSYNTH_CHECK_TMP", "PYTEST_DEBUG_TEMPROOT"):
        env.pop(name, None)

    def run(name):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name], cwd=tests,
                              env=env, capture_output=True, text=True, timeout=300)

    clean = run("test_clean.py")  # its mkdtemp went to the session's folder, deleted at the end
    assert clean.returncode == 0 and not list(fake_tmp.glob("*lapsynth-*")), clean.stdout + clean.stderr
    leaky = run("test_leaks.py")
    assert leaky.returncode == 1 and "left 1 folders" in leaky.stderr and "blender_leftover" in leaky.stderr, \
        leaky.stdout + leaky.stderr
