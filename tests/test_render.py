"""End-to-end: render.py with the bpy module, tiny real renders, labels checked against the meshes."""
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from blender_addon.core.classes import LABEL_CLASSES, LABEL_IDS
from blender_addon.core.dataset import (
    FRAME_FILES,
    TRANSLATION_FORMAT,
    TRANSLATION_INDEX_DIR,
    IndexWriter,
    prepare_translations,
    read_index,
    read_translation_index,
    translation_paths,
)
from blender_addon.core.ply import read_ply
from blender_addon.core.progress import parse_progress
from blender_addon.labels import linear_to_srgb8
from conftest import MESHES, RENDER, ROOT, TINY, run_render


def _frames(root):
    out = []
    for e in read_index(root):
        meta = json.loads((root / e["meta"]).read_text())
        out.append({
            "entry": e,
            "meta": meta,
            "image": iio.imread(root / e["image"]),
            "segmentation": iio.imread(root / e["segmentation"]),
            "depth": np.load(root / e["depth"]),
            "normals": np.load(root / e["normals"]),
        })
    return out


def _meshes(patient):
    return {p.stem: read_ply(p) for p in (MESHES / patient).glob("*.ply")}


def test_dataset_layout_and_files(tiny_dataset):
    ds = json.loads((tiny_dataset / "dataset.json").read_text())
    assert ds["format_version"] == 1
    assert [c["id"] for c in ds["classes"]] == list(range(8))
    assert ds["resolution"] == "96x64" and ds["patients"] == ["patient01", "patient07"]
    frames = _frames(tiny_dataset)
    assert [(f["entry"]["patient"], f["entry"]["frame"]) for f in frames] == \
        [(p, k) for p in ("patient01", "patient07") for k in range(4)]
    for f in frames:
        assert f["image"].shape == (64, 96, 3) and f["image"].dtype == np.uint8
        assert f["segmentation"].shape == (64, 96) and f["segmentation"].dtype == np.uint8
        assert f["depth"].shape == (64, 96) and f["depth"].dtype == np.float32
        assert f["normals"].shape == (64, 96, 3) and f["normals"].dtype == np.float32
        assert set(np.unique(f["segmentation"])) <= {c[0] for c in LABEL_CLASSES}
        counts = f["meta"]["class_pixels"]
        for cid, name, _ in LABEL_CLASSES:
            assert counts[name] == int((f["segmentation"] == cid).sum())
        assert f["image"].std() > 5  # a real picture, not a blank frame
    # Patient 7 has no gallbladder, so no pixel may be labelled gallbladder.
    assert all(f["meta"]["class_pixels"]["gallbladder"] == 0 for f in frames if f["entry"]["patient"] == "patient07")
    preview = iio.imread(tiny_dataset / "preview.png")
    assert preview.shape[1] == 4 * 96 and preview.shape[0] > 3 * 64


