"""Video sequences (blender_addon/motion.py): bounded smooth motion, exact optical flow, resumable clips."""
import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest

from blender_addon.config import RenderSettings
from blender_addon.core.dataset import read_index
from blender_addon.core.errors import ConfigError
from blender_addon.core.geometry import intrinsics, normalize
from blender_addon.motion import CAMERA_ACCEL, CAMERA_SPEED, optical_flow, random_path, tool_at
from blender_addon.sampling import ToolDraw
from conftest import MESHES, RENDER, ROOT, TINY, run_render


def test_paths_start_at_zero_and_respect_speed_and_acceleration_bounds():
    rng = np.random.default_rng(0)
    ts = np.linspace(0, 30, 601)
    for _ in range(20):
        p = random_path(rng, CAMERA_SPEED, CAMERA_ACCEL)
        assert np.allclose(p.offset(0.0), 0)
        speed = max(np.linalg.norm(p.velocity(t)) for t in ts)
        accel = max(np.linalg.norm(p.acceleration(t)) for t in ts)
        assert speed <= CAMERA_SPEED + 1e-9 and accel <= CAMERA_ACCEL + 1e-9
        # The analytic velocity is the derivative of the offset (the bounds are about the real motion).
        assert np.allclose((p.offset(1.0 + 1e-6) - p.offset(1.0 - 1e-6)) / 2e-6, p.velocity(1.0), atol=1e-4)


def _tool(tip, trocar):
    axis = normalize(np.asarray(tip, float) - trocar)
    x = normalize(np.cross(axis, [0, 0, 1.0]))
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, np.cross(axis, x), axis, tip
    return ToolDraw("grasper", pose, np.asarray(trocar, float), 10.0)


