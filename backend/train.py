"""Train the render -> real translator (asymmetric MUNIT with encoder noise and MS-SSIM structure loss).

    python -m backend.train --config configs/default.yaml --renders data/A --real FRAMES_DIR \\
        --out runs/NAME [--iterations N] [--resume] [--set KEY=VALUE ...]
    torchrun --nproc-per-node=K -m backend.train ...        (several GPUs or machines)

Any config key can be overridden with --set, dotted for sections (--set gen.style_dim=4). A run
whose output folder holds checkpoints resumes from the newest one; Ctrl-C or SIGTERM writes a
checkpoint and exits cleanly. TensorBoard logs go to OUT/tb, a JSON-lines log to OUT/log.jsonl,
image grids to OUT/images, checkpoints to OUT/checkpoints.
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch.distributed as dist

from .common.cli import error_exit, parser
from .translator.trainer import TrainingDiverged
from .translator.training import TrainOptions, train

PROG = "python -m backend.train"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def build_parser():
    p = parser(PROG, __doc__)
    # configs/ ships with the repository, not with a wheel: installed elsewhere, the same defaults come from
    # TrainConfig (configs/default.yaml is generated from it; a test keeps them equal)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None,
                   help="YAML config with MUNIT's key names (default: configs/default.yaml)")
    p.add_argument("--renders", required=True, type=Path, help="rendered data set (domain A), read through its index")
    p.add_argument("--real", required=True, nargs="+",
                   help="folders of real frames (recursive), list files (a path per line) and/or image files")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs, images)")
    p.add_argument("--iterations", type=int, help="train until this iteration (overrides max_iter)")
    p.add_argument("--resume", action="store_true", help="require a checkpoint in --out to continue from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--check-replicas", action="store_true",
                   help="at the end, verify that all DDP replicas hold identical weights")
    return p


def run(args) -> int:
    try:
        code = train(TrainOptions(**vars(args)), world=int(os.environ.get("WORLD_SIZE", "1")))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another is still in a collective
        return code
    finally:
        if dist.is_available() and dist.is_initialized():
            # The DDP wrappers hold the process group; left to the interpreter's shutdown, gloo's threads
            # were torn down after Python and aborted the process (SIGABRT, about 1 run in 25): free them now.
            gc.collect()
            dist.destroy_process_group()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return error_exit(PROG, lambda: run(args), codes={TrainingDiverged: 3})


if __name__ == "__main__":
    sys.exit(main())
