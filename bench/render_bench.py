"""Renderer benchmark: frames per second, label overhead, and memory over a long run.

    python bench/render_bench.py                      # CPU, default settings (452x256, 8 samples)
    python bench/render_bench.py --device gpu         # on a machine with an NVIDIA GPU
    python bench/render_bench.py --memory-frames 0    # skip the long memory run

Label overhead = time per frame of the full pipeline (view sampling, render with passes, EXR
read-back, label conversion, PNG/NPY writes, index) / time of a bare RGB render (no passes, no
file) of the same scene and pose, both measured in this process, interleaved frame by frame.
Timings on a shared machine are noisy: compare the ratios printed by one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def speed(args) -> dict:
    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.dataset import FrameKey, IndexWriter, dataset_manifest
    from blender_addon.core.files import atomic_write_json
    from blender_addon.core.seeds import frame_seed
    from blender_addon.engine import configure_cycles, render_bare, select_device
    from blender_addon.scene import PatientScene

    out = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    s = RenderSettings(meshes=str(ROOT / "meshes"), out=str(out), resolution=args.resolution,
                       samples=args.samples, device=args.device).validate()
    w, h = s.size
    atomic_write_json(out / "dataset.json", dataset_manifest(s.content(), [args.patient], {}))
    t0 = time.time()
    scene = PatientScene(ROOT / "meshes" / args.patient, s.max_tools)
    configure_cycles(scene.scene, s.samples, s.denoise, s.threads)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = w, h
    device = select_device(scene.scene, s.device)
    build = time.time() - t0
    tmp_exr = str(out / "passes.exr")
    # Warm-up: the first render compiles kernels (GPU) and builds the BVH.
    pipeline.render_frame(FrameKey(args.patient, 10_000), s.seed, scene, s, out, tmp_exr, {})
    full, bare, sample_t = [], [], []
    with IndexWriter(out, (0, 1)) as index:
        for k in range(args.frames):
            key = FrameKey(args.patient, k)
            t = time.perf_counter()
            meta = pipeline.render_frame(key, s.seed, scene, s, out, tmp_exr, {})
            index.append({"patient": key.patient, "frame": k})
            full.append(time.perf_counter() - t)
            # Same scene, same pose (render_frame left it posed), RGB only, nothing written.
            t = time.perf_counter()
            render_bare(scene.scene)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            rng = np.random.default_rng(frame_seed(s.seed, key.patient, k))
            pipeline.draw_frame(rng, scene, s)
            sample_t.append(time.perf_counter() - t)
            print(f"  frame {k}: full {full[-1]:.2f} s, bare {bare[-1]:.2f} s, view sampling {sample_t[-1]:.3f} s,"
                  f" render {meta['render_seconds']:.2f} s", flush=True)
    return {
        "device": device,
        "resolution": args.resolution,
        "samples": s.samples,
        "frames": args.frames,
        "scene_build_s": round(build, 2),
        "full_s_per_frame": round(float(np.mean(full)), 3),
        "bare_rgb_s_per_frame": round(float(np.mean(bare)), 3),
        "view_sampling_s_per_frame": round(float(np.mean(sample_t)), 3),
        "frames_per_second": round(1 / float(np.mean(full)), 3),
        "label_overhead": round(float(np.sum(full) / np.sum(bare)), 3),
    }


def memory(args) -> dict:
    from blender_addon import pipeline
    from blender_addon.config import RenderSettings

    out = Path(tempfile.mkdtemp(prefix="bench-memory-")) / "A"
    marks = {}

    def on_frame(done, total, meta):
        if done in (50, 100, 250, 500, args.memory_frames):
            marks[done] = round(rss_mib(), 1)

    s = RenderSettings(meshes=str(ROOT / "meshes"), out=str(out), patients=args.patient,
                       frames_per_scene=args.memory_frames, resolution=args.memory_resolution,
                       samples=1, denoise=False, preview_frames=0, device=args.device).validate()
    t = time.time()
    pipeline.run(s, log=lambda m: None, on_frame=on_frame)
    first, last = marks.get(50), marks.get(args.memory_frames)
    return {
        "frames": args.memory_frames,
        "resolution": args.memory_resolution,
        "rss_mib_at": marks,
        "growth_50_to_last": round(last / first - 1, 4) if first and last else None,
        "seconds": round(time.time() - t, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--patient", default="patient01")
    p.add_argument("--resolution", default="452x256")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--frames", type=int, default=8, help="frames for speed and label overhead")
    p.add_argument("--memory-frames", type=int, default=500, help="frames of the memory run (0: skip)")
    p.add_argument("--memory-resolution", default="96x64")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    print(f"speed: {args.frames} frames at {args.resolution}, {args.samples} samples, {args.device}", flush=True)
    figures = {"speed": speed(args)}
    print(json.dumps(figures["speed"], indent=1), flush=True)
    if args.memory_frames:
        print(f"memory: {args.memory_frames} frames at {args.memory_resolution}, 1 sample", flush=True)
        figures["memory"] = memory(args)
        print(json.dumps(figures["memory"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