def test_flow_of_a_pure_camera_translation_is_the_expected_pixel_shift():
    """A plane 100 mm in front; the camera moves 2 mm to its right (+x) and 1 mm down (+y): every static
    pixel moves by -fx * 2 / 100 in u and -fy * 1 / 100 in v."""
    w, h = 96, 64
    K = intrinsics(w, h, 80.0)
    depth = np.full((h, w), 100.0, np.float32)
    depth[0, 0] = np.inf  # no surface: no flow
    seg = np.ones((h, w), np.uint8)
    now = np.eye(4)
    nxt = np.eye(4)
    nxt[:3, 3] = [2.0, 1.0, 0.0]
    flow = optical_flow(depth, seg, K, now, nxt, [], [])
    assert flow.shape == (h, w, 2) and flow.dtype == np.float32
    assert np.isnan(flow[0, 0]).all()
    assert np.allclose(flow[1:, 1:, 0], -K[0, 0] * 2 / 100, atol=1e-4)
    assert np.allclose(flow[1:, 1:, 1], -K[1, 1] * 1 / 100, atol=1e-4)
    # Moving towards the plane: flow points away from the image centre, zero at the principal point.
    nxt = np.eye(4)
    nxt[2, 3] = 10.0
    flow = optical_flow(np.full((h, w), 100.0, np.float32), seg, K, now, nxt, [], [])
    assert flow[h // 2, -1, 0] > 0 and flow[h // 2, 0, 0] < 0 and flow[0, w // 2, 1] < 0
    assert np.allclose(flow[h // 2 - 1: h // 2 + 1, w // 2 - 1: w // 2 + 1], 0, atol=0.2)


def test_tool_pixels_move_with_their_tool_and_shafts_pivot_at_the_trocar():
    w, h = 96, 64
    K = intrinsics(w, h, 80.0)
    tool = _tool([0.0, 0.0, 80.0], [0.0, -300.0, 0.0])
    moved = tool_at(tool, type("P", (), {"offset": staticmethod(lambda t: np.array([3.0, 0.0, 0.0]))})(), 1.0)
    assert np.allclose(moved.tip, [3.0, 0.0, 80.0])
    axis = moved.pose[:3, 2]
    assert np.allclose(axis, normalize(moved.tip - tool.trocar))  # still through the same trocar
    assert np.isclose(moved.pose[:3, 0] @ axis, 0) and np.isclose(np.linalg.det(moved.pose[:3, :3]), 1)
    # A tool pixel (its tip, seen straight on) moves by the tool's motion; a tissue pixel does not move.
    depth = np.full((h, w), 150.0, np.float32)
    seg = np.ones((h, w), np.uint8)
    v, u = h // 2, w // 2
    depth[v, u], seg[v, u] = 80.0, 7
    flow = optical_flow(depth, seg, K, np.eye(4), np.eye(4), [tool], [moved])
    assert np.allclose(flow[0, 0], 0) and np.isclose(flow[v, u, 0], K[0, 0] * 3 / 80, atol=0.05)


def test_sequence_settings_are_checked():
    base = dict(meshes="m", out="o")
    with pytest.raises(ConfigError, match="--sequence-length 0"):
        RenderSettings(**base, sequence_length=0).validate()
    with pytest.raises(ConfigError, match="--fps 0.0: must be > 0"):
        RenderSettings(**base, sequence_length=4, fps=0.0).validate()
    assert "sequence_length" not in RenderSettings(**base).content()
    # Where the flow comes from is recorded for clips only, and not for the flow of data sets made before it.
    assert "flow" not in RenderSettings(**base).content()
    assert RenderSettings(**base, sequence_length=4).content()["flow"] == "vector"
    assert "flow" not in RenderSettings(**base, sequence_length=4, flow="geometry").content()
    with pytest.raises(ConfigError, match="--flow 'optical': choose one of vector, geometry"):
        RenderSettings(**base, flow="optical").validate()


def test_cycles_vector_pass_gives_the_flow_of_a_known_camera_and_tool_move(tmp_path):
    """A real render with Cycles' vector pass: the laparoscope moves 2 mm to its right and 1 mm down, one tool
    1.5 mm along the camera's x axis. Static tissue must move by (-fx * 2 / Z, -fy * 1 / Z) pixels (Z the
    depth label), and tool pixels as the geometric flow moves them."""
    pytest.importorskip("bpy", reason="renders need bpy")
    from dataclasses import replace

    from blender_addon.engine import configure_cycles, render_passes, use_vector_pass
    from blender_addon.labels import depth_mm, segmentation_from_index
    from blender_addon.motion import flow_from_vector
    from blender_addon.pipeline import draw_frame
    from blender_addon.scene import SCENE_TO_MM, PatientScene

    w, h = 96, 64
    settings = RenderSettings(meshes=str(MESHES), out=str(tmp_path), resolution=f"{w}x{h}")
    scene = PatientScene(MESHES / "patient02", max_tools=settings.max_tools)
    configure_cycles(scene.scene, samples=1, denoise=False)
    use_vector_pass(scene.scene, True)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = w, h
    d = next(d for seed in range(50) if (d := draw_frame(np.random.default_rng(seed), scene, settings)).tools)
    cam = d.camera.cam_to_world
    nxt = cam.copy()
    nxt[:3, 3] += cam[:3, :3] @ [2.0, 1.0, 0.0]
    pose = d.tools[0].pose.copy()
    pose[:3, 3] += cam[:3, 0] * 1.5
    next_tools = [replace(d.tools[0], pose=pose), *d.tools[1:]]
    scene.pose(d.camera, d.light, d.tools, d.materials, 1, d.retraction, (replace(d.camera, cam_to_world=nxt), next_tools))
    passes = render_passes(scene.scene, str(tmp_path / "passes.exr"))
    depth = depth_mm(passes["depth"], SCENE_TO_MM)
    seg = segmentation_from_index(passes["index"])
    flow = flow_from_vector(passes["vector"], depth)
    assert flow.shape == (h, w, 2) and flow.dtype == np.float32
    assert np.array_equal(np.isnan(flow[..., 0]), ~np.isfinite(depth))
    K = d.camera.K(w, h)
    tissue = np.isfinite(depth) & (seg < 6)
    assert tissue.mean() > 0.3
    expected = np.stack([-K[0, 0] * 2 / depth, -K[1, 1] * 1 / depth], -1)
    err = np.linalg.norm(flow[tissue] - expected[tissue], axis=-1)
    assert np.median(err) < 0.01 and np.percentile(err, 95) < 0.05, (np.median(err), np.percentile(err, 95))
    tool = np.isfinite(depth) & np.isin(seg, (6, 7))
    if tool.sum() > 20:
        geometric = optical_flow(depth, seg, K, cam, nxt, d.tools, next_tools)
        err = np.linalg.norm(flow[tool] - geometric[tool], axis=-1)
        assert np.median(err) < 0.05, np.median(err)
    # Without motion nothing is keyed and the pass says so; the keyed frames left no actions behind.
    import bpy

    scene.pose(d.camera, d.light, d.tools, d.materials, 1, d.retraction)
    still = render_passes(scene.scene, str(tmp_path / "passes.exr"))
    assert np.abs(still["vector"]).max() < 1e-4
    assert len(bpy.data.actions) == 0


def _rendered(root):
    return {(e["patient"], e["frame"]): (iio.imread(root / e["image"]).tobytes(), np.load(root / e["flow"]).tobytes())
            for e in read_index(root)}


def test_rendered_clip_flow_is_consistent_and_resuming_gives_the_same_frames(tmp_path):
    args = ["--meshes", MESHES, "--patients", "patient02", "--sequence-length", 3, "--fps", 5, "--seed", 4, *TINY]
    full = tmp_path / "full"
    run_render("--out", full, "--frames-per-scene", 6, *args)
    entries = read_index(full)
    assert all("flow" in e for e in entries)
    metas = [json.loads((full / e["meta"]).read_text()) for e in entries]
    assert [m["sequence"]["clip"] for m in metas] == [0, 0, 0, 1, 1, 1]
    # Within a clip the laparoscope moves at most CAMERA_SPEED / fps per frame.
    eyes = [np.array(m["camera"]["cam_to_world"])[:3, 3] for m in metas]
    for a, b in ((0, 1), (1, 2), (3, 4), (4, 5)):
        assert np.linalg.norm(eyes[b] - eyes[a]) <= CAMERA_SPEED / 5 + 1e-6
    # Flow carries each tissue pixel to where the same class is in the next frame (pixels inside a class
    # region, 3x3, and not covered by a tool there: class borders blur with rounding, tools occlude).
    seg0 = iio.imread(full / entries[0]["segmentation"])
    seg1 = iio.imread(full / entries[1]["segmentation"])
    flow = np.load(full / entries[0]["flow"])
    h, w = seg0.shape
    pad = np.pad(seg0, 1, mode="edge")
    interior = np.ones_like(seg0, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == seg0
    v, u = np.nonzero(np.isfinite(flow[..., 0]) & (seg0 < 6) & interior)
    u2 = np.round(u + flow[v, u, 0]).astype(int)
    v2 = np.round(v + flow[v, u, 1]).astype(int)
    keep = (u2 >= 0) & (u2 < w) & (v2 >= 0) & (v2 < h)
    keep[keep] &= seg1[v2[keep], u2[keep]] < 6
    assert keep.mean() > 0.7
    assert (seg1[v2[keep], u2[keep]] == seg0[v[keep], u[keep]]).mean() > 0.99
    assert np.abs(flow[v, u]).max() > 0.05  # the camera did move
    # The flow is Cycles' vector pass, and it agrees with the flow rebuilt from depth and poses.
    assert all(m["sequence"]["flow"] == "vector" for m in metas)
    assert max(m["sequence"]["flow_vs_geometry_px"] for m in metas) < 0.05
    # Killed (kill -9) after two frames, in the middle of clip 0, then resumed: the same frames as the
    # uninterrupted run.
    part = tmp_path / "part"
    cmd = [sys.executable, str(RENDER), "--out", str(part), "--frames-per-scene", "6", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = part / "index" / "shard-0000-of-0001.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (index.exists() and index.read_bytes().count(b"\n") >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(read_index(part)) < 6
    run_render("--out", part, "--frames-per-scene", 6, *args)
    assert _rendered(part) == _rendered(full)
    # A frame whose flow file went missing is not finished: rendered again, the same.
    (part / read_index(part)[4]["flow"]).unlink()
    run_render("--out", part, "--frames-per-scene", 6, *args)
    assert _rendered(part) == _rendered(full)


def test_a_lifted_clip_keeps_its_lift_and_its_flow_agrees_with_the_geometry(tmp_path):
    """Cholecystectomy clips: the lift is drawn once per clip (every frame records the same one), and the
    lifted organs, re-posed each frame, add no motion of their own to Cycles' vector pass: it agrees
    with the flow rebuilt from depth and the camera and tool moves."""
    out = tmp_path / "clip"
    run_render("--out", out, "--meshes", MESHES, "--patients", "patient02", "--view", "cholecystectomy",
               "--sequence-length", 3, "--fps", 5, "--frames-per-scene", 3, "--seed", 1, *TINY)
    metas = [json.loads((out / e["meta"]).read_text()) for e in read_index(out)]
    lifts = [m.get("gallbladder_retraction", {}).get("lift") for m in metas]
    assert lifts[0] is not None and all(lift == lifts[0] for lift in lifts)
    assert max(m["sequence"]["flow_vs_geometry_px"] for m in metas) < 0.05
