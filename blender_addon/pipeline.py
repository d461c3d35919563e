"""Render a data set: validate everything, then render the shard's missing frames, resumably.

Called by render.py (command line, headless) and by the add-on's operators; both pass a
validated RenderSettings. Every frame's files are written to temporary names and renamed, the
meta JSON last, and only then is the frame appended to the index.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

import numpy as np

from .config import RenderSettings
from .core import __version__, png
from .core.blas import single_threaded_blas
from .core.classes import OUTSIDE_FOV, overlay_picture
from .core.collector import collect_young, collections_between_frames
from .core.dataset import (
    FORMAT_VERSION,
    FRAME_FILES,
    ORGAN_FILES,
    PREVIEW,
    DatasetError,
    FrameKey,
    IndexWriter,
    all_frames,
    dataset_manifest,
    finished_frames,
    manifest_conflicts,
    parse_shard,
    plain_name,
    read_index,
    remove_dataset,
    shard_frames,
)
from .core.files import atomic_write_bytes, atomic_write_json, check_output_dir, npy_bytes, sweep_temporaries
from .core.priority import WORKER_NICE, lower_this_thread
from .core.progress import progress_line
from .core.seeds import derive_seed, frame_seed
from .labels import (
    auto_exposure_gain,
    class_pixel_counts,
    depth_mm,
    depth_picture,
    linear_to_srgb8,
    normals_picture,
    normals_to_camera,
    preview_sheet,
    segmentation_from_index,
    tip_visibility,
)
from .motion import CLIP_SEED_TAG, camera_at, clip_motion, flow_agreement, flow_from_vector, optical_flow, tool_at
from .sampling import (
    CameraDraw,
    LightDraw,
    MaterialDraw,
    ToolDraw,
    sample_camera,
    sample_light,
    sample_materials,
    sample_tools,
)
from .views import (
    FUNDUS_GRASPER_SHARE,
    NO_WORKING_TOOL_SHARE,
    FovDraw,
    Retraction,
    fov_masks,
    frame_view,
    sample_cholecystectomy_camera,
    sample_fov,
    sample_fundus_grasper,
)


@dataclass
class RunSummary:
    total: int  # frames of this shard
    skipped: int  # already finished before this run
    rendered: int
    resampled_views: int
    seconds: float


def discover_patients(meshes_dir: Path, wanted: str) -> list[str]:
    if not meshes_dir.is_dir():
        raise DatasetError(f"--meshes {meshes_dir}: folder not found")
    # Hidden folders are not patients (a data set cannot name them: core/dataset.plain_name); neither are
    # folders this user may not read (a disk's lost+found).
    try:
        found = sorted(p.name for p in meshes_dir.iterdir() if not p.name.startswith(".") and _is_patient(p))
    except OSError as e:
        raise DatasetError(f"--meshes {meshes_dir}: cannot be read ({e.strerror})") from None
    if wanted:
        names = list(dict.fromkeys(n.strip() for n in wanted.split(",") if n.strip()))  # once each
        if not names:
            raise DatasetError(f"--patients {wanted!r}: names no patient (leave it out for all in {meshes_dir})")
        missing = [n for n in names if n not in found]
        if missing:
            raise DatasetError(f"--patients: {', '.join(missing)} not found in {meshes_dir} "
                               f"(patients there: {', '.join(found) or 'none'})")
        found = sorted(names)
    if not found:
        raise DatasetError(f"--meshes {meshes_dir}: no patient folders with a liver.ply inside")
    odd = [n for n in found if not plain_name(n)]
    if odd:  # its frames could be rendered but never read back (read_index refuses the name)
        raise DatasetError(f"--meshes {meshes_dir}: patient folder {odd[0]!r} has a name a data set cannot hold "
                           f"(a backslash); rename it")
    return found


def _is_patient(folder: Path) -> bool:
    try:
        return folder.is_dir() and (folder / "liver.ply").is_file()
    except PermissionError:
        return False


def patients_for_view(meshes_dir: Path, patients: list[str], view: str, named: bool, log) -> list[str]:
    """Cholecystectomy views need a gallbladder: patients without one are left out with a note, or refused
    when the user named them in --patients."""
    if view != "cholecystectomy":
        return patients
    without = [p for p in patients if not (meshes_dir / p / "gallbladder.ply").is_file()]
    if without and named:
        raise DatasetError(f"--view cholecystectomy: {', '.join(without)} in --patients ha"
                           f"{'s' if len(without) == 1 else 've'} no gallbladder.ply; leave "
                           f"{'it' if len(without) == 1 else 'them'} out or use --view mixed")
    kept = [p for p in patients if p not in without]
    if not kept:
        raise DatasetError(f"--view cholecystectomy: no patient in {meshes_dir} has a gallbladder.ply")
    if without:
        log(f"--view cholecystectomy: leaving out {', '.join(without)} (no gallbladder)")
    return kept


def patient_fingerprint(patient_dir: Path, organs_only: bool = True) -> str:
    """Hash of a patient's meshes: a data set must not silently mix two versions of a patient. Only the organ
    files count (a killed writer's .tmp-*.ply or a source CT kept beside them is not the patient);
    organs_only=False is the rule of data sets made before 2026-11-28 (every *.ply), still accepted."""
    files = (sorted(patient_dir.glob("*.ply")) if not organs_only else
             [p for p in (patient_dir / f"{o}.ply" for o in sorted(ORGAN_FILES)) if p.is_file()])
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


CHECK_NAMES = {"watertight": "not watertight", "manifold_edges": "has edges shared by more than two faces",
               "consistent_orientation": "has faces of mixed orientation", "outward": "faces inward"}


def validate_patients(meshes_dir: Path, patients: list[str]) -> dict[str, str]:
    """Read every mesh once up front and check what sampling relies on (closed outward surfaces, the liver
    inside the abdominal wall), so a bad patient fails before anything is written; returns fingerprints."""
    from .core.geometry import edge_manifold_report, inside
    from .scene import load_patient_meshes  # bpy

    for name in patients:
        meshes = load_patient_meshes(meshes_dir / name)
        for organ, mesh in meshes.items():
            failed = [CHECK_NAMES[k] for k, ok in edge_manifold_report(mesh).items() if not ok]
            if failed:
                raise DatasetError(f"{meshes_dir / name / (organ + '.ply')}: {', '.join(failed)}; the camera and "
                                   "tool sampling need closed outward surfaces (python -m backend.meshes import "
                                   "repairs meshes)")
        if not inside(meshes["liver"].vertices.mean(0)[None], meshes["abdominal_wall"])[0]:
            raise DatasetError(f"{meshes_dir / name}: the liver is not inside abdominal_wall.ply (the wall must be "
                               "the cavity around the organs)")
    return {name: patient_fingerprint(meshes_dir / name) for name in patients}


def prepare_output(out: Path, manifest: dict, overwrite: bool, legacy_fingerprints: dict | None = None) -> None:
    """Create, resume or (with --overwrite) replace a data set; refuse anything else. A patient's recorded
    fingerprint also matches `legacy_fingerprints` (patient_fingerprint's old rule)."""
    ds = out / "dataset.json"
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out}: exists and is not a folder")
    if ds.is_file():
        try:
            existing, why = json.loads(ds.read_text()), "not a data set manifest"
        except ValueError:
            existing, why = None, "not valid JSON"
        # Unreadable: what belongs to the data set is not known, so --overwrite cannot remove it safely either.
        if not (isinstance(existing, dict) and isinstance(existing.get("settings", {}), dict)
                and isinstance(existing.get("fingerprints", {}), dict)):
            raise DatasetError(f"{ds}: {why} (a JSON object with settings and fingerprints objects), so what in "
                               f"{out} belongs to a data set is not known; pick a new --out, or empty it by hand")
        conflicts = manifest_conflicts(existing, manifest, absent=RenderSettings.LATER_CONTENT_KEYS)
        # Also for a patient without frames yet: another shard may be rendering its first ones right now.
        legacy = legacy_fingerprints or {}
        conflicts += [f"patient {p}: meshes changed since the data set was rendered"
                      for p, fp in existing.get("fingerprints", {}).items()
                      if p in manifest["fingerprints"] and fp not in (manifest["fingerprints"][p], legacy.get(p))]
        if conflicts and not overwrite:
            raise DatasetError(f"{out} holds a data set made with other settings ({'; '.join(conflicts)}); "
                               f"pick a new --out or pass --overwrite")
        if conflicts:
            remove_dataset(out, existing)
        else:  # same content settings: extend (more frames or patients) and resume
            manifest["patients"] = sorted(set(existing.get("patients", [])) | set(manifest["patients"]))
            manifest["fingerprints"] = {**existing.get("fingerprints", {}), **manifest["fingerprints"]}
            manifest["settings"]["frames_per_scene"] = max(existing["settings"].get("frames_per_scene", 0),
                                                           manifest["settings"]["frames_per_scene"])
    # A temporary of our own (.tmp-*) is not content: a run killed while writing the first dataset.json, or
    # another shard writing it right now, leaves one; it is left alone (the other shard renames it).
    elif out.is_dir() and any(not f.name.startswith(".tmp-") for f in out.iterdir()):
        raise DatasetError(f"--out {out}: folder is not empty and holds no data set (no dataset.json); "
                           f"pick a new or empty folder")
    atomic_write_json(ds, manifest)


SHM = "/dev/shm"
SCRATCH_PREFIX = "lapsynth-"
EXR_CHANNELS = 13  # float32: combined and noisy image RGBA, depth, normal, object index


def scratch_dir(size: tuple[int, int] = (0, 0)) -> str:
    """A private folder for the passes EXR that every frame writes and reads back: in memory where the system
    has /dev/shm with room for it (the 6 MB write at 452x256 took 15 ms there against 30 ms in /tmp on disk;
    containers often give /dev/shm only 64 MB), else in the temp folder. Folders left by runs killed with -9
    are removed here (in /dev/shm memory is not freed otherwise): the name carries the owner's pid and host,
    and only this host's are judged by pid (containers that share /dev/shm see each other's pids as dead)."""
    shm = os.environ.get("LAPSYNTH_SHM", SHM)  # another in-memory folder, or "" for the temp folder
    need = 4 * EXR_CHANNELS * size[0] * size[1] + (64 << 20)
    host = f"{zlib.crc32(socket.gethostname().encode()):08x}"
    prefix = f"{SCRATCH_PREFIX}{os.getpid()}-{host}-"
    if shm and os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) and _free_bytes(shm) > need:
        _sweep_scratch(shm, host)
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=shm)
        except OSError:
            pass
    _sweep_scratch(tempfile.gettempdir(), host)
    return tempfile.mkdtemp(prefix=prefix)