def test_labels_agree_with_geometry(tiny_dataset):
    checked_tips = 0
    for f in _frames(tiny_dataset):
        meta, seg, depth, normals = f["meta"], f["segmentation"], f["depth"], f["normals"]
        K = np.array(meta["camera"]["K"])
        c2w = np.array(meta["camera"]["cam_to_world"])
        w2c = np.array(meta["camera"]["world_to_cam"])
        assert np.allclose(c2w @ w2c, np.eye(4), atol=1e-6)
        assert K[0, 2] == 48 and K[1, 2] == 32
        meshes = _meshes(meta["patient"])
        # Depth (planar z) of liver pixels lies within the liver's z range in the camera frame.
        liver = (seg == LABEL_IDS["liver"])
        assert liver.sum() > 0.05 * seg.size
        z = (meshes["liver"].vertices @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
        d = depth[liver]
        assert np.isfinite(d).all()
        assert d.min() >= max(z.min(), 1.0) - 1.0 and d.max() <= z.max() + 1.0
        # The liver surface hit by each pixel's central ray lies at the stored depth (independent ray cast).
        vs, us = np.nonzero(liver)
        pick = np.linspace(0, len(us) - 1, 25).astype(int)
        rays = np.stack([us[pick] + 0.5, vs[pick] + 0.5, np.ones(len(pick))], 1) @ np.linalg.inv(K).T
        dirs = rays @ c2w[:3, :3].T
        tm = trimesh.Trimesh(meshes["liver"].vertices, meshes["liver"].faces, process=False)
        locs, ray_ids, _ = tm.ray.intersects_location(np.repeat(c2w[None, :3, 3], len(pick), 0), dirs,
                                                      multiple_hits=True)
        first = np.full(len(pick), np.inf)
        for loc, r in zip(locs, ray_ids):
            first[r] = min(first[r], (w2c[:3, :3] @ loc + w2c[:3, 3])[2])
        err = np.abs(first - d[pick])
        assert np.median(err) < 1.0 and np.percentile(err, 80) < 3.0, err
        # Normals: unit length where something was hit, facing the camera.
        hit = np.isfinite(depth)
        n = normals[hit]
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-3)
        vv, uu = np.nonzero(hit)
        view = np.stack([uu + 0.5, vv + 0.5, np.ones(len(uu))], 1) @ np.linalg.inv(K).T
        facing = np.einsum("ij,ij->i", n, view) < 0
        assert facing.mean() > 0.97, facing.mean()
        # Tool tips: stored 3D point projects with K onto a tool-tip pixel when visible.
        for tool in meta["tools"]:
            tip_cam = np.array(tool["tip_camera"])
            assert np.allclose(w2c[:3, :3] @ tool["tip_world"] + w2c[:3, 3], tip_cam, atol=1e-6)
            u, v = (K @ tip_cam)[:2] / tip_cam[2]
            assert np.allclose([u, v], tool["tip_pixel"], atol=1e-6)
            if tool["tip_visible"]:
                checked_tips += 1
                win = seg[max(int(v) - 2, 0):int(v) + 3, max(int(u) - 2, 0):int(u) + 3]
                assert (win == LABEL_IDS["tool_tip"]).any()
    assert checked_tips >= 1, "no visible tool tip in the tiny data set: choose another seed"


def test_cameras_never_inside_an_organ_or_outside_the_wall(tiny_dataset):
    for f in _frames(tiny_dataset):
        meshes = _meshes(f["meta"]["patient"])
        eye = np.array(f["meta"]["camera"]["cam_to_world"])[:3, 3]
        for name, m in meshes.items():
            inside = trimesh.Trimesh(m.vertices, m.faces, process=False).contains(eye[None])[0]
            assert inside == (name == "abdominal_wall"), name


def test_same_seed_same_labels_and_shards_union_equals_full_run(tiny_dataset, tmp_path):
    out = tmp_path / "sharded"
    for i in range(3):
        run_render("--meshes", MESHES, "--out", out, "--patients", "patient01,patient07",
                   "--frames-per-scene", 4, "--seed", 7, "--shard", f"{i}/3", *TINY)
    full = read_index(tiny_dataset)
    sharded = read_index(out)
    assert [(e["patient"], e["frame"], e["seed"]) for e in sharded] == \
        [(e["patient"], e["frame"], e["seed"]) for e in full]
    assert len(list((out / "index").glob("*.jsonl"))) == 3
    for a, b in zip(full, sharded):
        for kind in ("segmentation", "depth", "normals"):
            assert (tiny_dataset / a[kind]).read_bytes() == (out / b[kind]).read_bytes(), (a, kind)
        ma = json.loads((tiny_dataset / a["meta"]).read_text())
        mb = json.loads((out / b["meta"]).read_text())
        assert ma["camera"] == mb["camera"] and ma["tools"] == mb["tools"]


def test_progress_lines_parse_with_the_panels_parser(tmp_path):
    proc = run_render("--meshes", MESHES, "--out", tmp_path / "A", "--patients", "patient07",
                      "--frames-per-scene", 2, *TINY)
    lines = [p for p in map(parse_progress, proc.stderr.splitlines()) if p is not None]
    assert [(p.what, p.done, p.total, p.unit) for p in lines] == [("frames", 1, 2, "frames"), ("frames", 2, 2, "frames")]
    assert all(p.rate > 0 for p in lines) and lines[-1].eta == "00:00:00"


