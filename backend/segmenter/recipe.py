"""The segmenter's training recipe beyond the network: the loss, the learning-rate schedule, how often
frames showing the rare classes are drawn, and the autocast precision, with the command-line flags
that set them (the same in `backend.segment` and `backend.efficacy`).

Default (issue 16: a recipe that learns on a 2-core CPU in minutes; measured in docs/evaluation.md
with bench/segment_ablation.py): AdamW, loss `dice_ce`, schedule `cosine` with a 5% warm-up, half
of the draws from frames that show a rare class, peak learning rate 1e-3. The recipe before issue 16
is `--loss ce --schedule constant --rare-share 0 --lr 1e-4` (OLD_RECIPE); with it every batch is
drawn exactly as before.

- loss `ce`: cross-entropy with the IGNORE value masked out (TernausNet's loss); `dice_ce`: that plus
  one minus the soft Dice of the softmax, averaged over the classes present in the batch's targets,
  IGNORE pixels left out of both. Class weights (--class-balance) weigh the cross-entropy only. Dice
  counts a class by its overlap, not its pixels, so a gallbladder of 3% of the pixels pulls as hard
  as the liver's 45%.
- schedule `constant`: the learning rate throughout; `cosine`: linear warm-up from lr/W to lr over
  the first W = round(warmup x iterations) iterations (at least 1), then half a cosine from lr down to
  lr/100 at the last iteration. The rate is a pure function of the iteration, so a resumed run uses
  exactly the rates of an uninterrupted one. Warm-up keeps the first large steps of a net without
  normalisation layers (VGG11) from diverging; the decay is what lets a short run settle.
- rare-class sampling (`rare_share` p): sample number i draws, from (seed, i) alone, with
  probability p a rare class uniformly among those the training frames show (gallbladder; tool =
  shaft or tip) and then a frame showing it uniformly, else (1 - p) a frame uniformly among all. A
  frame shows a class when it covers at least RARE_MIN_SHARE of its labelled pixels. So the share of
  draws showing class c is at least p / (rare classes present) + (1 - p) x (share of frames showing
  c); on the 600 rendered frames of docs/evaluation.md (gallbladder in 24.5% of the frames) p = 0.5
  draws gallbladder frames 44% of the time (Endoscapes: gallbladder and tool are in 97% and 93% of the
  frames, so there the sampling changes little and the Dice term does the work).
- amp `auto`: bf16 autocast on CUDA and on CPUs with bf16 matrix instructions, float32 elsewhere
  (backend.common.precision); `bf16` and `none` force either. The loss is computed in float32.

channels_last is not part of the recipe: on the 2-core AMD EPYC (AVX2) it made a TernausNet-11
training step slower (1.7 -> 2.3 s at 128x64, 6.1 -> 6.9 s at 224x128, batch 8);
bench/segment_ablation.py --time-layouts measures it again on another machine.

Imports torch and `labels`.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from .labels import IGNORE

LOSSES = ("ce", "dice_ce")
SCHEDULES = ("constant", "cosine")
AMPS = ("auto", "bf16", "none")
# Rare classes in our training ids: evaluation merges tool shaft and tip, so the sampler does too.
RARE_CLASSES = {"gallbladder": (2,), "tool": (6, 7)}
RARE_MIN_SHARE = 0.005  # a frame "shows" a class from 0.5% of its labelled pixels (a sliver teaches little)
FINAL_LR_FRACTION = 0.01  # cosine ends at lr/100, not 0: the last iterations still move the weights
DICE_SMOOTH = 1.0

DEFAULTS = {"loss": "dice_ce", "schedule": "cosine", "warmup": 0.05, "rare_share": 0.5, "amp": "auto", "lr": 1e-3,
            "optimizer": "adamw"}
OLD_RECIPE = {"loss": "ce", "schedule": "constant", "warmup": 0.0, "rare_share": 0.0, "amp": "none", "lr": 1e-4,
              "optimizer": "adam"}
OPTIMIZERS = ("adamw", "adam")
WEIGHT_DECAY = 1e-4  # AdamW's decoupled decay; small: a few hundred iterations barely feel it


def learning_rate(iteration: int, iterations: int, lr: float, schedule: str, warmup: float) -> float:
    """The rate of step `iteration` (1-based) of a run of `iterations` steps."""
    if schedule == "constant":
        return lr
    steps = max(1, round(warmup * iterations))
    if iteration <= steps:
        return lr * iteration / steps
    progress = (iteration - steps) / max(1, iterations - steps)
    low = lr * FINAL_LR_FRACTION
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of softmax(logits) against the targets over the whole batch, averaged over the
    classes present in the (non-IGNORE) targets; IGNORE pixels count for neither side."""
    n = logits.shape[1]
    valid = (target != IGNORE).unsqueeze(1)
    prob = torch.softmax(logits.float(), 1) * valid
    onehot = F.one_hot(target.masked_fill(target == IGNORE, 0), n).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter, truth = (prob * onehot).sum(dims), onehot.sum(dims)
    dice = (2 * inter + DICE_SMOOTH) / (prob.sum(dims) + truth + DICE_SMOOTH)
    present = truth > 0
    if not bool(present.any()):  # every pixel ignored: nothing to overlap
        return logits.sum() * 0.0
    return (1 - dice[present]).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """`ce` or `dice_ce` (see the module docstring); class weights apply to the cross-entropy."""
    ce = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE)
    if kind == "ce":
        return ce
    if kind == "dice_ce":
        return ce + soft_dice_loss(logits, target)
    raise ValueError(f"loss {kind!r}: expected one of {', '.join(LOSSES)}")


def make_optimizer(kind: str, params, lr: float) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    raise ValueError(f"optimizer {kind!r}: expected one of {', '.join(OPTIMIZERS)}")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:  # nan fails too
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0 and < 1")
    return value


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe's flags (defaults: DEFAULTS; the pre-issue-16 recipe: OLD_RECIPE)."""
    p.add_argument("--loss", default=DEFAULTS["loss"], choices=LOSSES,
                   help="ce: cross-entropy (the old recipe); dice_ce: cross-entropy + soft Dice over the classes "
                        f"in the batch (default: {DEFAULTS['loss']})")
    p.add_argument("--schedule", default=DEFAULTS["schedule"], choices=SCHEDULES,
                   help="learning rate: constant, or cosine (linear warm-up over --warmup of the iterations, then "
                        f"a half cosine down to lr/100) (default: {DEFAULTS['schedule']})")
    p.add_argument("--warmup", type=_share, default=DEFAULTS["warmup"],
                   help=f"warm-up share of the iterations for --schedule cosine (default: {DEFAULTS['warmup']})")
    p.add_argument("--rare-share", type=_share, default=DEFAULTS["rare_share"],
                   help="share of training draws taken from frames that show a rare class (gallbladder, tool), "
                        f"0: uniform as the old recipe (default: {DEFAULTS['rare_share']})")
    p.add_argument("--optimizer", default=DEFAULTS["optimizer"], choices=OPTIMIZERS,
                   help=f"adamw (weight decay {WEIGHT_DECAY}) or adam (the old recipe) "
                        f"(default: {DEFAULTS['optimizer']})")
    p.add_argument("--amp", default=DEFAULTS["amp"], choices=AMPS,
                   help="autocast: auto (bf16 on CUDA and on CPUs with amx_bf16/avx512_bf16, float32 elsewhere), "
                        "bf16 or none (float32) (default: auto)")