def _sweep_scratch(folder: str, host: str) -> None:
    """Remove this host's scratch folders whose owner is gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if (name.startswith(SCRATCH_PREFIX) and len(parts) >= 4 and parts[1].isdigit() and parts[2] == host
                and not _alive(int(parts[1]))):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _free_bytes(folder: str) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _progress(done: int, total: int, started: float, rendered: int, log) -> None:
    elapsed = time.time() - started
    log(progress_line("frames", done, total, rendered / elapsed if elapsed > 0 else 0.0, "frames"))


@dataclass
class FrameDraw:
    """Everything drawn for one frame before rendering."""

    camera: CameraDraw
    tools: list[ToolDraw]
    light: LightDraw
    materials: dict[str, MaterialDraw]
    view: dict  # preset, coverage estimate, resampled views, accepted
    retraction: Retraction | None = None  # the gallbladder's turn in cholecystectomy views
    fov: FovDraw | None = None  # the circular field of view with --fov-mask circle


def _liver_view(rng: np.random.Generator, scene, settings: RenderSettings):
    w, h = settings.size
    camera = sample_camera(rng, scene.anatomy, w, h)
    n_tools = int(rng.integers(0, settings.max_tools + 1))
    tools = sample_tools(rng, scene.anatomy, camera, n_tools, w, h)
    coverage = scene.estimate_coverage(camera, tools, w, h)
    ok = coverage["liver"] >= settings.min_liver and coverage["tools"] <= settings.max_tool
    score = coverage["liver"] - max(0.0, coverage["tools"] - settings.max_tool)
    return camera, tools, None, coverage, ok, score


def _cholecystectomy_view(rng: np.random.Generator, scene, settings: RenderSettings):
    """views.py: a grasper holds the retracted fundus in FUNDUS_GRASPER_SHARE of frames (when tools are
    allowed and the patient has an allowed retraction), plus 1..(the free slots) working tools with their
    tips in view, or none in NO_WORKING_TOOL_SHARE of frames."""
    w, h = settings.size
    anatomy, retraction, placed = scene.anatomy, None, []
    retractions = scene.retractions_for(settings.retraction) if settings.max_tools >= 1 else []
    if settings.max_tools >= 1 and rng.uniform() < FUNDUS_GRASPER_SHARE and retractions:
        candidate = retractions[int(rng.integers(len(retractions)))]
        moved = candidate.apply(scene.anatomy)
        grasper = sample_fundus_grasper(rng, moved, candidate)
        if grasper is not None:
            anatomy, retraction, placed = moved, candidate, [grasper]
    camera = sample_cholecystectomy_camera(rng, anatomy, anatomy.meshes["gallbladder"], w, h)
    free = settings.max_tools - len(placed)
    n_more = 0 if free < 1 or rng.uniform() < NO_WORKING_TOOL_SHARE else int(rng.integers(1, free + 1))
    tools = placed + sample_tools(rng, anatomy, camera, n_more, w, h, placed=placed)
    coverage = scene.estimate_coverage(camera, tools, w, h, retraction=retraction)
    ok = coverage["gallbladder"] >= settings.min_gallbladder and coverage["tools"] <= settings.max_tool
    score = coverage["gallbladder"] - max(0.0, coverage["tools"] - settings.max_tool)
    return camera, tools, retraction, coverage, ok, score


def draw_frame(rng: np.random.Generator, scene, settings: RenderSettings) -> FrameDraw:
    """Camera, tools, light and materials of one frame; views are resampled until acceptable (liver
    views: enough liver; cholecystectomy views: enough gallbladder; both: not too much tool). A liver
    view consumes `rng` exactly as before view presets existed, so old data sets resume unchanged."""
    preset = frame_view(rng, settings.view, scene.has_gallbladder)
    sample = _liver_view if preset == "liver" else _cholecystectomy_view
    best = None
    for attempt in range(settings.max_retries):
        camera, tools, retraction, coverage, ok, score = sample(rng, scene, settings)
        if best is None or score > best[0]:
            best = (score, camera, tools, retraction, coverage, attempt, ok)
        if ok:
            break
    _, camera, tools, retraction, coverage, attempt, ok = best
    light = sample_light(rng)
    materials = sample_materials(rng)
    fov = sample_fov(rng, *settings.size) if settings.fov_mask == "circle" else None
    view = {"estimate": coverage, "resampled": attempt, "accepted": ok}
    if settings.view != "liver":
        view["preset"] = preset
        if preset == "liver":
            view["note"] = "liver view: the patient has no gallbladder"
    return FrameDraw(camera, tools, light, materials, view, retraction, fov)


class ClipCache:
    """The drawn scene and paths of the clip being rendered (drawing them again for every frame of a long
    clip would repeat the path checks); one clip, since frames come in order."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, key, make):
        if key != self.key:
            self.key, self.value = key, make()
        return self.value


