"""Segmentation ablation: which training settings let TernausNet-11 learn a synthetic set.

    python bench/segment_ablation.py --synthetic data/A --real-images endoscapes/images \
        --real-masks endoscapes/masks --held-out patient10 --settings 1e-4:none 1e-4:median

Each setting (learning rate : class balance) trains one model from the same seed on the synthetic
frames of every patient but --held-out, then prints its mean Dice per class on the held-out
patient's synthetic frames (can it learn the rendered classes at all?) and, when real frames are
given, the per-video median and per-frame mean Dice on them (does it transfer?). A quick,
low-resolution comparison of settings before a long run, not the paper's protocol.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
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
    real_samples,
    synthetic_samples,
)
from backend.segmenter.labels import PRESETS, load_preset  # noqa: E402
from backend.segmenter.metrics import frame_dice, per_patient_median  # noqa: E402
from backend.segmenter.model import TernausNet11  # noqa: E402
from backend.segmenter.training import TrainOptions, evaluate, predict, train_model  # noqa: E402
from blender_addon.core.settings import parse_resolution  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", required=True, help="rendered data set")
    p.add_argument("--use", default="translation", choices=("translation", "render", "both"))
    p.add_argument("--held-out", required=True, help="synthetic patient kept for testing, e.g. patient10")
    p.add_argument("--real-images")
    p.add_argument("--real-masks")
    p.add_argument("--preset", default="endoscapes")
    p.add_argument("--settings", nargs="+", default=["1e-4:none", "1e-4:median"],
                   help="LR:BALANCE pairs, BALANCE none or median")
    p.add_argument("--resolution", default="128x64", help="WxH network input (multiples of 32)")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    width, height = parse_resolution(a.resolution, "--resolution", multiple=32)
    size, device = (height, width), resolve_device(a.device)
    ours = PRESETS["lapsynth"]
    synth = synthetic_samples(Path(a.synthetic), a.use)
    train = [s for s in synth if s.patient != a.held_out]
    held = [s for s in synth if s.patient == a.held_out]
    if not held or not train:
        p.error(f"--held-out {a.held_out}: needs frames of that patient and of others")
    real_preset = load_preset(a.preset)
    reals = real_samples(Path(a.real_images), Path(a.real_masks), real_preset) if a.real_images else []
    freq = class_frequencies(train, ours)
    classes = ["liver", "gallbladder", "tool"]
    print(f"{len(train)} training frames, {len(held)} held-out ({a.held_out}), {len(reals)} real; "
          f"{a.iterations} iterations of {a.batch} at {a.resolution}", flush=True)
    for setting in a.settings:
        lr_text, balance = setting.split(":")
        weights = median_frequency_weights(freq) if balance == "median" else None
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = train_model(TernausNet11().to(device), train, ours, size,
                            TrainOptions(a.iterations, a.batch, float(lr_text), 0, True, a.workers, weights),
                            device, log=lambda *_: None, desc=setting)
        seconds = time.perf_counter() - t0
        rows = []
        for s in held:
            pred, _ = predict(model, s, size, device)
            rows.append(frame_dice(pred, read_pair(s, ours)[1], classes))
        r = {"setting": setting, "train_s": round(seconds, 1),
             "held_out_mean": {c: round(float(np.nanmean([x[c] for x in rows])), 3) for c in classes}}
        if reals:
            real_rows = evaluate(model, reals, real_preset, size, device)
            med = per_patient_median(real_rows, real_preset.classes)
            r["real_video_median"] = {c: round(float(np.nanmedian([v[c] for v in med.values()])), 3)
                                      for c in real_preset.classes}
            r["real_frame_mean"] = {c: round(float(np.nanmean([x[c] for x in real_rows])), 3)
                                    for c in real_preset.classes}
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
