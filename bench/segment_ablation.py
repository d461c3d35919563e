"""Segmentation ablation: training recipes side by side, each with the same wall-time budget.

    python bench/segment_ablation.py --synthetic runs/gpuA --use render --held-out patient06 --minutes 10 \
        --real-images endoscapes/images --real-masks endoscapes/masks --split endoscapes/split.json
    python bench/segment_ablation.py ... --arms old new "new-noraresampling:rare_share=0"
    python bench/segment_ablation.py --synthetic runs/gpuA --held-out patient06 --time-layouts
    python bench/segment_ablation.py ... --settings 1e-4:none 1e-4:median   # old recipe, LR:class balance

An arm is a recipe: `old` (before issue 16: Adam, cross-entropy, constant 1e-4, uniform frames),
`new` (the default of backend/segmenter/recipe.py), or NAME:key=value,... overriding the new one
(keys: lr, loss, schedule, warmup, rare_share, optimizer, amp, class_balance=none|median). Each arm:

1. synthetic: trains TernausNet-11 from the same seed on the rendered frames of every patient but
   --held-out, then scores the held-out patient's frames (mean over frames and median Dice per
   class: can it learn the rendered classes at all?) and, with real frames given, every real frame
   of the val split (does it transfer?);
2. real (with --real-images/--real-masks/--split): trains the same recipe on the real *train*
   frames and scores the real *val* frames (per class, the median over val videos of each video's
   median Dice, as backend.efficacy).

The budget: --minutes of training per arm and data source. A short probe of the arm's own recipe
(2 warm-up + 4 timed iterations) turns it into iterations, so the cosine schedule knows its end and
every arm gets the same time (the probe is not counted). One JSON line per arm and source, then a
Markdown table. --time-layouts instead times a training step in the default layout and in
channels_last (the recipe leaves channels_last out because it was slower on a 2-core EPYC).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.common.devices import resolve_device  # noqa: E402
from backend.segmenter.data import (  # noqa: E402
    class_frequencies,
    median_frequency_weights,
    read_pair,
    synthetic_samples,
)
from backend.segmenter.efficacy import split_real  # noqa: E402
from backend.segmenter.labels import PRESETS, SegmentError, load_preset  # noqa: E402
from backend.segmenter.metrics import frame_dice, per_patient_median  # noqa: E402
from backend.segmenter.model import TernausNet11  # noqa: E402
from backend.segmenter.recipe import DEFAULTS, OLD_RECIPE, segmentation_loss  # noqa: E402
from backend.segmenter.training import TrainOptions, evaluate, predict, train_model  # noqa: E402
from blender_addon.core.settings import parse_resolution  # noqa: E402

KEYS = {"lr": float, "loss": str, "schedule": str, "warmup": float, "rare_share": float, "optimizer": str,
        "amp": str, "class_balance": str}
SYNTH_CLASSES = ["liver", "gallbladder", "tool"]


def parse_arm(text: str) -> tuple[str, dict]:
    """'old', 'new' or NAME:key=value,... (over the new recipe) -> (name, recipe dict)."""
    if text == "old":
        return "old", {**OLD_RECIPE, "class_balance": "none"}
    base = {**DEFAULTS, "class_balance": "none"}
    if text == "new":
        return "new", base
    name, sep, body = text.partition(":")
    if not sep or not name:
        raise SegmentError(f"--arms {text!r}: expected old, new or NAME:key=value,...")
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in KEYS:
            raise SegmentError(f"--arms {text!r}: {item!r} is not key=value with key one of {', '.join(KEYS)}")
        try:
            base[key] = KEYS[key](value)
        except ValueError:
            raise SegmentError(f"--arms {text!r}: {key}={value!r} is not a {KEYS[key].__name__}") from None
    return name, base


def parse_setting(text: str) -> tuple[str, dict]:
    """The pre-issue-16 form LR:BALANCE: the old recipe with that learning rate and class balance."""
    lr, sep, balance = text.partition(":")
    try:
        rate = float(lr)
    except ValueError:
        rate = float("nan")
    if not sep or balance not in ("none", "median") or not rate > 0:
        raise SegmentError(f"--settings {text!r}: expected LR:BALANCE, e.g. 1e-4:none or 3e-4:median")
    return text, {**OLD_RECIPE, "lr": rate, "class_balance": balance}


def options(recipe: dict, iterations: int, a, weights) -> TrainOptions:
    fields = {k: recipe[k] for k in ("loss", "schedule", "warmup", "rare_share", "amp", "optimizer")}
    return TrainOptions(iterations, a.batch, recipe["lr"], a.seed, True, a.workers,
                        weights if recipe["class_balance"] == "median" else None, **fields)


def budget_iterations(samples, preset, size, opts: TrainOptions, device, minutes: float) -> tuple[int, float]:
    """(iterations that fill `minutes`, seconds per iteration) from a probe of this recipe."""
    model = TernausNet11().to(device)
    train_model(model, samples, preset, size, replace(opts, iterations=2, workers=0), device, lambda *_: None, "probe")
    t0 = time.perf_counter()
    train_model(model, samples, preset, size, replace(opts, iterations=4, workers=0), device, lambda *_: None, "probe")
    per_it = (time.perf_counter() - t0) / 4
    return max(1, int(minutes * 60 / per_it)), per_it


def train_arm(samples, preset, size, recipe, a, device, weights) -> tuple[torch.nn.Module, dict]:
    probe = options(recipe, 1, a, weights)
    iterations, per_it = budget_iterations(samples, preset, size, probe, device, a.minutes) \
        if a.iterations is None else (a.iterations, float("nan"))
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    model = train_model(TernausNet11().to(device), samples, preset, size, options(recipe, iterations, a, weights),
                        device, log=lambda *_: None, desc="arm")
    return model, {"iterations": iterations, "probe_s_per_it": round(per_it, 2),
                   "train_s": round(time.perf_counter() - t0, 1)}


def video_median(rows: list[dict], classes: list[str]) -> dict[str, float]:
    med = per_patient_median(rows, classes)
    return {c: round(float(np.nanmedian([v[c] for v in med.values()])), 3) for c in classes}


def held_out_scores(model, held, preset, size, device) -> dict:
    rows = []
    for s in held:
        pred, _ = predict(model, s, size, device)
        rows.append(frame_dice(pred, read_pair(s, preset)[1], SYNTH_CLASSES))
    return {"held_out_frame_mean": {c: round(float(np.nanmean([r[c] for r in rows])), 3) for c in SYNTH_CLASSES},
            "held_out_median": {c: round(float(np.nanmedian([r[c] for r in rows])), 3) for c in SYNTH_CLASSES}}


def time_layouts(size, batch: int, device, steps: int = 4) -> None:
    """Seconds per training step (forward, dice_ce, backward, AdamW) in both memory layouts."""
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = TernausNet11().to(device).to(memory_format=layout)
        x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=layout)
        t = torch.randint(0, 8, (batch, *size), device=device)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            loss = segmentation_loss(model(x), t, "dice_ce")
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"layout": "channels_last" if layout is torch.channels_last else "contiguous",
                          "size": list(size), "batch": batch, "s_per_step": round(float(np.median(times[1:])), 3)}),
              flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", required=True, help="rendered data set")
    p.add_argument("--use", default="translation",
                   help="render, translation (default), both or a translation set (fda, colour)")
    p.add_argument("--held-out", required=True, help="synthetic patient kept for testing, e.g. patient06")
    p.add_argument("--real-images")
    p.add_argument("--real-masks")
    p.add_argument("--split", help="Endoscapes split.json (frame -> train/val); needed with real frames")
    p.add_argument("--preset", default="endoscapes")
    p.add_argument("--arms", nargs="+", default=["old", "new"], help="old, new or NAME:key=value,... (see above)")
    p.add_argument("--settings", nargs="+", metavar="LR:BALANCE",
                   help="the form before issue 16: the old recipe at learning rate LR with class balance none or "
                        "median (e.g. 1e-4:none 3e-4:median); replaces --arms")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time per arm and data source")
    p.add_argument("--iterations", type=int, help="a fixed number of iterations instead of --minutes")
    p.add_argument("--skip-synthetic", action="store_true", help="only the real train -> real val comparison")
    p.add_argument("--resolution", default="128x64", help="WxH network input (multiples of 32)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--time-layouts", action="store_true", help="only time a step in both memory layouts")
    a = p.parse_args(argv)
    try:
        return run(a)
    except SegmentError as e:
        p.error(str(e))


def run(a) -> int:
    width, height = parse_resolution(a.resolution, "--resolution", multiple=32)
    size, device = (height, width), resolve_device(a.device)
    if not a.minutes > 0 or (a.iterations is not None and a.iterations < 1):
        raise SegmentError(f"--minutes {a.minutes} / --iterations {a.iterations}: must be more than zero")
    if a.time_layouts:
        time_layouts(size, a.batch, device)
        return 0
    arms = [parse_setting(t) for t in a.settings] if a.settings else [parse_arm(t) for t in a.arms]
    ours = PRESETS["lapsynth"]
    synth = synthetic_samples(Path(a.synthetic), a.use)
    train = [s for s in synth if s.patient != a.held_out]
    held = [s for s in synth if s.patient == a.held_out]
    if not held or not train:
        raise SegmentError(f"--held-out {a.held_out}: needs frames of that patient and of others")
    real_train, real_val, real_preset = [], [], None
    if a.real_images:
        if not (a.real_masks and a.split):
            raise SegmentError("--real-images needs --real-masks and --split")
        real_preset = load_preset(a.preset)
        real_train, real_val = split_real(Path(a.real_images), Path(a.real_masks), Path(a.split), real_preset)
    budget = f"{a.iterations} iterations" if a.iterations else f"{a.minutes:g} min"
    print(f"{len(train)} training renders, {len(held)} held-out ({a.held_out}); {len(real_train)} real train, "
          f"{len(real_val)} real val frames; {budget} per arm, batch {a.batch} at {a.resolution}, "
          f"{torch.get_num_threads()} threads", flush=True)
    results = []
    for name, recipe in arms:
        if not a.skip_synthetic:
            weights = median_frequency_weights(class_frequencies(train, ours)) \
                if recipe["class_balance"] == "median" else None
            model, r = train_arm(train, ours, size, recipe, a, device, weights)
            r = {"arm": name, "source": "renders", **r, **held_out_scores(model, held, ours, size, device)}
            if real_val:
                r["real_val_video_median"] = video_median(evaluate(model, real_val, real_preset, size, device),
                                                          real_preset.classes)
            results.append(r)
            print(json.dumps({**r, "recipe": recipe}), flush=True)
        if real_train:
            weights = median_frequency_weights(class_frequencies(real_train, real_preset)) \
                if recipe["class_balance"] == "median" else None
            model, r = train_arm(real_train, real_preset, size, recipe, a, device, weights)
            r = {"arm": name, "source": "real train", **r, "real_val_video_median": video_median(
                evaluate(model, real_val, real_preset, size, device), real_preset.classes)}
            results.append(r)
            print(json.dumps({**r, "recipe": recipe}), flush=True)
    print("\n| arm | trained on | iterations | held-out liver | gallbladder | tool | real val gallbladder | tool |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        h = r.get("held_out_frame_mean", {})
        v = r.get("real_val_video_median", {})
        print(f"| {r['arm']} | {r['source']} | {r['iterations']} | " + " | ".join(
            f"{d[c]:.2f}" if c in d else "-" for d, c in ((h, "liver"), (h, "gallbladder"), (h, "tool"),
                                                           (v, "gallbladder"), (v, "tool"))) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