def draw_sequence_frame(key: FrameKey, scene, settings: RenderSettings, cache: ClipCache | None = None):
    """Frame `key` of its clip (motion.py): the clip's scene drawn from the clip's seed, moved to this
    frame's time. Returns the frame's draw, the next frame's camera and tools (for the flow), and the
    sequence record for the meta."""
    n, fps = settings.sequence_length, settings.fps
    clip, step = divmod(key.frame, n)

    def make():
        rng = np.random.default_rng(derive_seed(settings.seed, key.patient, clip, CLIP_SEED_TAG))
        base = draw_frame(rng, scene, settings)
        anatomy = base.retraction.apply(scene.anatomy) if base.retraction is not None else scene.anatomy
        return base, clip_motion(rng, anatomy, base.camera, base.tools, np.arange(n + 1) / fps)

    base, motion = (cache or ClipCache()).get((key.patient, clip), make)
    t, t_next = step / fps, (step + 1) / fps
    draw = replace(base, camera=camera_at(base.camera, motion, t),
                   tools=[tool_at(tl, p, t) for tl, p in zip(base.tools, motion.tips)])
    next_camera = camera_at(base.camera, motion, t_next)
    next_tools = [tool_at(tl, p, t_next) for tl, p in zip(base.tools, motion.tips)]
    record = {"clip": clip, "step": step, "length": n, "fps": fps, "time_s": t, **motion.record(),
              "first_frame": key.frame - step}
    return draw, next_camera, next_tools, record


