"""The Blender extension: package, install, register, operators, hand-off to the backend."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from blender_addon.config import RenderSettings, settings_from_args, settings_from_panel
from conftest import MESHES, ROOT, shared_data

sys.path.insert(0, str(ROOT / "blender_addon"))


def run_bpy(script: str, tmp_path, timeout=600) -> str:
    """Run a script with the bpy module in a fresh process and a temporary Blender user folder."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "BLENDER_USER_RESOURCES": str(tmp_path / "user"),
           "PYTHONPATH": str(ROOT)}
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory):
    from package import build

    return build(tmp_path_factory.mktemp("dist"))


def test_settings_to_arguments_and_back_are_identical():
    s = RenderSettings(meshes="/m", out="/o", patients="patient01,patient07", frames_per_scene=7,
                       resolution="320x180", seed=11, shard="2/5", device="gpu", samples=3, denoise=False,
                       max_tools=1, min_liver=0.2, max_tool=0.4, max_retries=9, threads=2, preview_frames=0,
                       overwrite=True).validate()
    assert settings_from_args(s.to_args()) == s
    d = RenderSettings(meshes="/m", out="/o")
    assert d.to_args() == ["--meshes", "/m", "--out", "/o"] and settings_from_args(d.to_args()) == d


def test_panel_floats_are_compared_at_the_precision_a_user_types():
    from dataclasses import asdict

    import numpy as np

    typed = settings_from_args(["--meshes", "/m", "--out", "/o", "--max-tool", "0.35"])
    stored = {**asdict(typed), "min_liver": float(np.float32(0.15)), "max_tool": float(np.float32(0.35))}
    assert stored["min_liver"] == 0.15000000596046448  # what a Blender float property gives back for 0.15
    panel = settings_from_panel(stored)
    assert panel == typed and panel.content() == typed.content()  # the same data set: resumable either way
    assert panel.to_args() == typed.to_args() == ["--meshes", "/m", "--out", "/o", "--max-tool", "0.35"]
    assert settings_from_panel({**stored, "min_liver": float(np.float32(0.1234))}).min_liver == 0.123


def test_the_panel_command_carries_the_numbers_the_panel_shows(tmp_path):
    out = run_bpy("""
        import bpy, blender_addon
        from blender_addon import ui
        bpy.ops.wm.read_factory_settings(use_empty=True)
        blender_addon.register()
        pg = bpy.context.scene.lapsynth
        pg.meshes, pg.out, pg.min_liver, pg.max_tool = "/m", "/o", 0.15, 0.35
        assert pg.min_liver != 0.15  # stored as a float32
        print("COMMAND", ui.headless_command(ui.settings_from_props(pg)))
        blender_addon.unregister()
    """, tmp_path)
    command = next(ln for ln in out.splitlines() if ln.startswith("COMMAND"))
    assert command.endswith("render.py -- --meshes /m --out /o --max-tool 0.35"), command


