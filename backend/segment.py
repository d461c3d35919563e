"""Segmentation proof: TernausNet-11 trained on synthetic and/or real frames, the paper's Table 1 protocol.

    python -m backend.segment protocol --synthetic data/A --real-images IMG --real-masks MASKS \\
        --preset endoscapes --out reports/seg [--regimes synthetic,real,synthetic+real] \\
        [--imagenet PATH] [--iterations N] [--resolution 448x256]
    python -m backend.segment train --regime synthetic --synthetic data/A --out seg.pt
    python -m backend.segment eval --checkpoint seg.pt --real-images IMG --real-masks MASKS --out reports/seg

TernausNet-11 is a U-Net whose encoder is torchvision's VGG11. ImageNet weights are used only when
found locally (--imagenet PATH, or torchvision's cache); nothing is downloaded. Real masks are
mapped to our classes through a preset (or a JSON mapping) with an ignore value that loss and
metric respect; the patient of a frame comes from its file name (--patient-pattern). Regimes:
synthetic (translated renders and their labels), real (leave-one-patient-out over the real
patients), synthetic+real (synthetic pre-training, then fine-tuning on the other real patients);
each with or without ImageNet weights. Reported: per patient the median Dice over its frames,
per class that the real labels contain, as a Markdown/JSON table shaped like the paper's Table 1,
with bar charts and predictions overlaid on real frames.
"""
# The command line only; the work is done in backend.segmenter.
from __future__ import annotations

import argparse
import re
import sys

from blender_addon.core.errors import ConfigError
from blender_addon.core.files import check_output_dir, check_output_file
from blender_addon.core.settings import parse_resolution

from .common.cli import at_least, error_exit, log, parser
from .segmenter.labels import PRESETS
from .segmenter.protocol import eval_command, run_protocol, train_command
from .segmenter.recipe import DEFAULTS, add_recipe_arguments

PROG = "python -m backend.segment"
DEFAULT_RESOLUTION = "448x256"  # WxH, the network input of protocol and train


def _common(p: argparse.ArgumentParser, real_required: bool = True,
            resolution_default: str = DEFAULT_RESOLUTION) -> None:
    p.add_argument("--real-images", required=real_required, help="real frames (file names carry the patient)")
    p.add_argument("--real-masks", required=real_required, help="masks with the same stems, PNG")
    p.add_argument("--preset", default="endoscapes", help=f"{', '.join(PRESETS)} or a JSON mapping file")
    p.add_argument("--patient-pattern", help="regex with a group 'patient' applied to file names")
    p.add_argument("--resolution", metavar="WxH",
                   help=f"network input, width x height, multiples of 32 (default: {resolution_default})")
    p.add_argument("--size", dest="deprecated_size", metavar="HxW",
                   help="deprecated: height x width, the same as --resolution WxH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--synthetic", help="rendered (and translated) data set")
    p.add_argument("--use", default="translation",
                   help="which synthetic images to train on: translation (the learned translator's), render, "
                        "both, or another translation set of the data set (e.g. fda, colour)")
    p.add_argument("--imagenet", help="local VGG11 ImageNet state dict (default: torchvision's cache, if any)")
    p.add_argument("--iterations", type=at_least(1), default=4000, help="synthetic training iterations")
    p.add_argument("--finetune-iterations", type=at_least(1), default=2000,
                   help="real training / fine-tuning iterations")
    p.add_argument("--batch", type=at_least(1), default=8)
    p.add_argument("--lr", type=at_least(0, float, strict=True), default=DEFAULTS["lr"],
                   help="(peak) learning rate; fine-tuning on real frames uses a tenth (default: %(default)g; "
                        "the recipe before issue 16: --lr 1e-4 --loss ce --schedule constant --rare-share 0 "
                        "--optimizer adam)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random crop (75-100%% of the frame), flip and colour jitter of training frames (off: "
                        "flip only)")
    add_recipe_arguments(p)
    p.add_argument("--class-balance", default="none", choices=("none", "median"),
                   help="cross-entropy class weights: none (plain, as TernausNet), or median frequency "
                        "balancing over the training frames (rare classes such as the gallbladder and tool "
                        "tips count more; the liver, the paper's class, counts less)")
    p.add_argument("--workers", type=at_least(0), default=2, help="data loading processes (0: in the main process)")


def build_parser() -> argparse.ArgumentParser:
    p = parser(PROG, __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("protocol", help="all regimes with leave-one-patient-out; writes the Table 1 report")
    _common(pr)
    _training_args(pr)
    pr.add_argument("--regimes", default="synthetic,real,synthetic+real")
    pr.add_argument("--both-inits", action="store_true", help="run each regime with and without ImageNet weights")
    pr.add_argument("--out", required=True, help="report folder")
    tr = sub.add_parser("train", help="train one model on all the given data")
    _common(tr, real_required=False)
    _training_args(tr)
    tr.add_argument("--regime", required=True, choices=("synthetic", "real", "synthetic+real"))
    tr.add_argument("--no-imagenet", action="store_true", help="ignore ImageNet weights even if present")
    tr.add_argument("--out", required=True, help="model file (.pt)")
    tr.add_argument("--checkpoint-every", type=at_least(1), default=500,
                    help="save progress to OUT.partial every N iterations; a rerun continues from it")
    ev = sub.add_parser("eval", help="evaluate a trained model on real frames; writes a report")
    _common(ev, resolution_default="the size the model was trained at")
    ev.add_argument("--checkpoint", required=True, help="a model written by `train`")
    ev.add_argument("--out", required=True, help="report folder")
    return p


def network_size(resolution: str | None, size: str | None, default: str | None) -> tuple[int, int] | None:
    """(height, width) of the network input from --resolution WxH, or from the deprecated --size HxW
    (with a warning), else from `default` (WxH; None: no size given)."""
    if resolution and size:
        raise ConfigError("--resolution and --size: give one (--size HxW is the deprecated form of --resolution WxH)")
    if size:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not m:
            raise ConfigError(f"--size {size!r}: expected HxW, e.g. 256x448 (deprecated: use --resolution WxH)")
        w, h = parse_resolution(f"{m[2]}x{m[1]}", f"--size {size} (as --resolution)", multiple=32)
        log(f"{PROG}: warning: --size HxW is deprecated; use --resolution WxH (here --resolution {w}x{h})")
        return h, w
    if not (resolution or default):
        return None
    w, h = parse_resolution(resolution or default, "--resolution", multiple=32)
    return h, w


def run(args: argparse.Namespace) -> None:
    if not 0 <= args.seed < 2 ** 32:  # numpy's generators take no negative seed, torch none past 64 bits
        raise ConfigError(f"--seed {args.seed}: must be between 0 and 2**32 - 1")
    default = None if args.command == "eval" else DEFAULT_RESOLUTION  # eval: the model's own size
    args.size = network_size(args.resolution, args.deprecated_size, default)
    if args.command == "train":  # output locations first: nothing is trained that could not be saved
        check_output_file(args.out, "--out")
        check_output_file(f"{args.out}.partial", "--out (its unfinished run's file, OUT.partial)")
    else:
        check_output_dir(args.out, "--out")
    if args.command == "protocol":
        run_protocol(args, log=log)
        log(f"report: {args.out}/table.md")
    elif args.command == "train":
        log(f"model: {train_command(args, log)}")
    else:
        eval_command(args, log)
        log(f"report: {args.out}/table.md")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return error_exit(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