def test_killed_run_resumes_to_a_complete_consistent_index(tmp_path):
    out = tmp_path / "killed"
    args = ["--meshes", MESHES, "--out", out, "--patients", "patient03", "--frames-per-scene", 6, "--seed", 3, *TINY]
    proc = subprocess.Popen([sys.executable, str(RENDER), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = out / "index" / "shard-0000-of-0001.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if index.exists() and index.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_index(out)
    assert 2 <= len(partial) < 6
    for e in partial:  # every indexed frame is complete and readable
        for kind in FRAME_FILES:
            assert (out / e[kind]).stat().st_size > 0
        json.loads((out / e["meta"]).read_text())
        iio.imread(out / e["image"])
        np.load(out / e["depth"])
    first = {e["frame"]: (out / e["segmentation"]).read_bytes() for e in partial}
    stale, young = out / "patient03" / "image" / ".tmp-killed.png", out / ".tmp-live.json"
    for t in (stale, young):  # a killed writer's temporary (an hour old), and one another shard may be writing now
        t.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    proc = run_render(*args)
    assert f"{len(partial)} done" in proc.stderr
    assert not stale.exists() and young.exists() and "removed 1 temporaries of interrupted writes" in proc.stderr
    young.unlink()
    final = read_index(out)
    assert [e["frame"] for e in final] == list(range(6))
    assert index.read_bytes().count(b"\n") == 6  # nothing indexed twice
    for e in final:
        if e["frame"] in first:
            assert (out / e["segmentation"]).read_bytes() == first[e["frame"]]
    # A third run has nothing left to do.
    assert "0 to render" in run_render(*args).stderr


def _assert_refused(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--resolution", "452by256"], ["--resolution", "452by256"]),
    (["--resolution", "4x4"], ["--resolution"]),
    (["--shard", "3/3"], ["--shard", "3/3"]),
    (["--shard", "x"], ["--shard"]),
    (["--frobnicate", "1"], ["unrecognized arguments", "--frobnicate"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--samples", "0"], ["--samples"]),
    (["--patients", "nobody"], ["nobody", "not found"]),
])
def test_bad_arguments_are_refused_and_nothing_is_written(tmp_path, args, needles):
    out = tmp_path / "out"
    proc = run_render("--meshes", MESHES, "--out", out, *args, check=False)
    _assert_refused(proc, *needles)
    assert not out.exists()


def test_bad_mesh_folders_are_refused_by_name(tmp_path):
    out = tmp_path / "out"
    _assert_refused(run_render("--meshes", tmp_path / "missing", "--out", out, check=False), "missing", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_refused(run_render("--meshes", empty, "--out", out, check=False), "no patient folders")
    broken = tmp_path / "broken" / "p1"
    broken.mkdir(parents=True)
    (broken / "liver.ply").write_bytes(b"")
    _assert_refused(run_render("--meshes", broken.parent, "--out", out, check=False), "liver.ply", "not a PLY")
    (broken / "liver.ply").write_bytes((MESHES / "patient01" / "liver.ply").read_bytes())
    (broken / "abdominal_wall.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                                b"property float y\nproperty float z\nelement face 1\n"
                                                b"property list uchar int vertex_indices\nend_header\n"
                                                b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    _assert_refused(run_render("--meshes", broken.parent, "--out", out, check=False), "abdominal_wall.ply", "degenerate")
    assert not out.exists()


def test_output_with_other_settings_is_refused_unless_overwrite(tiny_dataset, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset.rglob("*")}
    proc = run_render("--meshes", MESHES, "--out", tiny_dataset, "--patients", "patient01,patient07",
                      "--frames-per-scene", 4, "--seed", 8, *TINY, check=False)
    _assert_refused(proc, "other settings", "seed")
    assert {p: p.stat().st_mtime_ns for p in tiny_dataset.rglob("*")} == before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    proc = run_render("--meshes", MESHES, "--out", stranger, "--patients", "patient07", *TINY, check=False)
    _assert_refused(proc, "not empty")
    assert os.listdir(stranger) == ["thesis.tex"]
    # A copy of the data set with --overwrite is replaced by one with the new settings.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    (copy / "notes.txt").write_text("mine")
    # Translations of the old renders (as backend.translate lays them out) must go with them.
    prepare_translations(copy, {"format": TRANSLATION_FORMAT, "styles": 1}, overwrite=False)
    with IndexWriter(copy, (0, 1), folder=TRANSLATION_INDEX_DIR) as index:
        for e in read_index(copy):
            pngs, meta = translation_paths(e["patient"], e["frame"], 1)
            for rel in (*pngs, meta):
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(copy / e["image"], copy / rel)
            index.append({"patient": e["patient"], "frame": e["frame"], "meta": meta, "translations": pngs})
    (copy / "translation_sheet.png").write_bytes(b"sheet")
    assert len(read_translation_index(copy)) == 8
    run_render("--meshes", MESHES, "--out", copy, "--patients", "patient07", "--frames-per-scene", 1,
               "--seed", 8, *TINY, "--overwrite")
    assert [(e["patient"], e["frame"]) for e in read_index(copy)] == [("patient07", 0)]
    assert not (copy / "patient01").exists() and (copy / "notes.txt").read_text() == "mine"
    assert json.loads((copy / "dataset.json").read_text())["seed"] == 8
    assert read_translation_index(copy) == {}
    assert not any((copy / name).exists() for name in ("translation.json", "translation_index",
                                                        "translation_sheet.png", "patient07/translation"))


def test_gpu_request_never_falls_back_silently(tmp_path):
    out = tmp_path / "gpu"
    proc = run_render("--meshes", MESHES, "--out", out, "--patients", "patient07", "--frames-per-scene", 1,
                      "--device", "gpu", *TINY, check=False)
    if proc.returncode == 0:  # a machine with a GPU: the frame must say it was rendered there
        pytest.skip("a GPU is present; the CPU-only refusal cannot be tested here")
    _assert_refused(proc, "--device gpu", "no usable GPU")
    assert not out.exists()


def test_help_lists_every_option():
    proc = run_render("--help")
    for flag in ("--meshes", "--out", "--frames-per-scene", "--resolution", "--seed", "--shard", "--device",
                 "--samples", "--overwrite"):
        assert flag in proc.stdout


def test_script_arguments_in_both_invocations(monkeypatch):
    """`blender -b -P render.py -- ARGS` passes only what follows `--`; `python render.py ARGS` passes argv[1:]."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_script", RENDER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["/opt/blender/blender", "-b", "--factory-startup", "-P", str(RENDER), "--",
                                      "--meshes", "m", "--out", "o"])
    assert mod._script_args() == ["--meshes", "m", "--out", "o"]
    monkeypatch.setattr(sys, "argv", ["/opt/blender/blender", "-b", "-P", str(RENDER)])
    assert mod._script_args() == []  # no `--`: Blender's own options are not ours
    monkeypatch.setattr(sys, "argv", [str(RENDER), "--meshes", "m", "--out", "o"])
    assert mod._script_args() == ["--meshes", "m", "--out", "o"]


def test_ctrl_c_during_a_render_stops_after_that_frame(tmp_path):
    """A KeyboardInterrupt raised inside bpy's render call is swallowed by Blender; render.py must still
    stop (exit 130) after the frame in progress, with a consistent index."""
    out = tmp_path / "interrupted"
    args = ["--meshes", MESHES, "--out", out, "--patients", "patient03", "--frames-per-scene", 6, "--seed", 3,
            "--resolution", "96x64", "--samples", "64"]  # slow enough that the signal lands inside a render
    proc = subprocess.Popen([sys.executable, str(RENDER), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    index = out / "index" / "shard-0000-of-0001.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (index.exists() and index.read_bytes().count(b"\n") >= 1):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by signal 2" in err
    assert 1 <= len(read_index(out)) < 6


def test_frames_are_reported_in_order_on_the_worker_once_indexed(tmp_path):
    """pipeline.run reports each frame (on_frame) on the render worker thread, so the index's write and fsync
    never hold up the next render: once per frame, in order, after the frame's index line is written. The
    worker runs at a lower priority than the thread that renders (Linux: nice is per thread), and Python's
    garbage collector runs only between frames."""
    pytest.importorskip("bpy", reason="renders need bpy")
    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.priority import WORKER_NICE

    out, seen, nice, collecting = tmp_path / "A", [], [], []

    def on_frame(done, total, meta):
        seen.append((done, total, meta["frame"], threading.current_thread().name, len(read_index(out))))
        collecting.append(gc.isenabled())
        if sys.platform.startswith("linux"):
            nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    settings = RenderSettings(meshes=str(MESHES), out=str(out), patients="patient02", frames_per_scene=3,
                              resolution="96x64", samples=1, preview_frames=0)
    summary = pipeline.run(settings, log=lambda msg: None, on_frame=on_frame)
    assert summary.rendered == 3
    assert [x[:3] for x in seen] == [(1, 3, 0), (2, 3, 1), (3, 3, 2)]
    assert all(x[3].startswith("lapsynth-frame") for x in seen), seen
    assert [x[4] for x in seen] == [1, 2, 3]
    # no automatic garbage collection while the frames rendered (core/collector.py), back on after
    assert collecting == [False] * 3 and gc.isenabled()
    if sys.platform.startswith("linux"):
        main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert nice == [min(19, main + WORKER_NICE)] * 3, (nice, main)


def test_collections_run_between_frames_and_the_collector_is_given_back_after():
    """core/collector.py: inside the block nothing collects by itself (a full collection started at random
    walked every object of the render process), collect_young() frees cycles among young objects, and
    automatic collection is back as it was after the block, also when it raises; a caller that had it off
    keeps it off."""
    from blender_addon.core.collector import collect_young, collections_between_frames

    class Node:
        pass

    assert gc.isenabled()
    before = gc.get_count()[0]
    with collections_between_frames():
        assert not gc.isenabled()
        cycles = []
        for _ in range(5 * gc.get_threshold()[0]):  # enough allocations for several automatic collections
            n = Node()
            n.me = n
            cycles.append(n)
        assert gc.get_count()[0] >= before + 5 * gc.get_threshold()[0]  # none ran: the count only grew
        del cycles, n
        assert collect_young() >= 5 * gc.get_threshold()[0]  # the young cycles are found and freed
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with collections_between_frames():
            raise RuntimeError("a frame failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with collections_between_frames():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_numpys_blas_gets_one_thread_even_when_numpy_is_loaded_first():
    """pipeline.run calls single_threaded_blas (core/blas.py): numpy's OpenBLAS pool spun beside Cycles and
    made a 4x4 inverse in the worker take up to 8 ms. numpy is loaded before the call, as `import bpy` does."""
    code = ("import ctypes, numpy as np\n"
            "from blender_addon.core.blas import single_threaded_blas\n"
            "name = single_threaded_blas()\n"
            "paths = [l.split(None, 5)[-1].strip() for l in open('/proc/self/maps') if 'openblas' in l.lower()]\n"
            "lib = ctypes.CDLL(paths[0]) if paths else None\n"
            "get = lib and next((getattr(lib, p + 'openblas_get_num_threads' + s) for p in ('', 'scipy_') "
            "for s in ('64_', '') if hasattr(lib, p + 'openblas_get_num_threads' + s)), None)\n"
            "print(name, get() if get else None, np.allclose(np.linalg.inv(np.diag([2.0, 4, 5, 8])) @ "
            "np.diag([2.0, 4, 5, 8]), np.eye(4)))\n")
    env = {**os.environ}
    env.pop("OPENBLAS_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, threads, ok = proc.stdout.split()
    if name == "None":
        pytest.skip("this numpy has no OpenBLAS (another BLAS, or not Linux): nothing to set")
    assert "openblas" in name and threads == "1" and ok == "True"


def _image_at_gain_of(root_a, a, root_b, b):
    """Frame b's image re-exposed with frame a's auto-exposure gain (the render's brightest 3% set the gain,
    so a brighter gallbladder or darker tools change every pixel's exposure, not its colour)."""
    gain_a, gain_b = (json.loads((r / e["meta"]).read_text())["light"]["auto_exposure_gain"]
                      for r, e in ((root_a, a), (root_b, b)))
    x = iio.imread(root_b / b["image"])[..., :3] / 255.0
    linear = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return linear_to_srgb8(linear * (gain_a / gain_b))


def test_tissue_look_colours_the_gallbladder_only_and_old_data_sets_keep_their_look(tmp_path):
    """`measured` (default) renders the gallbladder pink-white as real ones look; `classic` keeps the pale
    yellow-green of data sets made before the setting, which resume only with --tissue-look classic.
    Same seed: same views and byte-identical labels, only the gallbladder's pixels change colour."""
    common = ("--meshes", MESHES, "--patients", "patient01", "--frames-per-scene", 2, "--seed", 3,
              "--view", "cholecystectomy", *TINY)
    sets = {look: tmp_path / look for look in ("measured", "classic")}
    run_render(*common, "--out", sets["measured"])  # the default
    run_render(*common, "--out", sets["classic"], "--tissue-look", "classic")
    colours = {}
    for look, root in sets.items():
        pixels = []
        for e in read_index(root):
            seg = iio.imread(root / e["segmentation"])
            image = iio.imread(root / e["image"])[..., :3].astype(float)
            assert (seg == LABEL_IDS["gallbladder"]).mean() > 0.05  # cholecystectomy views show it
            pixels.append(image[seg == LABEL_IDS["gallbladder"]])
        colours[look] = np.concatenate(pixels).mean(axis=0)
    for a, b in zip(read_index(sets["measured"]), read_index(sets["classic"])):
        assert (sets["measured"] / a["segmentation"]).read_bytes() == (sets["classic"] / b["segmentation"]).read_bytes()
        liver = iio.imread(sets["measured"] / a["segmentation"]) == LABEL_IDS["liver"]
        im_a = iio.imread(sets["measured"] / a["image"])[..., :3]
        im_b = _image_at_gain_of(sets["measured"], a, sets["classic"], b)
        assert np.abs(im_a[liver].astype(int) - im_b[liver]).mean() < 3  # the liver looks the same
    r, g, b = colours["measured"]
    assert r > 1.25 * g and b > 0.9 * g, colours  # pink: real gallbladders average sRGB (131, 88, 95)
    r, g, b = colours["classic"]
    assert g > 0.9 * r and g > b, colours
    proc = run_render(*common, "--out", sets["classic"], check=False)
    _assert_refused(proc, "tissue_look: 'classic' on disk, 'measured' asked")
    assert "0 rendered, 2 already there" in run_render(*common, "--out", sets["classic"], "--tissue-look", "classic").stderr


def test_tool_look_greys_the_instruments_only_and_old_data_sets_keep_bright_ones(tmp_path):
    """`measured` (default) renders instruments as grey metal, as bright as real ones (Endoscapes tool pixels:
    median luminance 85 of 255); `bright` keeps the near-white jaws of data sets made before the setting,
    which is not recorded in their manifest, so they resume only with --tool-look bright. Same seed: same
    views and byte-identical labels; the tissue around the instruments keeps its colour."""
    common = ("--meshes", MESHES, "--patients", "patient02", "--frames-per-scene", 3, "--seed", 5,
              "--view", "cholecystectomy", *TINY)
    sets = {look: tmp_path / look for look in ("measured", "bright")}
    run_render(*common, "--out", sets["measured"])  # the default
    run_render(*common, "--out", sets["bright"], "--tool-look", "bright")
    tips, tissue_diff = {"measured": [], "bright": []}, []
    for a, b in zip(read_index(sets["measured"]), read_index(sets["bright"])):
        seg = iio.imread(sets["measured"] / a["segmentation"])
        assert seg.tobytes() == iio.imread(sets["bright"] / b["segmentation"]).tobytes()
        for look, root, e in (("measured", sets["measured"], a), ("bright", sets["bright"], b)):
            tips[look].append(iio.imread(root / e["image"])[..., :3][seg == LABEL_IDS["tool_tip"]].mean(axis=1))
        liver = seg == LABEL_IDS["liver"]
        im_a = iio.imread(sets["measured"] / a["image"])[..., :3].astype(int)
        tissue_diff.append(np.abs(im_a[liver] - _image_at_gain_of(sets["measured"], a, sets["bright"], b)[liver]).mean())
    tip = {look: np.concatenate(v) for look, v in tips.items()}
    assert len(tip["measured"]) > 20, "no tool tip in view: pick another seed"
    assert max(tissue_diff) < 3, tissue_diff
    # A few tiny frames: the measured jaws are far darker, not yet at the 36-frame median (101 of 255).
    assert np.median(tip["bright"]) > 150 and np.median(tip["bright"]) - np.median(tip["measured"]) > 50, \
        {k: float(np.median(v)) for k, v in tip.items()}
    assert "tool_look" not in json.loads((sets["bright"] / "dataset.json").read_text())["settings"]
    proc = run_render(*common, "--out", sets["bright"], check=False)
    _assert_refused(proc, "tool_look: 'bright' on disk, 'measured' asked")
    assert "0 rendered, 3 already there" in run_render(*common, "--out", sets["bright"], "--tool-look", "bright").stderr



def test_exposure_target_scales_the_auto_exposure_gain_and_nothing_else(tmp_path):
    """--exposure-target sets the luminance the brightest 3 percent of a frame are scaled to: the same frames
    at 0.45 (the default) have exactly 0.45/0.7 of the gain at 0.7, the same labels, darker images; a data
    set made before the setting (0.7, not recorded) resumes only with 0.7."""
    common = ("--meshes", MESHES, "--patients", "patient01", "--frames-per-scene", 2, "--seed", 4, *TINY)
    sets = {t: tmp_path / str(t) for t in (0.7, 0.45)}
    run_render(*common, "--out", sets[0.7], "--exposure-target", "0.7")
    run_render(*common, "--out", sets[0.45])  # the default
    for a, b in zip(read_index(sets[0.7]), read_index(sets[0.45])):
        assert (sets[0.7] / a["segmentation"]).read_bytes() == (sets[0.45] / b["segmentation"]).read_bytes()
        gains = [json.loads((root / e["meta"]).read_text())["light"]["auto_exposure_gain"]
                 for root, e in ((sets[0.7], a), (sets[0.45], b))]
        assert np.isclose(gains[1] / gains[0], 0.45 / 0.7, rtol=1e-6), gains
        darker = _image_at_gain_of(sets[0.45], b, sets[0.7], a).astype(int)
        unclipped = (iio.imread(sets[0.7] / a["image"])[..., :3] < 250).all(axis=-1)  # 255 at 0.7 is brighter below
        assert np.abs(darker - iio.imread(sets[0.45] / b["image"])[..., :3])[unclipped].mean() < 1.0
    assert "exposure_target" not in json.loads((sets[0.7] / "dataset.json").read_text())["settings"]
    assert json.loads((sets[0.45] / "dataset.json").read_text())["settings"]["exposure_target"] == 0.45
    _assert_refused(run_render(*common, "--out", sets[0.7], "--exposure-target", "0.5", check=False),
                    "exposure_target: 0.7 on disk, 0.5 asked")
    for bad in ("0", "1.5"):
        proc = run_render(*common, "--out", tmp_path / "bad", "--exposure-target", bad, check=False)
        _assert_refused(proc, "--exposure-target")
        assert not (tmp_path / "bad").exists()


def test_mesh_fingerprints_count_organ_files_only_and_the_old_rule_still_resumes(tmp_path, tiny_dataset):
    """A killed writer's .tmp-*.ply or a source CT beside the organs does not change a patient; a data set
    recorded under the old rule (every *.ply) still resumes; changed meshes are refused, also for a patient
    without frames (another shard may be rendering its first ones)."""
    import shutil

    from blender_addon.core.dataset import DatasetError
    from blender_addon.pipeline import patient_fingerprint, prepare_output

    patient = tmp_path / "meshes" / "patient01"
    shutil.copytree(MESHES / "patient01", patient)
    fp = patient_fingerprint(patient)
    assert fp == patient_fingerprint(patient, organs_only=False)  # organ files only: the two rules agree
    (patient / ".tmp-k1ll3d.ply").write_bytes(b"ply\nformat binary_")
    (patient / "liver_original_ct.ply").write_bytes((patient / "liver.ply").read_bytes())
    assert patient_fingerprint(patient) == fp and patient_fingerprint(patient, organs_only=False) != fp
    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    manifest = json.loads((data / "dataset.json").read_text())
    recorded = manifest["fingerprints"]
    changed = {**manifest, "fingerprints": {**recorded, "patient01": "f" * 16}}
    with pytest.raises(DatasetError, match="patient patient01: meshes changed"):
        prepare_output(data, json.loads(json.dumps(changed)), overwrite=False)
    prepare_output(data, json.loads(json.dumps(changed)), overwrite=False,  # the old rule's hash still matches
                   legacy_fingerprints={"patient01": recorded["patient01"]})
    now = json.loads((data / "dataset.json").read_text())["fingerprints"]
    assert now == {**recorded, "patient01": "f" * 16}  # from then on the new rule's hash is recorded
    for f in (data / "index").glob("*.jsonl"):  # as if patient01 had no frame yet
        f.write_text("".join(line + "\n" for line in f.read_text().splitlines() if '"patient01"' not in line))
    with pytest.raises(DatasetError, match="patient patient01: meshes changed"):
        prepare_output(data, {**manifest, "fingerprints": {**recorded, "patient01": "e" * 16}}, overwrite=False)
    assert json.loads((data / "dataset.json").read_text())["fingerprints"] == now


def test_patient_discovery_skips_unreadable_folders_and_names_each_patient_once(tmp_path, monkeypatch):
    """A folder the user may not enter (a disk's lost+found) is not a patient, not a traceback; --patients
    naming one twice renders it once; an unreadable mesh file given to import is a one-line error."""
    import pathlib
    import shutil

    from backend.patients.reading import check_source
    from blender_addon.core.geometry import MeshError
    from blender_addon.pipeline import discover_patients

    meshes = tmp_path / "meshes"
    shutil.copytree(MESHES / "patient01", meshes / "patient01")
    (meshes / "lost+found").mkdir()
    is_file = pathlib.Path.is_file

    def no_entry(path):  # as for a non-root user (Path.is_file raises on EACCES in Python 3.11)
        if "lost+found" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(pathlib.Path, "is_file", no_entry)
    assert discover_patients(meshes, "") == ["patient01"]
    assert discover_patients(meshes, "patient01, patient01,patient01") == ["patient01"]
    with pytest.raises(MeshError, match="cannot be read") as err:
        check_source(str(meshes / "lost+found" / "liver.stl"))
    assert str(meshes / "lost+found") in str(err.value)


def test_patients_whose_meshes_sampling_cannot_use_are_refused_up_front(tmp_path):
    """An open or inward-facing organ, or a wall that does not hold the liver, failed only when the camera
    sampling gave up, after dataset.json recorded the patient: now refused by validate_patients, by file."""
    import shutil

    from blender_addon.core.dataset import DatasetError
    from blender_addon.core.geometry import Mesh
    from blender_addon.core.ply import read_ply, write_ply
    from blender_addon.pipeline import validate_patients

    meshes = tmp_path / "meshes"
    for name, organ, change, why in [
            ("inward", "abdominal_wall", lambda m: Mesh(m.vertices, m.faces[:, ::-1]), "faces inward"),
            ("open", "liver", lambda m: Mesh(m.vertices, m.faces[1:]), "not watertight"),
            ("small", "abdominal_wall", lambda m: Mesh((m.vertices - m.vertices.mean(0)) * 0.05 + [0, 0, 500], m.faces),
             "liver is not inside")]:
        shutil.copytree(MESHES / "patient01", meshes / name)
        write_ply(meshes / name / f"{organ}.ply", change(read_ply(meshes / name / f"{organ}.ply")))
        with pytest.raises(DatasetError, match=why) as err:
            validate_patients(meshes, [name])
        assert str(meshes / name) in str(err.value) and "\n" not in str(err.value)
    assert set(validate_patients(MESHES, ["patient01", "patient07"])) == {"patient01", "patient07"}


def test_a_folder_holding_only_a_killed_writers_temporary_is_empty(tmp_path):
    """A run killed while writing the first dataset.json leaves a .tmp-*.json: the folder still takes a data
    set (the temporary is left alone: it may be another shard's, about to be renamed); anything else in it
    does not."""
    from blender_addon.core.dataset import DatasetError, dataset_manifest
    from blender_addon.pipeline import prepare_output

    out = tmp_path / "A"
    out.mkdir()
    (out / ".tmp-k1ll3d.json").write_text('{"format_ver')
    manifest = dataset_manifest({"resolution": [96, 64], "seed": 1, "frames_per_scene": 2}, ["patient01"], {})
    manifest["fingerprints"] = {"patient01": "0" * 16}
    prepare_output(out, dict(manifest), overwrite=False)
    assert json.loads((out / "dataset.json").read_text())["patients"] == ["patient01"]
    assert (out / ".tmp-k1ll3d.json").is_file()
    other = tmp_path / "B"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty"):
        prepare_output(other, dict(manifest), overwrite=False)
