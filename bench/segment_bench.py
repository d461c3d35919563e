"""Segmentation benchmark: TernausNet-11 training and evaluation speed.

    python bench/segment_bench.py --synthetic data/A                       # CPU
    python bench/segment_bench.py --synthetic data/A --device cuda --batch 16 --workers 0 4 8

Prints, per loader-worker count: training iterations per second (decode + augment + forward +
backward + Adam step on real batches of the data set's renders) and the time the loop waited for
data; then evaluation frames per second on real frames (decode, forward, upsample to the mask's
size, Dice), when --real-images is given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.common.devices import resolve_device  # noqa: E402
from backend.segmenter.data import TrainFrames, real_samples, synthetic_samples  # noqa: E402
from backend.segmenter.labels import IGNORE, PRESETS  # noqa: E402
from backend.segmenter.model import TernausNet11  # noqa: E402
from backend.segmenter.training import evaluate  # noqa: E402
from blender_addon.core.settings import parse_resolution  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(samples, size, batch, workers, iters, warmup, device) -> dict:
    torch.manual_seed(0)
    model = TernausNet11().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = TrainFrames(samples, PRESETS["lapsynth"], size, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, sampler=range((iters + warmup) * batch),
                                         num_workers=workers, pin_memory=device.type == "cuda")
    wait, t_start = 0.0, None
    t = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            sync(device)
            t_start, wait = time.perf_counter(), 0.0
        wait += time.perf_counter() - t
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        t = time.perf_counter()
    total = time.perf_counter() - t_start
    return {"workers": workers, "it_per_s": round(iters / total, 3), "images_per_s": round(iters * batch / total, 2),
            "data_wait_share": round(wait / total, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", type=Path, default=ROOT / "data" / "A")
    p.add_argument("--use", default="render", choices=("render", "translation", "both"))
    p.add_argument("--real-images", type=Path, default=ROOT.parent / "shared" / "data" / "real" / "endoscapes" / "images")
    p.add_argument("--real-masks", type=Path, default=ROOT.parent / "shared" / "data" / "real" / "endoscapes" / "masks")
    p.add_argument("--eval-frames", type=int, default=20)
    p.add_argument("--resolution", default="448x256", help="WxH network input (multiples of 32)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    width, height = parse_resolution(args.resolution, "--resolution", multiple=32)
    device, size = resolve_device(args.device), (height, width)
    samples = synthetic_samples(args.synthetic, args.use)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"resolution {width}x{height}, "
          f"batch {args.batch}, {len(samples)} synthetic frames", flush=True)
    rows = []
    for w in args.workers:
        row = {"stage": "train", "resolution": args.resolution, "batch": args.batch,
               **train_speed(samples, size, args.batch, w, args.iters, args.warmup, device)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.real_images.is_dir() and args.real_masks.is_dir():
        reals = real_samples(args.real_images, args.real_masks, PRESETS["endoscapes"])[:args.eval_frames]
        model = TernausNet11().to(device)
        evaluate(model, reals[:1], PRESETS["endoscapes"], size, device)  # warm-up
        sync(device)
        t = time.perf_counter()
        evaluate(model, reals, PRESETS["endoscapes"], size, device)
        sync(device)
        row = {"stage": "eval", "resolution": args.resolution,
               "frames_per_s": round(len(reals) / (time.perf_counter() - t), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
