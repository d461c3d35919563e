"""Translator variants side by side at equal iterations: losses, speed, structure kept, diversity.

    python bench/translator_ablation.py --renders runs/chole600_gb --real runs/endo_train.txt \
        --out runs/ablation18 --iterations 800 \
        --variant base= --variant linear=gen.content_activ=none --variant native=aug.render_scale=native

Each variant trains `python -m backend.train` (configs/cpu.yaml unless --config) into OUT/NAME for the
same number of iterations from the same seed, then writes K translations of every render as the set
`ablation_NAME` of the rendered data set (`python -m backend.translate`), and is scored on:
- the generator's loss terms, mean over the last fifth of the iterations (log.jsonl);
- iterations per second (mean of the logged rates);
- structure kept: MS-SSIM between the brightness of each render and of each translation;
- diversity: 1 - MS-SSIM between pairs of a render's translations.
Every step resumes (training from its checkpoints, translation from its index), so a killed run is
continued by the same command. The sets can then go into `python -m backend.efficacy --sources
ablation_NAME,...` for what they do to Dice on real frames. Prints a Markdown table; writes OUT/ablation.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.translator.quality import structure_and_diversity  # noqa: E402

TERMS = ("gen/total", "gen/adv_a", "gen/adv_b", "gen/recon_x_a", "gen/recon_c_a", "gen/cyc_x_a", "gen/ms_ssim_a",
         "dis/total")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"--variant {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...] (NAME letters, digits, _)")
    return name, [s for s in sets.split(",") if s]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def log_means(log: Path, iterations: int) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    last = [r for r in rows if r.get("iteration", 0) >= 0.8 * iterations]
    out = {t: float(np.mean([r[t] for r in last if t in r])) for t in TERMS if any(t in r for r in last)}
    rates = [r["it_per_s"] for r in rows if "it_per_s" in r]
    out["it_per_s"] = float(np.mean(rates)) if rates else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--renders", type=Path, required=True)
    ap.add_argument("--real", nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="configs/cpu.yaml")
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--variant", action="append", required=True, help="NAME=KEY=VALUE[,KEY=VALUE...]; NAME= for none")
    ap.add_argument("--styles", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1, help="PNG-writing threads of backend.translate")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    py = sys.executable
    report = {"renders": str(args.renders), "iterations": args.iterations, "config": args.config, "variants": {}}
    for name, sets in variants:
        run_dir = args.out / name
        t0 = time.time()
        run([py, "-m", "backend.train", "--config", args.config, "--renders", str(args.renders), "--real",
             *args.real, "--out", str(run_dir), "--iterations", str(args.iterations),
             *[a for s in sets for a in ("--set", s)]])
        ckpts = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))
        run([py, "-m", "backend.translate", "--checkpoint", str(ckpts[-1]), "--data", str(args.renders),
             "--name", f"ablation_{name}", "--styles", str(args.styles), "--sheet", "8",
             "--workers", str(args.workers)])
        quality = structure_and_diversity(args.renders, f"ablation_{name}")
        report["variants"][name] = {"set": sets, "checkpoint": str(ckpts[-1]), "wall_s": time.time() - t0,
                                    **log_means(run_dir / "log.jsonl", args.iterations),
                                    "structure": quality["structure_ms_ssim"]["mean"],
                                    "structure_worst": quality["structure_ms_ssim"]["worst"],
                                    "diversity": quality["diversity"]}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ablation.json").write_text(json.dumps(report, indent=1))
    cols = ["it_per_s", *TERMS, "structure", "structure_worst", "diversity"]
    print(f"\n{args.iterations} iterations each, {args.config}, renders {args.renders}")
    print("| variant | settings | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for name, r in report["variants"].items():
        print(f"| {name} | {' '.join(r['set']) or 'defaults'} | "
              + " | ".join(f"{r.get(c, float('nan')):.4f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