def apply_fov(fov: FovDraw, image: np.ndarray, seg: np.ndarray, depth: np.ndarray, normals: np.ndarray):
    """Black outside the circle (anti-aliased edge), class OUTSIDE_FOV, depth NaN and normals 0 there."""
    h, w = seg.shape
    coverage, inside = fov_masks(fov, w, h)
    # Only the pixels the border touches change (new arrays: the caller's are left as they were).
    image, seg = image.astype(np.uint8), seg.astype(np.uint8)
    depth, normals = depth.astype(np.float32), normals.astype(np.float32)
    part = coverage < 1
    image[part] = np.round(image[part] * coverage[part][:, None])
    out = ~inside
    seg[out], depth[out], normals[out] = OUTSIDE_FOV[0], np.nan, 0.0
    return image, seg, depth, normals


def tool_records(tools, world_to_cam: np.ndarray, K: np.ndarray, seg: np.ndarray, depth: np.ndarray) -> list[dict]:
    """Per tool: type, poses in world and camera frames, tip position, pixel and visibility."""
    out = []
    for t in tools:
        tip_cam = (world_to_cam @ np.append(t.tip, 1.0))[:3]
        pixel, visible = tip_visibility(tip_cam, K, seg, depth)
        out.append({**({"holds": t.holds} if t.holds else {}),
            "type": t.kind,
            "pose_world": t.pose.tolist(),
            "pose_camera": (world_to_cam @ t.pose).tolist(),
            "tip_world": t.tip.tolist(),
            "tip_camera": tip_cam.tolist(),
            "tip_pixel": pixel,
            "tip_visible": visible,
            "trocar_world": t.trocar.tolist(),
            "opening_deg": t.opening,
        })
    return out


