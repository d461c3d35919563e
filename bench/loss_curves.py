"""Compare the loss curves of two translator runs (e.g. the same seed in float32 and in bf16).

    python -m backend.train --config configs/cpu.yaml --renders data/A --real FRAMES --out runs/curve_none \
        --iterations 400 --set cpu_amp=none --set log_iter=10
    python -m backend.train ... --out runs/curve_bf16 ... --set cpu_amp=bf16 --set log_iter=10
    python bench/loss_curves.py runs/curve_none runs/curve_bf16 --windows 4

Reads each run's log.jsonl and prints, per loss and per window of iterations, both runs' mean and the
relative difference, plus the largest relative difference over all logged points. Only iterations
logged by both runs are compared.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_log(run: Path) -> dict[int, dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        raise SystemExit(f"loss_curves: {path} does not exist (not a training run folder?)")
    rows = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"loss_curves: {path} line {n} is not JSON") from None
        if "iteration" in row:
            rows[int(row["iteration"])] = row  # a resumed run may log an iteration twice: the last wins
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--windows", type=int, default=4, help="split the common iterations into this many windows")
    p.add_argument("--keys", nargs="+", default=["gen/total", "dis/total", "gen/recon_x_a", "gen/recon_x_b",
                                                  "gen/cyc_x_a", "gen/ms_ssim_a", "gen/adv_b", "dis/b"])
    args = p.parse_args()
    if args.windows < 1:
        p.error(f"--windows {args.windows}: must be >= 1")
    a, b = read_log(args.first), read_log(args.second)
    its = sorted(set(a) & set(b))
    if not its:
        p.error(f"{args.first} and {args.second} have no logged iteration in common")
    keys = [k for k in args.keys if all(k in a[i] and k in b[i] for i in its)]
    size = -(-len(its) // args.windows)
    windows = [its[i:i + size] for i in range(0, len(its), size)]
    print(f"{args.first.name} vs {args.second.name}: {len(its)} common logged iterations "
          f"({its[0]}-{its[-1]}), {len(windows)} windows; mean per window, relative difference of the means")
    print("| loss | " + " | ".join(f"it {w[0]}-{w[-1]}" for w in windows) + " | largest point difference |")
    print("|---|" + "---|" * (len(windows) + 1))
    for k in keys:
        cells = []
        for w in windows:
            ma = sum(a[i][k] for i in w) / len(w)
            mb = sum(b[i][k] for i in w) / len(w)
            cells.append(f"{ma:.3f} / {mb:.3f} ({(mb - ma) / abs(ma) * 100:+.1f}%)" if ma else f"{ma:.3f} / {mb:.3f}")
        worst = max(abs(b[i][k] - a[i][k]) / abs(a[i][k]) for i in its if a[i][k])
        print(f"| `{k}` | " + " | ".join(cells) + f" | {worst * 100:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
