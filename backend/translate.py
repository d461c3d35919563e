"""Write realistic versions of every render next to its labels.

    python -m backend.translate --checkpoint runs/NAME/checkpoints/ckpt_00375000.pt --data data/A \\
        [--styles 5] [--style-from REAL_DIR] [--seed S] [--shard I/N] [--noise on|off] [--amp auto|bf16|none] \\
        [--name SET]
    torchrun --nproc-per-node=K -m backend.translate ...      (each process takes a disjoint part)
    python -m backend.translate --method fda --style-from REAL_DIR --data data/A [--beta 0.01]
    python -m backend.translate --method colour --style-from REAL_DIR --data data/A

For every frame: its content is encoded once and decoded with K styles in one batch, each style
drawn from N(0, I) or encoded from a real frame picked from --style-from. The whole frame is
translated at label resolution (never cropped or resized), so labels stay pixel-aligned. Outputs:
`<patient>/translation/<frame>_<k>.png` and `<patient>/translation/<frame>.json` (style vectors,
style sources, seeds: enough to re-create any output exactly), written atomically, the JSON last;
then the frame enters `translation_index/*.jsonl`. Re-running skips finished frames.

A `model: cut` checkpoint (the one-sided translator) is detected from its config and written the same
way; it has no style code, so output k of a frame is the frame under encoder noise drawn from seed k
(--noise on), and the K outputs differ little. With --style-from, cut's output k also takes the
low-frequency amplitude spectrum (FDA, --beta) of a real frame drawn from seed k: colour and brightness
from a real exemplar, texture and edges from the network. `--name SET` writes another set beside `translation`
(`<patient>/SET/`, `SET_index/`, `SET.json`), e.g. `--name cut` to keep both models' translations.

--method fda and --method colour are the training-free baselines (backend/translator/baselines.py):
Fourier domain adaptation and colour statistics transfer from a real frame of --style-from drawn for
each output from its seed. They write their own translation set beside the learned one (`--name`,
default the method's name: `<patient>/fda/`, `fda_index/`, `fda.json`), in the same format, so
training and evaluation read them like any translation (`backend.segment --use fda`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from .common.cli import error_exit, log, parser
from .translator.baselines import run_baseline
from .translator.translation import (
    BASELINE_METHODS,
    KEEP_RENDER,
    KEEP_RENDER_LOOKS,
    METHODS,
    OUTSIDE_FOV_CHOICES,
    RefusedByLead,
    TranslateOptions,
    run,
    world_from_env,
)

PROG = "python -m backend.translate"


def build_parser():
    p = parser(PROG, __doc__)
    p.add_argument("--method", choices=METHODS,
                   help="default: the learned translator of --checkpoint, munit or cut as its config says (naming "
                        "one refuses a checkpoint of the other); fda, colour: training-free baselines")
    p.add_argument("--checkpoint", type=Path, help="a backend.train checkpoint (model munit or cut)")
    p.add_argument("--name", help="translation set to write (default: translation for a learned one, else the "
                                  "method)")
    p.add_argument("--beta", type=float, default=0.01,
                   help="fda (and cut with --style-from): half-width of the swapped low-frequency band, "
                        "fraction of min(H, W)")
    p.add_argument("--data", required=True, type=Path, help="rendered data set (read through its index)")
    p.add_argument("--styles", type=int, default=5, help="translations per frame (the paper: 5)")
    p.add_argument("--style-from", help="folder/list of real frames: munit encodes styles from them (default: "
                                        "N(0, I)); fda and colour take their spectrum or colours; cut takes "
                                        "their low-frequency spectrum (FDA, --beta) per output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1", help="translate only part I of N (0-based)")
    p.add_argument("--noise", choices=("on", "off"), default="on", help="encoder input noise, as in training")
    p.add_argument("--batch-frames", type=int, default=8,
                   help="frames per batch, each decoded with K styles; part of the settings (outputs depend on it)")
    p.add_argument("--workers", type=int, default=4, help="threads encoding PNGs")
    p.add_argument("--png-level", type=int, default=1, help="zlib level of the PNGs (1: fast, 9: small)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                   help="autocast: auto = bf16 on CUDA and on CPUs with amx_bf16 or avx512_bf16, float32 elsewhere; "
                        "bf16 or none (float32) force either; part of the settings (outputs depend on it)")
    p.add_argument("--outside-fov", choices=OUTSIDE_FOV_CHOICES, default="black",
                   help="renders with a circular field (--fov-mask circle): keep the pixels outside it black, "
                        "as in real frames (default; colour transfer then also measures the render inside the "
                        "field only), or keep what the translator or baseline made there (sets made before "
                        "this option: learned ones before 2026-11-26, baselines before 2026-11-27)")
    p.add_argument("--keep-render", choices=tuple(KEEP_RENDER), default="none",
                   help="tools: every output keeps the render's own pixels where the class image shows a tool "
                        "(shaft or tip), for learned translators and baselines alike; tools+gallbladder: where "
                        "it shows a tool or the gallbladder; none: translate everything")
    p.add_argument("--keep-render-look", choices=KEEP_RENDER_LOOKS, default="render",
                   help="render: kept pixels as rendered; styled (cut with --style-from): kept pixels are put into "
                        "the network's output before it takes the real exemplar's low band, so they share the "
                        "output's colour and brightness (a diagnostic: it costs tool Dice, docs/evaluation.md)")
    p.add_argument("--sheet", type=int, default=6, help="frames in <set>_sheet.png (0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace translations made with other settings")
    return p


def translate(args) -> int:
    opts = TranslateOptions(**{**vars(args), "noise": args.noise == "on"})
    if opts.method in BASELINE_METHODS:
        run_baseline(opts, say=log)
        return 0
    rank, world = world_from_env()
    share = lambda value: value  # noqa: E731
    if world > 1:
        dist.init_process_group("gloo")

        def share(value):  # rank 0's value on every rank
            box = [value]
            dist.broadcast_object_list(box, src=0)
            return box[0]
    try:
        run(opts, rank, world, share, say=log if rank == 0 else (lambda m: None))
    except RefusedByLead:
        return 2  # rank 0 printed the reason; the others stop in step with it, quietly
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return error_exit(PROG, lambda: translate(args))


if __name__ == "__main__":
    sys.exit(main())
