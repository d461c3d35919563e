"""Renderer benchmark: frames per second, label overhead, and memory over a long run.

    python bench/render_bench.py                      # CPU, default settings (452x256, 1 sample, fast denoiser)
    python bench/render_bench.py --device gpu         # on a machine with an NVIDIA GPU
    python bench/render_bench.py --memory-frames 0    # skip the long memory run
    python bench/render_bench.py --view cholecystectomy --fov-mask circle   # the same on other views
    python bench/render_bench.py --quality            # render settings side by side: s/frame and PSNR
                                                      # against a 128-sample reference of the same frames
    python bench/render_bench.py --clip-frames 16     # clips: flow from the vector pass against the flow
                                                      # rebuilt from depth, same frames, in blocks
    python bench/render_bench.py --png runs/A         # PNG encoding: filters and zlib levels on renders
    python bench/render_bench.py --overhead-parts 16  # where the label overhead goes: the render call
                                                      # with passes, EXR write and read, and the CPU work
                                                      # the worker thread does beside the next render

Label overhead = time per frame of the full pipeline as render.py runs it (view sampling, render with
passes, EXR read-back, label conversion, PNG/NPY writes; the CPU work around a render overlapped with
the next render) / time of a bare RGB render (no passes, no file) of the same scene and poses, both
measured in this process, in --rounds alternating blocks (the median of the rounds' ratios). A block
plans its first frame and labels its last with nothing to overlap them, once per --frames, where
render.py does so once per patient (100 frames by default): label_overhead_steady leaves those out (from
the start of each block's second frame to that of its last). Also printed: the worker at the main
thread's priority (label_overhead_worker_at_nice_0), with Python's garbage collector left to itself
(label_overhead_gc_automatic, core/collector.py), the per-patient view setup, and the same frames
one at a time, interleaved with the bare renders frame by frame (label_overhead_one_at_a_time).
Timings on a shared machine are noisy: compare the ratios printed by one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


CPU_WORK_MS = 20  # --overhead-parts: CPU work on another thread beside a bare render, to price the worker's


def speed(args) -> dict:
    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.blas import single_threaded_blas
    from blender_addon.core.dataset import FrameKey, IndexWriter, dataset_manifest
    from blender_addon.core.files import atomic_write_json
    from blender_addon.core.seeds import frame_seed
    from blender_addon.engine import configure_cycles, render_bare, select_device
    from blender_addon.scene import PatientScene

    single_threaded_blas()  # as pipeline.run sets it up
    out = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    s = RenderSettings(meshes=str(ROOT / "meshes"), out=str(out), resolution=args.resolution,
                       device=args.device, **view_settings(args),
                       **({"samples": args.samples} if args.samples else {})).validate()
    w, h = s.size
    atomic_write_json(out / "dataset.json", dataset_manifest(s.content(), [args.patient], {}))
    t0 = time.time()
    scene = PatientScene(ROOT / "meshes" / args.patient, s.max_tools)
    configure_cycles(scene.scene, s.samples, s.denoise, s.threads, s.denoise_quality)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = w, h
    device = select_device(scene.scene, s.device)
    build = time.time() - t0
    tmp_exr = os.path.join(pipeline.scratch_dir(s.size), "passes.exr")  # where render.py puts it
    # A patient's gallbladder retractions, computed once, by its first cholecystectomy frame's planning.
    t0 = time.time()
    if s.view != "liver" and s.max_tools >= 1:
        scene.retractions_for(s.retraction)
    view_setup = time.time() - t0
    # Warm-up: the first render compiles kernels (GPU) and builds the BVH.
    t0 = time.time()
    pipeline.render_frame(FrameKey(args.patient, 10_000), s.seed, scene, s, out, tmp_exr, {})
    first_frame = time.time() - t0
    print(f"  per patient: scene {build:.2f} s, view setup (retractions) {view_setup:.2f} s, first frame "
          f"{first_frame:.2f} s", flush=True)
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
    # What render.py does: the same frames through render_frames, whose worker thread labels and writes a
    # frame and plans the next one while Cycles renders (it releases the GIL). Timed in rounds against
    # bare renders of the same frames, the two blocks in a shuffled order each round, so that a slower
    # spell of this shared machine falls on both: the overhead is the median of the rounds' ratios.
    keys = [FrameKey(args.patient, k) for k in range(args.frames)]
    plans = [pipeline.plan_frame(key, s.seed, scene, s) for key in keys]
    # "overlapped" runs the worker as render.py does (at nice +WORKER_NICE); "worker at nice 0" as before 0.27.
    rounds = {"bare": [], "overlapped": [], "worker at nice 0": [], "gc automatic": []}
    steady = []  # overlapped, within the block: from the start of its second frame to that of its last
    for r in range(args.rounds):
        order = list(rounds)
        np.random.default_rng(r).shuffle(order)
        for name in order:
            t = time.perf_counter()
            if name == "bare":
                for p in plans:
                    d = p.draw
                    scene.pose(d.camera, d.light, d.tools, d.materials, p.seed, d.retraction)
                    render_bare(scene.scene)
            else:
                # As in a long run, where a patient's ~100 lifts share LIFT_TREES kept trees: these frames'
                # trees, built by the planning above, are not kept for the block that plans them again.
                scene._lift_trees.clear()
                variant = {"overlapped": {}, "worker at nice 0": {"worker_nice": 0},
                           "gc automatic": {"gc_between_frames": False}}[name]
                starts = []  # should_stop is asked as each frame's turn starts
                pipeline.render_frames(keys, s.seed, scene, s, out, tmp_exr, {}, pipeline.ClipCache(),
                                       should_stop=lambda starts=starts: bool(starts.append(time.perf_counter())), **variant)
                if name == "overlapped" and len(starts) >= 3:
                    steady.append((starts[-1] - starts[1]) / (len(starts) - 2))
            rounds[name].append((time.perf_counter() - t) / len(keys))
        print(f"  round {r}: bare {rounds['bare'][-1]:.3f} s/frame (posing included), overlapped (render_frames) "
              f"{rounds['overlapped'][-1]:.3f} s/frame: {rounds['overlapped'][-1] / rounds['bare'][-1]:.3f}; worker "
              f"at nice 0: {rounds['worker at nice 0'][-1] / rounds['bare'][-1]:.3f}; gc automatic: "
              f"{rounds['gc automatic'][-1] / rounds['bare'][-1]:.3f}", flush=True)
    overlapped = float(np.median(rounds["overlapped"]))
    ratios = np.array(rounds["overlapped"]) / np.array(rounds["bare"])
    ratios_nice0 = np.array(rounds["worker at nice 0"]) / np.array(rounds["bare"])
    ratios_gc = np.array(rounds["gc automatic"]) / np.array(rounds["bare"])
    # Each block pays once for planning its first frame and labelling its last, with nothing to overlap:
    # render.py pays that once per patient (100 frames by default), the block once per --frames.
    ratios_steady = np.array(steady) / np.array(rounds["bare"]) if steady else np.array([np.nan])
    return {
        "device": device,
        "resolution": args.resolution,
        "samples": s.samples,
        **view_settings(args),
        "frames": args.frames,
        "scene_build_s": round(build, 2),
        "view_setup_s": round(view_setup, 2),  # per patient, before its first frame: not in the overhead below
        "first_frame_s": round(first_frame, 2),
        "one_at_a_time_s_per_frame": round(float(np.mean(full)), 3),
        "overlapped_s_per_frame": round(overlapped, 3),
        "bare_rgb_s_per_frame": round(float(np.mean(bare)), 3),
        "view_sampling_s_per_frame": round(float(np.mean(sample_t)), 3),
        "frames_per_second": round(1 / overlapped, 3),
        "label_overhead": round(float(np.median(ratios)), 3),
        "label_overhead_rounds": [round(float(x), 3) for x in ratios],
        "label_overhead_steady": round(float(np.median(ratios_steady)), 3),  # frames 2 to n-1 of each block
        "label_overhead_worker_at_nice_0": round(float(np.median(ratios_nice0)), 3),
        "label_overhead_worker_at_nice_0_rounds": [round(float(x), 3) for x in ratios_nice0],
        "label_overhead_gc_automatic": round(float(np.median(ratios_gc)), 3),  # render_frames(gc_between_frames=False)
        "label_overhead_gc_automatic_rounds": [round(float(x), 3) for x in ratios_gc],
        "label_overhead_one_at_a_time": round(float(np.sum(full) / np.sum(bare)), 3),
    }


# Render settings compared by --quality: name -> (samples, Cycles properties set after configure_cycles).
VARIANTS = {
    "8 spp, high denoise (before 0.3)": (8, {"denoising_quality": "HIGH"}),
    "2 spp, high denoise": (2, {"denoising_quality": "HIGH"}),
    "2 spp, fast denoise (default)": (2, {"denoising_quality": "FAST"}),
    "1 spp, fast denoise": (1, {"denoising_quality": "FAST"}),
}
# Tried and left out (measured in one run, 4 frames of patient01, docs/evaluation.md): direct light only
# (max_bounces 0) was 1.5x faster than 2 spp but 29-36 dB; use_light_tree off made no difference (one light).


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def quality(args) -> dict:
    """Each variant renders the same frames (full pipeline: view sampling, render with passes, labels,
    writes); time per frame and PSNR of its images against a 128-sample render of the same frames with
    the default light paths. Labels are identical in every variant (one sample decides them)."""
    import imageio.v3 as iio

    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.dataset import FrameKey, dataset_manifest
    from blender_addon.core.files import atomic_write_json
    from blender_addon.engine import configure_cycles, select_device
    from blender_addon.scene import PatientScene

    def run(name, samples, props, frames):
        out = Path(tempfile.mkdtemp(prefix="bench-quality-"))
        s = RenderSettings(meshes=str(ROOT / "meshes"), out=str(out), resolution=args.resolution, samples=samples,
                           device=args.device, view=args.view, retraction=args.retraction).validate()
        atomic_write_json(out / "dataset.json", dataset_manifest(s.content(), [args.patient], {}))
        scene = PatientScene(ROOT / "meshes" / args.patient, s.max_tools)
        configure_cycles(scene.scene, s.samples, s.denoise, s.threads, s.denoise_quality)
        for k, v in props.items():
            setattr(scene.scene.cycles, k, v)
        scene.scene.render.resolution_x, scene.scene.render.resolution_y = s.size
        select_device(scene.scene, s.device)
        tmp_exr = os.path.join(pipeline.scratch_dir(s.size), "passes.exr")  # where render.py puts it
        pipeline.render_frame(FrameKey(args.patient, 10_000), s.seed, scene, s, out, tmp_exr, {})  # warm-up
        times, images, segs = [], [], []
        for k in frames:
            key = FrameKey(args.patient, k)
            t = time.perf_counter()
            pipeline.render_frame(key, s.seed, scene, s, out, tmp_exr, {})
            times.append(time.perf_counter() - t)
            images.append(iio.imread(out / key.relpath("image")))
            segs.append(iio.imread(out / key.relpath("segmentation")))
        print(f"  {name}: {np.mean(times):.2f} s/frame", flush=True)
        return float(np.mean(times)), images, segs

    frames = list(range(args.quality_frames))
    _, ref, ref_segs = run("reference, 128 spp", 128, {"denoising_quality": "HIGH"}, frames)
    rows = {}
    for name, (samples, props) in VARIANTS.items():
        t, images, segs = run(name, samples, props, frames)
        rows[name] = {"s_per_frame": round(t, 3), "frames_per_second": round(1 / t, 3),
                      "psnr_db": [round(psnr(a, b), 1) for a, b in zip(images, ref)],
                      "labels_identical": all(np.array_equal(a, b) for a, b in zip(segs, ref_segs))}
    base = rows[next(iter(VARIANTS))]["s_per_frame"]
    print(f"{'settings':40s} {'s/frame':>8s} {'frames/s':>9s} {'speed-up':>9s}  PSNR vs 128 spp (dB)  labels")
    for name, r in rows.items():
        print(f"{name:40s} {r['s_per_frame']:8.2f} {r['frames_per_second']:9.2f} {base / r['s_per_frame']:8.2f}x  "
              f"{min(r['psnr_db']):5.1f} .. {max(r['psnr_db']):5.1f}        {'same' if r['labels_identical'] else 'DIFFER'}")
    return {"resolution": args.resolution, "frames": len(frames), "view": args.view, "variants": rows}


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
                       samples=1, denoise=False, preview_frames=0, device=args.device, view=args.view,
                       retraction=args.retraction).validate()
    t = time.time()
    pipeline.run(s, log=lambda m: None, on_frame=on_frame)
    first, last = marks.get(50), marks.get(args.memory_frames)
    return {
        "frames": args.memory_frames,
        "resolution": args.memory_resolution,
        "view": args.view,
        "retraction": args.retraction,
        "rss_mib_at": marks,
        "growth_50_to_last": round(last / first - 1, 4) if first and last else None,
        "seconds": round(time.time() - t, 1),
    }


def bench_scene(patient: str, s, out: Path):
    """A data set manifest in `out` and the patient's scene set up as render.py sets it up for settings
    `s`; returns the scene and the passes EXR path render.py would use."""
    from blender_addon import pipeline
    from blender_addon.core.dataset import dataset_manifest
    from blender_addon.core.files import atomic_write_json
    from blender_addon.engine import configure_cycles, select_device
    from blender_addon.scene import PatientScene

    atomic_write_json(out / "dataset.json", dataset_manifest(s.content(), [patient], {}))
    scene = PatientScene(ROOT / "meshes" / patient, s.max_tools)
    configure_cycles(scene.scene, s.samples, s.denoise, s.threads, s.denoise_quality)
    scene.scene.render.resolution_x, scene.scene.render.resolution_y = s.size
    select_device(scene.scene, s.device)
    return scene, os.path.join(pipeline.scratch_dir(s.size), "passes.exr")


def clip_cost(args) -> dict:
    """The cost of `--flow vector` (the next frame's poses keyed, Cycles' vector pass written and read)
    against `--flow geometry` on the same planned clip frames: blocks of all frames with one source, then
    the other, twice, each block after one warm-up render (switching the pass resets Cycles' film)."""
    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.dataset import FrameKey
    from blender_addon.engine import use_vector_pass

    out = Path(tempfile.mkdtemp(prefix="bench-clip-"))
    base = dict(meshes=str(ROOT / "meshes"), out=str(out), resolution=args.resolution, device=args.device,
                sequence_length=8, fps=10.0, **({"samples": args.samples} if args.samples else {}))
    flows = {f: RenderSettings(**base, flow=f).validate() for f in ("vector", "geometry")}
    s = flows["vector"]
    scene, tmp_exr = bench_scene(args.patient, s, out)
    clips = pipeline.ClipCache()
    plans = [pipeline.plan_frame(FrameKey(args.patient, k), s.seed, scene, s, clips) for k in range(args.clip_frames)]
    times = {f: [] for f in flows}
    agreement = []
    for _ in range(2):
        for flow, settings in flows.items():
            vector = flow == "vector"
            use_vector_pass(scene.scene, vector)
            pipeline.render_plan(plans[0], scene, tmp_exr, vector)  # warm-up after the pass switch
            t = time.perf_counter()
            for plan in plans:
                passes, render_s = pipeline.render_plan(plan, scene, tmp_exr, vector)
                meta = pipeline.finish_frame(plan, passes, render_s, settings, out, {})
                if vector:
                    agreement.append(meta["sequence"]["flow_vs_geometry_px"])
            times[flow].append((time.perf_counter() - t) / len(plans))
            print(f"  {flow}: {times[flow][-1]:.3f} s/frame", flush=True)
    v, g = float(np.mean(times["vector"])), float(np.mean(times["geometry"]))
    return {"clip_frames": args.clip_frames, "resolution": args.resolution, "samples": s.samples,
            "vector_s_per_frame": round(v, 3), "geometry_s_per_frame": round(g, 3),
            "vector_over_geometry": round(v / g, 3), "blocks_s_per_frame": times,
            "flow_vs_geometry_px_median_of_frames": float(np.median(agreement)),
            "flow_vs_geometry_px_max_of_frames": float(np.max(agreement))}


def overhead_parts(args) -> dict:
    """The label overhead taken apart, on the same posed frames: the render call (bare RGB; with the
    label passes but no file; with the passes EXR written; written and read back), each variant once per
    frame in a shuffled order, medians over frames; and the CPU work that render_frames' worker thread
    does beside the next render (plan_frame: view sampling; finish_frame: labels, PNG/NPY/JSON writes),
    timed alone."""
    import bpy

    from blender_addon import pipeline
    from blender_addon.config import RenderSettings
    from blender_addon.core.blas import single_threaded_blas
    from blender_addon.core.dataset import FrameKey
    from blender_addon.core.priority import WORKER_NICE, lower_this_thread
    from blender_addon.engine import quiet_stdout, render_bare
    from blender_addon.exr import read_exr
    from blender_addon.labels import pass_channel

    single_threaded_blas()  # as pipeline.run sets it up
    out = Path(tempfile.mkdtemp(prefix="bench-parts-"))
    s = RenderSettings(meshes=str(ROOT / "meshes"), out=str(out), resolution=args.resolution, device=args.device,
                       **view_settings(args), **({"samples": args.samples} if args.samples else {})).validate()
    scene, tmp_exr = bench_scene(args.patient, s, out)
    pipeline.render_frame(FrameKey(args.patient, 10_000), s.seed, scene, s, out, tmp_exr, {})  # warm-up
    workers = {0: ThreadPoolExecutor(max_workers=1),  # at the main thread's priority, and as render.py's is
               WORKER_NICE: ThreadPoolExecutor(max_workers=1, initializer=lower_this_thread)}

    def bare_beside_cpu_work(ms: float, nice: int):
        """A bare render while another thread does `ms` of CPU work (numpy, as the worker's is): what a
        millisecond of the worker's CPU costs the render beside it."""
        def work():
            a, t0 = np.random.default_rng(0).random(1 << 17), time.thread_time()
            while time.thread_time() - t0 < ms / 1000:
                np.sqrt(a).sum()
        job = workers[nice].submit(work)
        render_bare(scene.scene)
        job.result()

    def passes_render(write: bool, read: bool):
        scene.scene.render.filepath = tmp_exr
        with quiet_stdout():
            bpy.ops.render.render(write_still=write)
        if read:
            read_exr(tmp_exr, keep=pass_channel)  # as render_passes reads it

    calls = {"bare RGB": lambda: render_bare(scene.scene), "passes, no file": lambda: passes_render(False, False),
             "passes + EXR write": lambda: passes_render(True, False),
             "passes + EXR write + read": lambda: passes_render(True, True),
             f"bare RGB beside {CPU_WORK_MS} ms of CPU work": lambda: bare_beside_cpu_work(CPU_WORK_MS, 0),
             f"the same, that work at nice +{WORKER_NICE}": lambda: bare_beside_cpu_work(CPU_WORK_MS, WORKER_NICE)}
    times = {k: [] for k in calls}
    plan_t, finish_t = [], []
    for k in range(args.overhead_parts):
        t = time.perf_counter()
        plan = pipeline.plan_frame(FrameKey(args.patient, k), s.seed, scene, s)
        plan_t.append(time.perf_counter() - t)
        passes, render_s = pipeline.render_plan(plan, scene, tmp_exr)  # poses the scene as planned
        order = list(calls)
        np.random.default_rng(k).shuffle(order)
        for name in order:
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        pipeline.finish_frame(plan, passes, render_s, s, out, {})
        finish_t.append(time.perf_counter() - t)
    bare = float(np.median(times["bare RGB"]))
    rows = {name: {"s": round(float(np.median(v)), 4), "over_bare": round(float(np.median(v)) / bare, 3)}
            for name, v in times.items()}
    rows["worker: plan_frame (view sampling)"] = {"s": round(float(np.median(plan_t)), 4),
                                                  "over_bare": round(float(np.median(plan_t)) / bare, 3)}
    rows["worker: finish_frame (labels, writes)"] = {"s": round(float(np.median(finish_t)), 4),
                                                     "over_bare": round(float(np.median(finish_t)) / bare, 3)}
    for w in workers.values():
        w.shutdown()
    beside = rows[f"bare RGB beside {CPU_WORK_MS} ms of CPU work"]["s"] - rows["bare RGB"]["s"]
    beside_nice = rows[f"the same, that work at nice +{WORKER_NICE}"]["s"] - rows["bare RGB"]["s"]
    print(f"{'part (median of ' + str(args.overhead_parts) + ' frames)':40s} {'s':>7s} {'/ bare':>7s}")
    for name, r in rows.items():
        print(f"{name:40s} {r['s']:7.4f} {r['over_bare']:7.3f}")
    print(f"each ms of CPU work beside a render made it {beside * 1000 / CPU_WORK_MS:.2f} ms longer; "
          f"{beside_nice * 1000 / CPU_WORK_MS:.2f} ms at nice +{WORKER_NICE} (the render worker's)")
    return {"resolution": args.resolution, "samples": s.samples, **view_settings(args),
            "frames": args.overhead_parts, "parts": rows,
            "render_ms_per_ms_of_cpu_work_beside": round(beside * 1000 / CPU_WORK_MS, 3),
            "render_ms_per_ms_of_cpu_work_beside_at_worker_nice": round(beside_nice * 1000 / CPU_WORK_MS, 3)}


def view_settings(args) -> dict:
    """The view settings of the speed and overhead runs (render.py's defaults unless given)."""
    return {"view": args.view, "retraction": args.retraction, "fov_mask": args.fov_mask}


def png_costs(folder: Path, n: int = 10) -> dict:
    """PNG encoding of a data set's rendered images and class images: ms and KiB a frame for each filter,
    zlib level and strategy."""
    from blender_addon.core import png

    files = sorted(folder.glob("*/image/*.png"))
    if not files:
        raise SystemExit(f"--png {folder}: no */image/*.png there (a render.py output folder)")
    files = files[::max(1, len(files) // n)][:n]
    sets = {"image": [png.decode(f.read_bytes()) for f in files],
            "segmentation": [png.decode((f.parent.parent / "segmentation" / f.name).read_bytes()) for f in files
                             if (f.parent.parent / "segmentation" / f.name).is_file()]}
    rows = {}
    for kind, images in sets.items():
        for name in png.FILTERS:
            for level in (1, 3, 6):
                for strategy in png.STRATEGIES:
                    t, size = time.perf_counter(), 0
                    for a in images:
                        size += len(png.encode(a, level, name, strategy))
                    rows[f"{kind}: {name}, level {level}, {strategy}"] = {
                        "ms": round((time.perf_counter() - t) / max(1, len(images)) * 1000, 2),
                        "KiB": round(size / max(1, len(images)) / 1024, 1)}
    print(f"PNG encoding, {len(files)} frames of {folder} ({sets['image'][0].shape[1]}x{sets['image'][0].shape[0]})")
    for name, r in rows.items():
        print(f"  {name:40s} {r['ms']:6.2f} ms {r['KiB']:7.1f} KiB")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--patient", default="patient01")
    p.add_argument("--resolution", default="452x256")
    p.add_argument("--samples", type=int, help="Cycles samples (default: the renderer's default)")
    p.add_argument("--frames", type=int, default=8, help="frames for speed and label overhead")
    p.add_argument("--rounds", type=int, default=3, help="rounds of bare and overlapped blocks for the overhead")
    p.add_argument("--memory-frames", type=int, default=500, help="frames of the memory run (0: skip)")
    p.add_argument("--memory-resolution", default="96x64")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--quality", action="store_true", help="compare render settings: speed and PSNR against a "
                                                          "128-sample reference (replaces the speed run)")
    p.add_argument("--quality-frames", type=int, default=4)
    p.add_argument("--view", default="liver", choices=("liver", "cholecystectomy", "mixed"))
    p.add_argument("--retraction", default="lift", choices=("lift", "turn"),
                   help="cholecystectomy views: render.py's --retraction")
    p.add_argument("--fov-mask", default="none", choices=("none", "circle"), help="render.py's --fov-mask")
    p.add_argument("--clip-frames", type=int, default=0, help="clip frames to time --flow vector against "
                                                              "--flow geometry (replaces the speed run)")
    p.add_argument("--overhead-parts", type=int, default=0, help="frames to take the label overhead apart on "
                                                                 "(replaces the speed run)")
    p.add_argument("--png", type=Path, help="a render.py output folder: time the PNG encoder's filters and "
                                            "levels on its images (replaces the speed run)")
    args = p.parse_args()
    if args.png:
        figures = {"png": png_costs(args.png)}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return 0
    if args.overhead_parts:
        figures = {"overhead_parts": overhead_parts(args)}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return 0
    if args.clip_frames:
        figures = {"clip_flow": clip_cost(args)}
        print(json.dumps(figures["clip_flow"], indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return 0
    if args.quality:
        figures = {"quality": quality(args)}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return 0
    print(f"speed: {args.frames} frames at {args.resolution}, {args.samples or 'default'} samples, {args.device}",
          flush=True)
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