def test_zip_builds_validates_and_holds_the_extension(extension_zip):
    import zipfile

    names = zipfile.ZipFile(extension_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "render.py" in names
    assert "package.py" not in names and not any("__pycache__" in n for n in names)
    manifest = zipfile.ZipFile(extension_zip).read("blender_manifest.toml").decode()
    assert 'license = ["SPDX:GPL-3.0-or-later"]' in manifest and "[permissions]" in manifest
    tagline = next(ln.split('"')[1] for ln in manifest.splitlines() if ln.startswith("tagline"))
    assert len(tagline) <= 64 and not tagline.endswith(".")


def _manifest() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_manifest_asks_for_what_the_extension_does_and_names_the_tested_blender_range():
    m = _manifest()
    ui = (ROOT / "blender_addon" / "ui.py").read_text()
    # The panel copies the headless command to the clipboard: Blender shows the reason before installing.
    assert "window_manager.clipboard =" in ui and m["permissions"].get("clipboard")
    assert all(0 < len(reason) <= 64 and not reason.endswith(".") for reason in m["permissions"].values())
    assert "bpy" not in m.get("website", "")  # no page of another project
    # The supported range is what `make test` runs: bpy 4.5 LTS and 5.3 beside the main 5.0.1.
    makefile = (ROOT / "Makefile").read_text()
    tested = [_version(ln.split("==")[1].strip()) for ln in makefile.splitlines() if ln.startswith(("BPY45", "BPY53"))]
    tested.append(_version(next(ln.split("==")[1] for ln in (ROOT / "constraints-py311.txt").read_text().splitlines()
                                if ln.startswith("bpy=="))))
    assert len(tested) == 3
    assert _version(m["blender_version_min"]) == min(tested)[:2] + (0,)
    assert max(tested) < _version(m["blender_version_max"]) <= max(tested)[:1] + (max(tested)[1] + 1, 0)


def test_package_refuses_a_tag_blender_does_not_know_in_one_line(tmp_path):
    import shutil

    src = tmp_path / "addon"
    shutil.copytree(ROOT / "blender_addon", src, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = src / "blender_manifest.toml"
    manifest.write_text(manifest.read_text().replace('tags = ["Render", "Scene"]', 'tags = ["Render", "Surgery"]'))
    from package import PackageError, build

    with pytest.raises(PackageError) as e:
        build(tmp_path / "dist", source=src)
    assert str(manifest) in str(e.value) and '"Surgery"' in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "dist" / "lapsynth-0.1.0.zip").exists()
    # The command line says the same in one line, exit status 2.
    proc = subprocess.run([sys.executable, str(ROOT / "blender_addon" / "package.py"), "--out", str(tmp_path / "d2")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("lapsynth-0.1.0.zip"), proc.stderr


def test_register_unregister_leaves_nothing_behind(tmp_path):
    out = run_bpy("""
        import bpy, blender_addon
        bpy.ops.wm.read_factory_settings(use_empty=True)
        before = set(dir(bpy.types)), set(p.identifier for p in bpy.types.Scene.bl_rna.properties)
        for _ in range(2):
            blender_addon.register()
            assert hasattr(bpy.types, "LAPSYNTH_PT_render_domain_a") and hasattr(bpy.context.scene, "lapsynth")
            assert bpy.context.scene.lapsynth.resolution == "452x256"
            blender_addon.unregister()
            after = set(dir(bpy.types)), set(p.identifier for p in bpy.types.Scene.bl_rna.properties)
            assert after == before, (after[0] ^ before[0], after[1] ^ before[1])
        print("CLEAN")
    """, tmp_path)
    assert "CLEAN" in out


def test_installs_and_enables_as_an_extension_headlessly(extension_zip, tmp_path):
    out = run_bpy(f"""
        import bpy, addon_utils
        bpy.ops.extensions.package_install_files(repo="user_default", filepath={str(extension_zip)!r},
                                                 enable_on_install=True)
        mod = "bl_ext.user_default.lapsynth"
        assert mod in {{m.__name__ for m in addon_utils.modules()}}
        assert addon_utils.check(mod)[1], "not enabled"
        assert hasattr(bpy.types, "LAPSYNTH_PT_render_domain_a")
        assert bpy.context.preferences.addons[mod].preferences.python == ""
        addon_utils.disable(mod)
        assert not hasattr(bpy.types, "LAPSYNTH_PT_render_domain_a")
        assert not hasattr(bpy.types.Scene, "lapsynth")
        print("INSTALLED")
    """, tmp_path)
    assert "INSTALLED" in out


def test_operators_on_a_tiny_scene_and_the_backend_hand_off(extension_zip, tmp_path):
    real = shared_data() / "real" / "cholec80_vid03"
    data = tmp_path / "A"
    run_dir = tmp_path / "run"
    out = run_bpy(f"""
        import bpy, addon_utils, json, sys
        bpy.ops.extensions.package_install_files(repo="user_default", filepath={str(extension_zip)!r},
                                                 enable_on_install=True)
        mod = "bl_ext.user_default.lapsynth"
        pg = bpy.context.scene.lapsynth
        pg.meshes, pg.out, pg.patients, pg.patient = {str(MESHES)!r}, {str(data)!r}, "patient07", "patient07"
        pg.resolution, pg.samples, pg.frames_per_scene, pg.preview_frames = "96x64", 2, 3, 2
        # Errors become reports with the command line's message.
        pg.resolution = "96by64"
        try:
            bpy.ops.lapsynth.render()
            raise SystemExit("bad resolution accepted")
        except RuntimeError as e:
            assert "--resolution '96by64': expected WxH" in str(e), e
        pg.resolution = "96x64"
        assert bpy.ops.lapsynth.build_scene() == {{"FINISHED"}}
        scene = bpy.data.scenes["Domain A"]
        assert {{o.name for o in scene.objects}} >= {{"liver", "abdominal_wall", "laparoscope"}}
        with bpy.context.temp_override(scene=scene):
            m0 = scene.camera.matrix_world.copy()
            assert bpy.ops.lapsynth.new_view() == {{"FINISHED"}}
            m1 = scene.camera.matrix_world.copy()
            assert bpy.ops.lapsynth.new_view() == {{"FINISHED"}}
            assert m0 != m1 != scene.camera.matrix_world
            assert bpy.ops.lapsynth.render() == {{"FINISHED"}}
            assert bpy.ops.lapsynth.open_preview() == {{"FINISHED"}}
            assert "preview.png" in bpy.data.images
            prefs = bpy.context.preferences.addons[mod].preferences
            prefs.python = "/nonexistent/python"
            try:
                bpy.ops.lapsynth.train()
                raise SystemExit("missing interpreter accepted")
            except RuntimeError as e:
                assert "not found or not executable" in str(e), e
            prefs.python = {sys.executable!r}
            pg2 = scene.lapsynth
            pg2.real_frames, pg2.run_dir, pg2.train_iterations = {str(real)!r}, {str(run_dir)!r}, 2
            pg2.backend_args = "--config {ROOT / 'tests' / 'tiny.yaml'}"
            assert bpy.ops.lapsynth.train() == {{"FINISHED"}}
            pg2.backend_args, pg2.styles = "--sheet 1", 2
            assert bpy.ops.lapsynth.translate() == {{"FINISHED"}}
            assert pg2.status == "translate: finished", pg2.status
        print("OPERATORS", json.dumps(sorted(o.name for o in scene.objects)))
    """, tmp_path)
    assert "OPERATORS" in out
    from blender_addon.core.dataset import read_index, read_translation_index

    assert [e["frame"] for e in read_index(data)] == [0, 1, 2]
    assert (run_dir / "checkpoints" / "ckpt_00000002.pt").exists()
    assert len(read_translation_index(data)) == 3
    assert json.loads((data / "translation.json").read_text())["styles"] == 2


def test_cancel_returns_at_once_and_a_job_that_ignores_it_is_killed_after_its_grace_time():
    """Cancel is called from Blender's UI thread: it must not wait for the job. A job that ignores SIGTERM is
    killed (SIGKILL to its process group) by the poll or wait after the grace time, not before."""
    import time

    from blender_addon.jobs import Job

    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(120)"
    job = Job("stubborn", [sys.executable, "-c", stubborn]).start()
    while job.poll() and job.progress.last_line != "ready":
        time.sleep(0.02)
    t0 = time.monotonic()
    job.cancel(grace=1.5)
    assert time.monotonic() - t0 < 0.5 and job.cancelled
    time.sleep(0.5)
    assert job.poll()  # SIGTERM ignored, grace not over: still running
    assert job.wait(timeout=30) == -9 and 1.5 <= time.monotonic() - t0 < 10
    polite = Job("polite", [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(120)"]).start()
    while polite.poll() and polite.progress.last_line != "ready":
        time.sleep(0.02)
    polite.cancel()
    assert polite.wait(timeout=30) == -15  # ended by SIGTERM, long before the 30 s grace
    slow = Job("slow", [sys.executable, "-c", "import time; time.sleep(120)"]).start()
    with pytest.raises(subprocess.TimeoutExpired):  # wait's own timeout still holds
        slow.wait(timeout=0.2)
    slow.cancel(grace=0)
    assert slow.wait(timeout=30) in (-15, -9)


def test_background_render_job_reports_progress_and_cancel_keeps_the_data_set_resumable(tmp_path):
    import time

    from blender_addon.core.dataset import read_index
    from blender_addon.jobs import Job, render_command

    out = tmp_path / "A"
    args = ["--meshes", str(MESHES), "--out", str(out), "--patients", "patient02", "--frames-per-scene", "40",
            "--resolution", "96x64", "--samples", "2"]
    job = Job("render", render_command(args)).start()
    deadline = time.time() + 300
    while job.poll() and job.progress.done < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert job.progress.total == 40 and job.progress.done >= 2 and job.progress.rate > 0
    job.cancel()
    job.wait()
    assert job.returncode == 143  # render.py's clean stop on SIGTERM, after the frame in progress
    partial = read_index(out)
    assert 2 <= len(partial) < 40
    # Resuming finishes only what is missing.
    done = Job("render", render_command(args[:-6] + ["--frames-per-scene", "3"] + args[-4:])).start()
    assert done.wait() == 0
    assert [e["frame"] for e in read_index(out)][:3] == [0, 1, 2]
    assert any(f"{len(partial)} done" in ln or "0 to render" in ln for ln in done.lines)
