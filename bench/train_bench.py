"""Translator training benchmark at the paper's configuration (batch 1).

    python bench/train_bench.py                              # CPU: 256x256 and 256x448 crops
    python bench/train_bench.py --device cuda --amp bf16 none --compile off on
    python bench/train_bench.py --config configs/cpu.yaml --crops 128x224       # any config's networks

Prints, per crop size and setting, iterations per second, one iteration's time split into data
loading (decode + augment of one render and one real frame), discriminator update and generator
update, and peak memory (GPU: max allocated; CPU: peak resident set of the process).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.common.devices import resolve_device  # noqa: E402
from backend.translator.config import TrainConfig, load_config  # noqa: E402
from backend.translator.data import DomainImages  # noqa: E402
from backend.translator.trainer import Trainer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_time(cfg: TrainConfig, real: list[Path], renders: list[Path], n: int = 10) -> float:
    if not real or not renders:
        return float("nan")
    a = DomainImages(renders, "render", cfg.crop_image_height, cfg.crop_image_width, cfg.aug, 0)
    b = DomainImages(real, "real", cfg.crop_image_height, cfg.crop_image_width, cfg.aug, 0)
    t = time.perf_counter()
    for i in range(n):
        a[i], b[i]
    return (time.perf_counter() - t) / n


def bench(cfg: TrainConfig, device: torch.device, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    trainer = Trainer(cfg, device)
    x_a = torch.rand(cfg.batch_size, 3, cfg.crop_image_height, cfg.crop_image_width, device=device) * 2 - 1
    x_b = torch.rand_like(x_a) * 2 - 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    d_t, g_t = [], []
    for i in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        trainer.dis_update(x_a, x_b)
        sync(device)
        t1 = time.perf_counter()
        trainer.gen_update(x_a, x_b)
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            d_t.append(t1 - t0)
            g_t.append(t2 - t1)
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return {"dis_s": float(np.mean(d_t)), "gen_s": float(np.mean(g_t)), "peak_gib": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", type=Path, help="YAML config for the networks (default: the paper's)")
    p.add_argument("--crops", nargs="+", default=["256x256", "256x448"], help="HxW")
    p.add_argument("--amp", nargs="+", default=["bf16"], help="bf16, fp16, none (CUDA only)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--renders", type=Path, help="a rendered data set, for the data-loading time")
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "real" / "endoscapes" / "images")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    device = resolve_device(args.device)
    real = sorted(args.real.glob("*.jpg"))[:20] + sorted(args.real.glob("*.png"))[:20] if args.real.is_dir() else []
    renders = []
    if args.renders:
        from backend.translator.data import render_images

        renders = render_images(args.renders)[:20]
    else:
        renders = sorted((ROOT / "data" / "A").glob("*/image/*.png"))[:20]
    rows = []
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    for crop in args.crops:
        h, w = (int(v) for v in crop.lower().split("x"))
        for amp in args.amp:
            for comp in args.compile:
                cfg = load_config(args.config) if args.config else TrainConfig()
                cfg.crop_image_height, cfg.crop_image_width, cfg.amp, cfg.compile = h, w, amp, comp == "on"
                cfg.validate()
                r = bench(cfg, device, args.iters, args.warmup)
                r["data_s"] = data_time(cfg, real, renders) if renders else float("nan")
                it = r["dis_s"] + r["gen_s"] + (r["data_s"] if np.isfinite(r["data_s"]) else 0.0)
                row = {"crop": crop, "amp": amp if device.type == "cuda" else "none (cpu)", "compile": comp,
                       "it_per_s": round(1 / it, 3), "data_s": round(r["data_s"], 3), "dis_s": round(r["dis_s"], 3),
                       "gen_s": round(r["gen_s"], 3), "peak_gib": round(r["peak_gib"], 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
