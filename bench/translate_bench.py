"""Translation benchmark: images per second end to end (read render, translate, PNG written).

    python bench/translate_bench.py --data data/A                 # CPU, paper-size networks
    python bench/translate_bench.py --data data/A --device cuda --batch-frames 32
    python bench/translate_bench.py --data data/A --amp none bf16      # float32 and bf16 side by side
    python bench/translate_bench.py --data data/A --device cuda --upsample phases plain   # the decoder's two ways

Uses a checkpoint with the paper's architecture and freshly initialised weights (the speed does
not depend on the weights) unless --checkpoint is given. Translates into a scratch copy of the
data set's renders and index, then prints images/s and the share of worker time spent encoding
PNGs, and the projected time for 100 000 images at this rate; with several --amp values, one such
line per value, each into its own scratch copy, in one run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.common.precision import CPU_AMPS, bf16_summary  # noqa: E402
from backend.translator.config import UPSAMPLES, TrainConfig  # noqa: E402


def make_checkpoint(path: Path, upsample: str) -> None:
    from backend.translator.networks import build_networks

    cfg = TrainConfig()
    cfg.gen.upsample = upsample
    nets = build_networks(cfg)
    torch.save({"iteration": 0, "config": cfg.to_dict(), **{k: m.state_dict() for k, m in nets.items()}}, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "A")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--styles", type=int, default=5)
    p.add_argument("--batch-frames", type=int, default=4)
    p.add_argument("--frames", type=int, default=8, help="frames to translate (from the start of the index)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", nargs="+", default=["auto"], choices=list(CPU_AMPS),
                   help="backend.translate's --amp, each timed in turn (none: float32)")
    p.add_argument("--upsample", nargs="+", choices=list(UPSAMPLES),
                   help="the fresh checkpoint's gen.upsample, each timed in turn (default: the config's)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.upsample and args.checkpoint:
        p.error("--upsample sets the fresh checkpoint's decoder; a --checkpoint keeps its own")
    from blender_addon.core.dataset import read_index

    entries = read_index(args.data)[:args.frames]
    if args.device == "cpu":
        print(f"CPU bf16 features: {bf16_summary()}", flush=True)
    results = []
    for upsample in args.upsample or [None]:
        for amp in args.amp:
            result = run(args, entries, amp, upsample)
            if result is None:
                return 1
            results.append(result)
            print(json.dumps(result, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=1) + "\n")
    return 0


def run(args, entries: list[dict], amp: str, upsample: str | None) -> dict | None:
    """Translate `entries` once with --amp `amp` (and the fresh checkpoint's gen.upsample `upsample`) into a
    scratch copy; the figures, or None on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scratch = tmp / "A"
        (scratch / "index").mkdir(parents=True)
        shutil.copy(args.data / "dataset.json", scratch / "dataset.json")
        with open(scratch / "index" / "shard-0000-of-0001.jsonl", "w") as f:
            for e in entries:
                f.write(json.dumps(e) + "\n")
                for kind in ("image", "segmentation", "meta"):  # what translation reads (and keeps)
                    dst = scratch / e[kind]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(args.data / e[kind], dst)
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = tmp / "paper_arch.pt"
            upsample = upsample or TrainConfig().gen.upsample
            make_checkpoint(ckpt, upsample)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "backend.translate", "--checkpoint", str(ckpt), "--data",
                               str(scratch), "--styles", str(args.styles), "--batch-frames", str(args.batch_frames),
                               "--device", args.device, "--workers", str(args.workers), "--sheet", "0", "--amp", amp],
                              cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return None
        last = [ln for ln in proc.stderr.splitlines() if ln.startswith("done:")][-1]
        start = [ln for ln in proc.stderr.splitlines() if " styles on " in ln][-1]
        precision = start.split(" styles on ", 1)[1].split(", ", 1)[1]  # as backend.translate said it
        images = len(entries) * args.styles
        png_s = float(last.split("PNG encoding ")[1].split(" s")[0])
        inner = float(last.split(" in ")[1].split(" s")[0])
        result = {
            "device": args.device, "amp": amp, "precision": precision, "upsample": upsample or "checkpoint's",
            "frames": len(entries), "styles": args.styles, "images": images,
            "batch_frames": args.batch_frames, "workers": args.workers,
            "resolution": json.loads((args.data / "dataset.json").read_text())["resolution"],
            "images_per_s_translation_loop": round(images / inner, 2),
            "images_per_s_with_process_start": round(images / wall, 2),
            "png_worker_s_share_of_loop": round(png_s / inner, 3),
            "projected_minutes_for_100k_images": round(100_000 / (images / inner) / 60, 1),
        }
        if args.device.startswith("cuda"):
            result["gpu"] = torch.cuda.get_device_name(0)
        return result


if __name__ == "__main__":
    sys.exit(main())