def camera_record(camera, K: np.ndarray, world_to_cam: np.ndarray) -> dict:
    return {
        "K": K.tolist(),
        "cam_to_world": camera.cam_to_world.tolist(),
        "world_to_cam": world_to_cam.tolist(),
        "horizontal_fov_deg": camera.horizontal_fov,
        "optics_deg": camera.optics,
        "scope_axis_world": camera.scope_axis.tolist(),
        "target_world": camera.target.tolist(),
        "convention": "OpenCV: x right, y down, z forward; millimetres",
    }


def light_record(light, gain: float) -> dict:
    return {
        "type": "spot at the laparoscope, inverse-square falloff",
        "power_w": light.power, "spot_size_deg": light.spot_size, "spot_blend": light.spot_blend,
        "color": list(light.color), "offset_camera_mm": light.offset.tolist(), "exposure_stops": light.exposure,
        "auto_exposure_gain": gain,
    }


def write_frame(out: Path, key: FrameKey, image: np.ndarray, seg: np.ndarray, depth: np.ndarray,
                normals: np.ndarray, meta: dict, flow: np.ndarray | None = None) -> None:
    """Every file of a frame, atomically, the meta JSON last (docs/dataset-format.md)."""
    # zlib's run-length strategy on "up"-filtered rows: faster and smaller than its default (core/png.py)
    files = {"image": png.encode(image, level=1, filter="up", strategy="rle"),
             "segmentation": png.encode(seg, level=1, filter="up", strategy="rle"),
             "depth": npy_bytes(depth), "normals": npy_bytes(normals), **({"flow": npy_bytes(flow)} if flow is not None else {})}
    for kind, payload in files.items():
        atomic_write_bytes(out / key.relpath(kind), payload)
    atomic_write_bytes(out / key.relpath("meta"), (json.dumps(meta, indent=1) + "\n").encode())


@dataclass
class FramePlan:
    """Everything drawn for a frame before Blender renders it (a pure function of seed, patient, frame)."""

    key: FrameKey
    seed: int  # the frame's seed
    dataset_seed: int
    draw: FrameDraw
    next_camera: object = None  # sequences: the next frame's camera and tools, for the flow
    next_tools: list | None = None
    sequence: dict | None = None


