import os
import socket
import subprocess
import sys
import zlib

import imageio.v3 as iio
import numpy as np
import pytest

from blender_addon.core import png


@pytest.mark.parametrize("strategy", ["default", "rle"])
@pytest.mark.parametrize("filter", ["none", "up"])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (4, 3, 4), (1, 6, 3), (40, 30, 3)])
def test_png_encoder_is_standard(shape, filter, strategy):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # differences wrap around 256
    if shape == (40, 30, 3):
        a[5:30, 3:25] = 0  # a black border's runs, for the run-length strategy
    data = png.encode(a, level=1, filter=filter, strategy=strategy)
    assert np.array_equal(iio.imread(data, extension=".png"), a)
    assert np.array_equal(png.decode(data), a)
    raw = zlib.decompress(data[data.index(b"IDAT") + 4:])
    assert raw[0] == png.FILTERS[filter]


def test_png_up_filter_makes_a_smooth_picture_smaller():
    y, x = np.mgrid[0:64, 0:96]
    a = np.stack([(x * 2 + y) % 256, (y * 3) % 256, (x + 5 * y) % 256], axis=-1).astype(np.uint8)
    assert len(png.encode(a, 1, "up")) < 0.8 * len(png.encode(a, 1, "none"))
    with pytest.raises(ValueError, match="PNG filter 'paeth'"):
        png.encode(a, 1, "paeth")
    with pytest.raises(ValueError, match="PNG zlib strategy 'fixed'"):
        png.encode(a, 1, "up", "fixed")



def test_png_decode_falls_back_for_foreign_files():
    a = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = iio.imwrite("<bytes>", a, extension=".png")  # Pillow uses adaptive filters
    assert np.array_equal(png.decode(data), a)


def test_exr_reader_matches_openexr_on_a_real_render(tmp_path, monkeypatch):
    """Our numpy reader against the OpenEXR library, on passes Blender really wrote (denoised, so with the
    noisy image too): all scanlines in one read, one at a time, and only the channels the passes use."""
    OpenEXR = pytest.importorskip("OpenEXR", reason="the OpenEXR package is a test dependency")
    import bpy

    from blender_addon import exr
    from blender_addon.config import RenderSettings
    from blender_addon.engine import configure_cycles
    from blender_addon.exr import read_exr
    from blender_addon.labels import pass_channel, passes_from_exr
    from blender_addon.pipeline import draw_frame
    from blender_addon.scene import PatientScene
    from conftest import MESHES

    settings = RenderSettings(meshes=str(MESHES), out=str(tmp_path), resolution="40x24")
    scene = PatientScene(MESHES / "patient07", max_tools=settings.max_tools)
    configure_cycles(scene.scene, samples=1, denoise=True)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = 40, 24
    d = draw_frame(np.random.default_rng(0), scene, settings)
    scene.pose(d.camera, d.light, d.tools, d.materials, 1)
    one_read = exr._scanlines_in_one_read
    parts = (True, False) if hasattr(scene.scene.render.image_settings, "use_exr_interleave") else (True,)
    for one_part in parts:  # ours (one part), and 5.0's default multi-part layout
        if len(parts) > 1:
            scene.scene.render.image_settings.use_exr_interleave = one_part
        path = str(tmp_path / f"passes-{one_part}.exr")
        scene.scene.render.filepath = path
        bpy.ops.render.render(write_still=True)
        monkeypatch.setattr(exr, "_scanlines_in_one_read", one_read)
        ours = read_exr(path)
        with OpenEXR.File(path, separate_channels=True) as f:
            assert len(f.parts) == 1 or not one_part
            theirs = {name: ch.pixels for part in f.parts for name, ch in part.channels.items()}
        assert set(ours) == set(theirs)
        for name, pixels in theirs.items():
            assert np.array_equal(ours[name], pixels.astype(np.float32)), name
        passes = passes_from_exr(ours)
        assert passes["rgb"].shape == (24, 40, 3) and passes["index"].shape == (24, 40)
        kept = read_exr(path, keep=pass_channel)
        assert any("Noisy" in name for name in ours) and set(kept) == {n for n in ours if pass_channel(n)}
        for name, pixels in passes_from_exr(kept).items():
            assert np.array_equal(pixels, passes[name]), name
        monkeypatch.setattr(exr, "_scanlines_in_one_read", lambda *a: None)  # the reader for other layouts
        for name, pixels in read_exr(path).items():
            assert np.array_equal(pixels, ours[name]), name


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


