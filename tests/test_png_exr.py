import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from blender_addon.core import png


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (4, 3, 4)])
def test_png_encoder_is_standard(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode(a)
    assert np.array_equal(iio.imread(data, extension=".png"), a)
    assert np.array_equal(png.decode(data), a)


def test_png_decode_falls_back_for_foreign_files():
    a = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = iio.imwrite("<bytes>", a, extension=".png")  # Pillow uses adaptive filters
    assert np.array_equal(png.decode(data), a)


def test_exr_reader_matches_openexr_on_a_real_render(tmp_path):
    """Our numpy reader against the OpenEXR library, on passes Blender really wrote."""
    OpenEXR = pytest.importorskip("OpenEXR", reason="the OpenEXR package is a test dependency")
    import bpy

    from blender_addon.config import RenderSettings
    from blender_addon.engine import configure_cycles
    from blender_addon.exr import read_exr
    from blender_addon.labels import passes_from_exr
    from blender_addon.pipeline import draw_frame
    from blender_addon.scene import PatientScene
    from conftest import MESHES

    settings = RenderSettings(meshes=str(MESHES), out=str(tmp_path), resolution="40x24")
    scene = PatientScene(MESHES / "patient07", max_tools=settings.max_tools)
    configure_cycles(scene.scene, samples=1, denoise=False)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = 40, 24
    d = draw_frame(np.random.default_rng(0), scene, settings)
    scene.pose(d.camera, d.light, d.tools, d.materials, 1)
    path = str(tmp_path / "passes.exr")
    scene.scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    ours = read_exr(path)
    with OpenEXR.File(path, separate_channels=True) as f:
        theirs = {name: ch.pixels for part in f.parts for name, ch in part.channels.items()}
    assert set(ours) == set(theirs)
    for name, pixels in theirs.items():
        assert np.array_equal(ours[name], pixels.astype(np.float32)), name
    passes = passes_from_exr(ours)
    assert passes["rgb"].shape == (24, 40, 3) and passes["index"].shape == (24, 40)


def test_overlapped_frames_equal_frames_rendered_one_at_a_time(tmp_path):
    """render_frames (labels and writes of one frame and the plan of the next run in a worker thread while
    Cycles renders) writes byte for byte what render_frame writes one frame at a time, reports frames in
    order, and a stop finishes every frame it started."""
    import json

    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.dataset import FrameKey
    from blender_addon.engine import configure_cycles
    from blender_addon.scene import PatientScene
    from conftest import MESHES

    settings = RenderSettings(meshes=str(MESHES), out=str(tmp_path), resolution="48x32", samples=1, denoise=False,
                              view="mixed", fov_mask="circle", sequence_length=2).validate()
    scene = PatientScene(MESHES / "patient01", max_tools=settings.max_tools)
    configure_cycles(scene.scene, samples=1, denoise=False)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = 48, 32
    keys = [FrameKey("patient01", k) for k in range(3)]
    one, both = tmp_path / "one", tmp_path / "both"
    for k in keys:
        pipeline.render_frame(k, 5, scene, settings, one, str(tmp_path / "a.exr"), {}, pipeline.ClipCache())
    reported = []
    assert pipeline.render_frames(keys, 5, scene, settings, both, str(tmp_path / "b.exr"), {}, pipeline.ClipCache(),
                                  on_done=reported.append)
    assert [m["frame"] for m in reported] == [0, 1, 2]
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(both) for p in both.rglob("*") if p.is_file()) and len(files) == 3 * 6
    for f in files:
        a, b = (one / f).read_bytes(), (both / f).read_bytes()
        if f.suffix == ".json":  # the meta: equal but for the measured render time
            a, b = ({k: v for k, v in json.loads(x).items() if k != "render_seconds"} for x in (a, b))
        assert a == b, f
    checks = []
    stopped = tmp_path / "stopped"
    assert not pipeline.render_frames(keys, 5, scene, settings, stopped, str(tmp_path / "c.exr"), {},
                                      pipeline.ClipCache(), should_stop=lambda: checks.append(1) or len(checks) > 2,
                                      on_done=reported.append)
    assert [m["frame"] for m in reported[3:]] == [0, 1]  # both frames it started: finished and reported
    assert (stopped / keys[1].relpath("meta")).is_file() and not (stopped / keys[2].relpath("image")).exists()


def test_passes_scratch_folder_in_memory_when_there_is_room(tmp_path, monkeypatch):
    from blender_addon import pipeline

    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setenv("LAPSYNTH_SHM", str(shm))
    monkeypatch.setattr(pipeline.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now (a run killed with -9 left its folder)
    stale = shm / f"lapsynth-{dead.pid}-abc"
    stale.mkdir()
    (stale / "passes.exr").write_bytes(b"x" * 100)
    mine = shm / f"lapsynth-{os.getpid()}-def"  # a live run's folder stays
    mine.mkdir()
    other = shm / "lapsynth-notapid"
    other.mkdir()
    got = pipeline.scratch_dir((452, 256))
    assert os.path.dirname(got) == str(shm) and os.path.basename(got).startswith(f"lapsynth-{os.getpid()}-")
    assert not stale.exists() and mine.exists() and other.exists()
    monkeypatch.setattr(pipeline, "_free_bytes", lambda folder: 32 << 20)  # a container's small /dev/shm
    assert os.path.dirname(pipeline.scratch_dir((1920, 1080))) == str(tmp_path / "tmp")
    monkeypatch.setenv("LAPSYNTH_SHM", str(tmp_path / "absent"))
    assert os.path.dirname(pipeline.scratch_dir((452, 256))) == str(tmp_path / "tmp")
    monkeypatch.setenv("LAPSYNTH_SHM", "")
    assert os.path.dirname(pipeline.scratch_dir((452, 256))) == str(tmp_path / "tmp")