def plan_frame(key: FrameKey, seed: int, scene, settings: RenderSettings, clips: ClipCache | None = None) -> FramePlan:
    """Draw one frame (view sampling with ray casts against the scene's trees; no bpy data is touched)."""
    fseed = frame_seed(seed, key.patient, key.frame)
    if settings.sequence_length > 1:
        draw, next_camera, next_tools, sequence = draw_sequence_frame(key, scene, settings, clips)
        return FramePlan(key, fseed, seed, draw, next_camera, next_tools, sequence)
    return FramePlan(key, fseed, seed, draw_frame(np.random.default_rng(fseed), scene, settings))


def render_plan(plan: FramePlan, scene, tmp_exr: str, vector: bool = False) -> tuple[dict, float]:
    """Pose the Blender scene as planned and render its passes (Blender's side; Cycles releases the GIL).
    vector: clips whose flow comes from Cycles' vector pass get the next frame's poses keyed."""
    from .engine import render_passes, use_vector_pass  # bpy: imported where it renders, so the helpers above stay pure

    d = plan.draw
    motion = (plan.next_camera, plan.next_tools) if vector and plan.sequence is not None else None
    if motion is not None and not scene.scene.view_layers[0].use_pass_vector:
        use_vector_pass(scene.scene, True)
    scene.pose(d.camera, d.light, d.tools, d.materials, plan.seed, d.retraction, motion)
    t0 = time.time()
    passes = render_passes(scene.scene, tmp_exr)
    return passes, time.time() - t0


def finish_frame(plan: FramePlan, passes: dict, render_s: float, settings: RenderSettings, out: Path,
                 versions: dict) -> dict:
    """Labels, meta and files of a rendered frame (numpy and file writes only: safe beside a render)."""
    from .scene import SCENE_TO_MM

    w, h = settings.size
    key, draw = plan.key, plan.draw
    camera, tools, light = draw.camera, draw.tools, draw.light
    if passes["rgb"].shape[:2] != (h, w):
        raise RuntimeError(f"render came back {passes['rgb'].shape[:2]}, expected {(h, w)}")
    seg = segmentation_from_index(passes["index"])
    depth = depth_mm(passes["depth"], SCENE_TO_MM)
    normals = normals_to_camera(passes["normal"], camera.cam_to_world, np.isfinite(depth))
    gain = auto_exposure_gain(passes["rgb"], settings.exposure_target)
    image = linear_to_srgb8(passes["rgb"], light.exposure, gain)
    if draw.fov is not None:
        image, seg, depth, normals = apply_fov(draw.fov, image, seg, depth, normals)
    K = camera.K(w, h)
    world_to_cam = np.linalg.inv(camera.cam_to_world)
    flow, sequence = None, plan.sequence
    if plan.sequence is not None:
        geometric = optical_flow(depth, seg, K, camera.cam_to_world, plan.next_camera.cam_to_world, tools,
                                 plan.next_tools)
        flow = geometric
        if settings.flow == "vector":
            flow = flow_from_vector(passes["vector"], depth)
            sequence = {**sequence, "flow": "vector", "flow_vs_geometry_px": flow_agreement(flow, geometric)}
    meta = {
        "patient": key.patient, "frame": key.frame, "seed": plan.seed, "dataset_seed": plan.dataset_seed,
        "resolution": [w, h],
        "camera": camera_record(camera, K, world_to_cam),
        "light": light_record(light, gain),
        "tools": tool_records(tools, world_to_cam, K, seg, depth),
        "class_pixels": class_pixel_counts(seg),
        "view": draw.view,
        **({"gallbladder_retraction": draw.retraction.record()} if draw.retraction is not None else {}),
        **({"fov": draw.fov.record()} if draw.fov is not None else {}),
        **({"sequence": sequence} if sequence is not None else {}),
        "render_seconds": round(render_s, 3),
        "versions": versions,
    }
    write_frame(out, key, image, seg, depth, normals, meta, flow)
    return meta