def test_a_failed_render_keeps_the_error_of_the_frame_written_beside_it(tmp_path, monkeypatch):
    """When a render fails while the worker writes the previous frame and that write fails too (a full disk),
    the error raised names both; the frames before are finished and reported. No bpy needed: plan, render
    and finish are stand-ins."""
    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.dataset import FrameKey
    from conftest import MESHES

    settings = RenderSettings(meshes=str(MESHES), out=str(tmp_path), resolution="48x32").validate()
    monkeypatch.setattr(pipeline, "plan_frame", lambda key, *a: key)

    def render(plan, *a):
        if plan.frame == 2:
            raise RuntimeError("Cycles failed on frame 2")
        return {}, 0.1

    def finish(plan, *a):
        if plan.frame == 1:
            raise OSError(28, "No space left on device")
        return {"frame": plan.frame}

    monkeypatch.setattr(pipeline, "render_plan", render)
    monkeypatch.setattr(pipeline, "finish_frame", finish)
    reported = []
    with pytest.raises(RuntimeError, match="Cycles failed on frame 2") as err:
        pipeline.render_frames([FrameKey("patient01", k) for k in range(4)], 5, None, settings, tmp_path, "x.exr",
                               {}, pipeline.ClipCache(), on_done=reported.append)
    assert err.value.__notes__ == ["meanwhile writing the previous frame failed too: OSError: "
                                   "[Errno 28] No space left on device"]
    assert reported == [{"frame": 0}]
    monkeypatch.setattr(pipeline, "finish_frame", lambda plan, *a: {"frame": plan.frame})  # the render alone
    with pytest.raises(RuntimeError, match="Cycles failed on frame 2") as err:
        pipeline.render_frames([FrameKey("patient01", k) for k in range(4)], 5, None, settings, tmp_path, "x.exr",
                               {}, pipeline.ClipCache(), on_done=reported.append)
    assert not getattr(err.value, "__notes__", None) and reported[1:] == [{"frame": 0}, {"frame": 1}]


def test_passes_scratch_folder_in_memory_when_there_is_room(tmp_path, monkeypatch):
    from blender_addon import pipeline

    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setenv("LAPSYNTH_SHM", str(shm))
    monkeypatch.setattr(pipeline.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now (a run killed with -9 left its folder)
    host = f"{zlib.crc32(socket.gethostname().encode()):08x}"
    stale = shm / f"lapsynth-{dead.pid}-{host}-abc"
    stale.mkdir()
    (stale / "passes.exr").write_bytes(b"x" * 100)
    mine = shm / f"lapsynth-{os.getpid()}-{host}-def"  # a live run's folder stays
    mine.mkdir()
    kept = [shm / "lapsynth-notapid", shm / f"lapsynth-{dead.pid}-abc",  # not ours to judge: no pid, no host
            shm / f"lapsynth-{dead.pid}-{'0' * 8 if host != '0' * 8 else '1' * 8}-ghi"]  # another container's
    for k in kept:
        k.mkdir()
    got = pipeline.scratch_dir((452, 256))
    assert os.path.dirname(got) == str(shm) and os.path.basename(got).startswith(f"lapsynth-{os.getpid()}-{host}-")
    assert not stale.exists() and mine.exists() and all(k.exists() for k in kept)
    monkeypatch.setattr(pipeline, "_free_bytes", lambda folder: 32 << 20)  # a container's small /dev/shm
    stale_on_disk = tmp_path / "tmp" / f"lapsynth-{dead.pid}-{host}-jkl"  # the temp folder is swept too
    stale_on_disk.mkdir()
    got = pipeline.scratch_dir((1920, 1080))
    assert os.path.dirname(got) == str(tmp_path / "tmp") and not stale_on_disk.exists()
    assert os.path.basename(got).startswith(f"lapsynth-{os.getpid()}-{host}-")
    monkeypatch.setenv("LAPSYNTH_SHM", str(tmp_path / "absent"))
    assert os.path.dirname(pipeline.scratch_dir((452, 256))) == str(tmp_path / "tmp")
    monkeypatch.setenv("LAPSYNTH_SHM", "")
    assert os.path.dirname(pipeline.scratch_dir((452, 256))) == str(tmp_path / "tmp")
