"""Video sequences: smooth camera and tool motion within a clip, and the optical flow it causes (numpy).

With `--sequence-length N --fps F`, frames k = c*N .. c*N+N-1 of a patient form clip c. The clip's
scene (camera, tools, light, materials, gallbladder retraction, field of view) is drawn once, as one
frame is drawn otherwise, from the clip's own seed; then every moving part follows a smooth path:

- the laparoscope's eye and its aimed point each move by a sum of one sinusoid per axis,
  offset(t) = A * (sin(w t + p) - sin(p)), so offset(0) = 0; with |A_i| <= vmax / (w sqrt 3) and
  w <= amax / vmax, the speed stays <= CAMERA_SPEED (mm/s) and the acceleration <= CAMERA_ACCEL
  (mm/s^2) at every instant (per axis |A w| <= vmax/sqrt3, |A w^2| <= amax/sqrt3);
- each tool tip moves the same way (TOOL_SPEED, TOOL_ACCEL) while its shaft keeps pivoting about the
  same trocar point, as a real instrument in its port; jaw opening and roll stay constant in a clip,
  so every part of the scene moves rigidly and the flow below is exact. A grasper holding the
  gallbladder's fundus stays still (the gallbladder would have to move with it).
- organs are static (no breathing), and so is the light relative to the camera.

A path whose camera would leave free space, or whose tools would cross an organ, at any frame of
the clip is scaled down by halves (deterministically) until it does not; in the end it stands still.

Optical flow (forward, frame t -> t+1, in pixels per frame): flow = (u', v') - (u, v), with u to the
right and v down, so a camera moving to its right (+x in the OpenCV camera frame) gives negative u-flow
on static tissue. NaN where there is no surface (depth inf) or outside the field of view (depth NaN).
Occlusion is not marked: a point hidden in the next frame still gets the flow of where it went.
Two sources, chosen by `--flow`:

- `vector` (the default): Cycles' motion-vector pass. scene.py keys the next frame's camera and tool
  poses on the frame after the rendered one, Cycles projects every shaded point at both times, and
  `flow_from_vector` turns the pass into the convention above. At 1 sample per pixel it is the motion
  of the very surface point the labels show; with more samples it is their average, so pixels on an
  edge between two moving things get a blend.
- `geometry` (data sets made before it): `optical_flow` rebuilds each pixel's surface point from the
  planar depth label, moves it with the object it belongs to (organs: not at all; tools: with that
  tool's rigid motion) and projects it with the next frame's camera.

With `vector` both are computed and each frame's meta records their median disagreement
(`flow_vs_geometry_px`; 0.0001 px on 16 frames at 452x256, the largest 0.005 px), a check that the
keyed motion is the motion drawn here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .core.geometry import look_at, normalize, rotation_about, segment_hits
from .sampling import HEAD, ORGANS, Anatomy, CameraDraw, ToolDraw, scope_axis_of

CAMERA_SPEED = 15.0  # mm/s: a laparoscope held by an assistant drifts and follows slowly
CAMERA_ACCEL = 30.0  # mm/s^2
TOOL_SPEED = 30.0  # mm/s: instruments move faster than the camera
TOOL_ACCEL = 60.0  # mm/s^2
CLIP_SEED_TAG = 0x5E0  # spawn-key tag of a clip's seed (frames use (patient, frame), clips (patient, clip, tag))


@dataclass
class Path3:
    """offset(t) = amp * (sin(omega t + phase) - sin(phase)), per axis (mm, s)."""

    amp: np.ndarray  # (3,)
    omega: np.ndarray  # (3,) rad/s
    phase: np.ndarray  # (3,)

    def offset(self, t: float) -> np.ndarray:
        return self.amp * (np.sin(self.omega * t + self.phase) - np.sin(self.phase))

    def velocity(self, t: float) -> np.ndarray:
        return self.amp * self.omega * np.cos(self.omega * t + self.phase)

    def acceleration(self, t: float) -> np.ndarray:
        return -self.amp * self.omega ** 2 * np.sin(self.omega * t + self.phase)

    def scaled(self, factor: float) -> "Path3":
        return Path3(self.amp * factor, self.omega, self.phase)


def random_path(rng: np.random.Generator, vmax: float, amax: float) -> Path3:
    """A path with speed <= vmax and acceleration <= amax at every t (see the module docstring)."""
    omega = rng.uniform(0.3, 1.0, 3) * (amax / vmax)
    amp = rng.uniform(-1.0, 1.0, 3) * vmax / (omega * np.sqrt(3))
    return Path3(amp, omega, rng.uniform(0, 2 * np.pi, 3))


@dataclass
class ClipMotion:
    eye: Path3
    target: Path3
    tips: list[Path3]
    scale: float = 1.0  # the factor the paths were scaled by to stay valid

    def record(self) -> dict:
        return {"scale": self.scale, "camera_speed_max_mm_s": CAMERA_SPEED * self.scale,
                "tool_speed_max_mm_s": TOOL_SPEED * self.scale}


def camera_at(camera: CameraDraw, motion: ClipMotion, t: float) -> CameraDraw:
    eye = camera.cam_to_world[:3, 3] + motion.eye.offset(t)
    target = camera.target + motion.target.offset(t)
    cam = look_at(eye, target, HEAD)
    return CameraDraw(cam, camera.horizontal_fov, camera.optics, scope_axis_of(cam, camera.optics), target)


def tool_at(tool: ToolDraw, path: Path3, t: float) -> ToolDraw:
    """The tool with its tip moved along `path`, its shaft still through the trocar, roll kept."""
    tip = tool.tip + path.offset(t)
    axis = normalize(tip - tool.trocar)
    old = tool.pose[:3, 2]
    # The rotation taking the old shaft axis to the new one, applied to the whole frame (keeps the roll).
    c = np.cross(old, axis)
    s = np.linalg.norm(c)
    R = rotation_about(c / s, np.arctan2(s, old @ axis)) if s > 1e-12 else np.eye(3)
    pose = np.eye(4)
    pose[:3, :3] = R @ tool.pose[:3, :3]
    pose[:3, 3] = tip
    return replace(tool, pose=pose)


def clip_motion(rng: np.random.Generator, anatomy: Anatomy, camera: CameraDraw, tools: list[ToolDraw],
                times: np.ndarray) -> ClipMotion:
    """Draw the paths, then halve them until the camera stays in free space and no shaft crosses an organ
    at any of `times` (a pure function of rng and the scene)."""
    motion = ClipMotion(random_path(rng, CAMERA_SPEED, CAMERA_ACCEL), random_path(rng, CAMERA_SPEED, CAMERA_ACCEL),
                        [random_path(rng, TOOL_SPEED, TOOL_ACCEL) for _ in tools])
    # A tool holding tissue stays put: the tissue would have to move with it.
    motion.tips = [p.scaled(0.0) if t.holds else p for p, t in zip(motion.tips, tools)]
    for halving in range(6):
        scale = 0.5 ** halving
        m = ClipMotion(motion.eye.scaled(scale), motion.target.scaled(scale),
                       [p.scaled(scale) for p in motion.tips], scale)
        if _valid(anatomy, camera, tools, m, times):
            return m
    return ClipMotion(motion.eye.scaled(0.0), motion.target.scaled(0.0), [p.scaled(0.0) for p in motion.tips], 0.0)


def _valid(anatomy: Anatomy, camera: CameraDraw, tools: list[ToolDraw], m: ClipMotion, times: np.ndarray) -> bool:
    eyes = np.array([camera.cam_to_world[:3, 3] + m.eye.offset(t) for t in times])
    if not anatomy.in_free_space(eyes, organ_margin=4.0, wall_margin=4.0).all():
        return False
    for tool, path in zip(tools, m.tips):
        if not path.amp.any():
            continue
        for t in times[1:]:
            moved = tool_at(tool, path, t)
            stop = moved.tip
            if any(segment_hits(anatomy.meshes[n], moved.trocar, stop) for n in ORGANS if n in anatomy.meshes):
                return False
    return True


# ----------------------------------------------------------------------------- optical flow

def optical_flow(depth: np.ndarray, seg: np.ndarray, K: np.ndarray, cam_now: np.ndarray, cam_next: np.ndarray,
                 tools_now: list[ToolDraw], tools_next: list[ToolDraw], tool_ids=(6, 7)) -> np.ndarray:
    """(H, W, 2) float32 forward flow in pixels (du, dv); see the module docstring. cam_*: 4x4
    camera-to-world (OpenCV axes, mm). A tool pixel moves with the tool whose shaft axis passes
    closest to its surface point."""
    h, w = depth.shape
    flow = np.full((h, w, 2), np.nan, np.float32)
    valid = np.isfinite(depth)
    if not valid.any():
        return flow
    v, u = np.nonzero(valid)
    d = depth[v, u].astype(np.float64)
    rays = np.stack([u + 0.5, v + 0.5, np.ones_like(d)], 1) @ np.linalg.inv(K).T
    pc = rays * d[:, None]
    pw = pc @ cam_now[:3, :3].T + cam_now[:3, 3]
    moved = pw.copy()
    is_tool = np.isin(seg[v, u], tool_ids)
    if is_tool.any() and tools_now:
        pt = pw[is_tool]
        dist = []
        for tool in tools_now:  # distance of each point to the tool's axis segment (tip back along the shaft)
            rel = pt - tool.tip
            along = np.clip(rel @ tool.pose[:3, 2], -1e4, 0.0)
            dist.append(np.linalg.norm(rel - along[:, None] * tool.pose[:3, 2], axis=1))
        which = np.argmin(np.stack(dist), axis=0)
        out = pt.copy()
        for i, (a, b) in enumerate(zip(tools_now, tools_next)):
            sel = which == i
            if sel.any():
                rigid = b.pose @ np.linalg.inv(a.pose)
                out[sel] = pt[sel] @ rigid[:3, :3].T + rigid[:3, 3]
        moved[is_tool] = out
    world_to_next = np.linalg.inv(cam_next)
    pn = moved @ world_to_next[:3, :3].T + world_to_next[:3, 3]
    proj = pn @ K.T
    ahead = proj[:, 2] > 1e-6
    uv = np.full((len(d), 2), np.nan)
    uv[ahead] = proj[ahead, :2] / proj[ahead, 2:3] - 0.5
    flow[v, u, 0] = uv[:, 0] - u
    flow[v, u, 1] = uv[:, 1] - v
    return flow



def flow_from_vector(vector: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 forward flow (du, dv) from Cycles' vector pass ((H, W, 4), rows top first as exr.py
    reads them), in the convention above. scene.py keys the next frame's poses on the frame after the
    rendered one and this frame's on the one before, so the pass's last two channels hold where each
    surface point is now minus where it is next, in Blender's raster (x right, y up): du = -Z, dv = +W;
    its first two (the motion from the frame before) are zero. Checked against a known camera move
    (tests/test_motion.py). NaN where there is no surface or outside the field of view (depth not finite)."""
    flow = np.stack([-vector[..., 2], vector[..., 3]], axis=-1).astype(np.float32)
    flow[~np.isfinite(depth)] = np.nan
    return flow


def flow_agreement(flow: np.ndarray, reference: np.ndarray) -> float | None:
    """Median end-point distance (px) between two flows over the pixels where both are defined."""
    both = np.isfinite(flow).all(axis=-1) & np.isfinite(reference).all(axis=-1)
    if not both.any():
        return None
    return round(float(np.median(np.linalg.norm(flow[both] - reference[both], axis=-1))), 4)