def render_frame(key: FrameKey, seed: int, scene, settings: RenderSettings, out: Path, tmp_exr: str,
                 versions: dict, clips: ClipCache | None = None) -> dict:
    """Draw, pose, render and label one frame, write its files; returns its meta."""
    plan = plan_frame(key, seed, scene, settings, clips)
    passes, render_s = render_plan(plan, scene, tmp_exr, settings.flow == "vector")
    return finish_frame(plan, passes, render_s, settings, out, versions)


def render_frames(keys: list[FrameKey], seed: int, scene, settings: RenderSettings, out: Path, tmp_exr: str,
                  versions: dict, clips: ClipCache, should_stop=lambda: False, on_done=lambda meta: None,
                  worker_nice: int = WORKER_NICE, gc_between_frames: bool = True) -> bool:
    """render_frame for each key in order, with the CPU work around a render overlapped with the next one:
    Cycles releases the GIL while it renders, so one worker thread labels and writes frame k-1 and plans
    frame k+1 meanwhile. Same draws, same files, same order as one frame at a time. on_done(meta) runs on
    the worker, in order, once a frame's files are all written: the index's write and fsync (slow on
    network file systems) then never hold up the next render. Returns False when should_stop() ended it
    early (every frame started before that is finished and reported). The worker runs at a lower priority
    (worker_nice added to its nice value, core/priority.py), so that it takes the cores mostly where Cycles
    leaves them idle. With gc_between_frames Python's automatic garbage collection is off while the frames
    render, and the worker collects the young generations after each frame (core/collector.py): full
    collections started at random walked every object of the process, holding the GIL."""
    if not keys:
        return True

    def finish_and_report(plan, passes, render_s):
        on_done(finish_frame(plan, passes, render_s, settings, out, versions))
        if gc_between_frames:
            collect_young()

    with (collections_between_frames() if gc_between_frames else contextlib.nullcontext(),
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="lapsynth-frame", initializer=lower_this_thread,
                             initargs=(worker_nice,)) as worker):
        planned = worker.submit(plan_frame, keys[0], seed, scene, settings, clips)
        writing = None
        stopped = False
        try:
            for i in range(len(keys)):
                if should_stop():
                    stopped = True
                    break
                plan = planned.result()
                if i + 1 < len(keys):  # queued behind frame k-1's writes: both run during this render
                    planned = worker.submit(plan_frame, keys[i + 1], seed, scene, settings, clips)
                passes, render_s = render_plan(plan, scene, tmp_exr, settings.flow == "vector")
                if writing is not None:
                    writing.result()  # frame k-1 written and reported; its errors surface here
                writing = worker.submit(finish_and_report, plan, passes, render_s)
            if writing is not None:
                writing.result()
        except BaseException as err:
            # A render (or plan) failed while frame k-1 was being written: that frame still finishes, and
            # if its writing failed too (a full disk), say so rather than lose it behind this error.
            also = writing.exception() if writing is not None else None  # waits for it
            if also is not None and also is not err:
                err.add_note(f"meanwhile writing the previous frame failed too: {type(also).__name__}: {also}")
            raise
    return not stopped


def write_preview(out: Path, n: int) -> Path | None:
    entries = read_index(out)
    if not entries or n <= 0:
        return None
    pick = [entries[i] for i in np.linspace(0, len(entries) - 1, min(n, len(entries))).round().astype(int)]
    rows = []
    for e in pick:
        key = FrameKey(e["patient"], int(e["frame"]))
        rows.append({
            "image": png.decode((out / key.relpath("image")).read_bytes()),
            "segmentation": png.decode((out / key.relpath("segmentation")).read_bytes()),
            "depth": np.load(out / key.relpath("depth")),
            "normals": np.load(out / key.relpath("normals")),
        })
    try:
        sheet = preview_sheet(rows)
    except ImportError:  # Blender's own Python has no PIL: same sheet without the legend text
        sheet = np.concatenate([np.concatenate([r["image"], overlay_picture(r["image"], r["segmentation"]),
                                                depth_picture(r["depth"]), normals_picture(r["normals"])], 1)
                                for r in rows])
    path = out / PREVIEW
    atomic_write_bytes(path, png.encode(sheet))
    return path


def run(settings: RenderSettings, log=None, should_stop=lambda: False, on_frame=None) -> RunSummary:
    """Render the frames of settings.shard that are not finished yet. on_frame(done, total, meta) is called
    on the render worker thread, in order, once a frame is in the index."""
    import bpy  # here, not at the top: discover_patients, draw_frame and the writers import without bpy

    from .engine import blender_version, configure_cycles, select_device, use_vector_pass
    from .scene import PatientScene

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    settings.validate()
    single_threaded_blas()  # core/blas.py: numpy's thread pool spins beside Cycles for nothing
    shard = parse_shard(settings.shard)
    meshes_dir = Path(settings.meshes)
    out = Path(settings.out)
    check_output_dir(out, "--out")
    patients = patients_for_view(meshes_dir, discover_patients(meshes_dir, settings.patients), settings.view,
                                 bool(settings.patients.strip()), log)
    fingerprints = validate_patients(meshes_dir, patients)
    select_device(bpy.context.scene, settings.device)  # fail on a missing GPU before writing anything
    # Format 2 only where it differs from 1 (the field-of-view mask), so other data sets stay readable by older versions.
    format_version = FORMAT_VERSION if settings.fov_mask == "circle" else 1
    versions = {"lapsynth": __version__, "blender": blender_version(), "format_version": format_version}
    content = settings.content()
    content["frames_per_scene"] = settings.frames_per_scene
    manifest = dataset_manifest(content, patients, versions, format_version)
    manifest["fingerprints"] = fingerprints
    prepare_output(out, manifest, settings.overwrite,
                   {p: patient_fingerprint(meshes_dir / p, organs_only=False) for p in patients})

    sweep_temporaries([out], say=log)  # files of writers killed with -9 (an hour old: no live writer's)
    frames = shard_frames(all_frames(patients, settings.frames_per_scene), shard)
    done = finished_frames(out)
    todo = [f for f in frames if f not in done]
    summary = RunSummary(len(frames), len(frames) - len(todo), 0, 0, 0.0)
    log(f"{len(frames)} frames in shard {shard[0]}/{shard[1]}: {summary.skipped} done, {len(todo)} to render "
        f"({settings.size[0]}x{settings.size[1]}, {settings.samples} samples, {settings.device})")
    started = time.time()
    tmp_dir = scratch_dir(settings.size)
    tmp_exr = os.path.join(tmp_dir, "passes.exr")
    clips = ClipCache()
    try:
        with IndexWriter(out, shard) as index:
            for patient, group in groupby(todo, key=lambda f: f.patient):
                scene = PatientScene(meshes_dir / patient, settings.max_tools, tissue_look=settings.tissue_look,
                                       tool_look=settings.tool_look)
                configure_cycles(scene.scene, settings.samples, settings.denoise, settings.threads,
                                 settings.denoise_quality)
                use_vector_pass(scene.scene, settings.sequence_length > 1 and settings.flow == "vector")
                w, h = settings.size
                scene.scene.render.resolution_x, scene.scene.render.resolution_y = w, h
                select_device(scene.scene, settings.device)

                def done(meta: dict) -> None:
                    key = FrameKey(meta["patient"], meta["frame"])
                    kinds = list(FRAME_FILES) + (["flow"] if "sequence" in meta else [])
                    index.append({"patient": key.patient, "frame": key.frame, "seed": meta["seed"],
                                  **{kind: key.relpath(kind) for kind in kinds}})
                    summary.rendered += 1
                    summary.resampled_views += meta["view"]["resampled"]
                    done_n = summary.skipped + summary.rendered
                    _progress(done_n, summary.total, started, summary.rendered, log)
                    if on_frame:
                        on_frame(done_n, summary.total, meta)

                if not render_frames(list(group), settings.seed, scene, settings, out, tmp_exr, versions, clips,
                                     should_stop, done):
                    log("stopped; the data set is consistent and the next run resumes it")
                    return summary
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        summary.seconds = time.time() - started
    preview = write_preview(out, settings.preview_frames)
    log(f"done: {summary.rendered} rendered, {summary.skipped} already there, "
        f"{summary.resampled_views} views resampled, {summary.seconds:.1f} s"
        + (f"; preview {preview}" if preview else ""))
    return summary
