"""Training a segmentation model (the recipe of recipe.py: loss, schedule, rare-class sampling,
autocast; resumable exactly), predicting one frame, and the Dice rows of a set of real frames.

Imports torch, tqdm, blender_addon.core, backend.common and `labels`, `metrics`, `data`, `recipe`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from blender_addon.core.progress import Reporter

from ..common.images import read_image, read_mask
from ..common.precision import bf16_autocast
from ..common.signals import ignore_stop_signals
from .data import Sample, TrainFrames, prepare, rare_pools
from .labels import LabelPreset, SegmentError
from .metrics import frame_dice
from .recipe import DEFAULTS, RARE_CLASSES, RARE_MIN_SHARE, learning_rate, make_optimizer, segmentation_loss


@dataclass
class TrainOptions:
    iterations: int
    batch: int
    lr: float
    seed: int
    augment: bool = True
    workers: int = 0
    class_weights: tuple[float, ...] | None = None  # per training class id, for the cross-entropy
    strong_photometric: bool = False  # the "augmented" baseline's wide colour changes (data.strong_photometric)
    # The recipe (recipe.py); OLD_RECIPE there is the one before issue 16.
    loss: str = DEFAULTS["loss"]
    schedule: str = DEFAULTS["schedule"]
    warmup: float = DEFAULTS["warmup"]
    rare_share: float = DEFAULTS["rare_share"]
    amp: str = DEFAULTS["amp"]
    optimizer: str = DEFAULTS["optimizer"]

    def lr_at(self, iteration: int) -> float:
        return learning_rate(iteration, self.iterations, self.lr, self.schedule, self.warmup)


def recipe_options(args) -> dict:
    """The recipe's TrainOptions fields from a command line (add_recipe_arguments)."""
    return {k: getattr(args, k) for k in ("loss", "schedule", "warmup", "rare_share", "amp", "optimizer")}


def _loader(samples: list[Sample], preset: LabelPreset, size, opts: TrainOptions, start: int, device):
    """Batches start+1 .. opts.iterations of the run: sample numbers, not a shuffled epoch, so a resumed
    run and any number of workers draw the same frames."""
    pools = rare_pools(samples, preset, RARE_CLASSES, RARE_MIN_SHARE) if opts.rare_share > 0 else None
    data = TrainFrames(samples, preset, size, opts.seed, opts.augment, opts.strong_photometric, opts.rare_share,
                       pools)
    order = range(start * opts.batch, opts.iterations * opts.batch)
    return torch.utils.data.DataLoader(data, batch_size=opts.batch, sampler=order, num_workers=opts.workers,
                                       pin_memory=device.type == "cuda", persistent_workers=False,
                                       worker_init_fn=ignore_stop_signals if opts.workers else None)


def train_model(model: nn.Module, samples: list[Sample], preset: LabelPreset, size, opts: TrainOptions, device,
                log=print, desc: str = "train", resume: dict | None = None, on_checkpoint=None,
                every: int = 0) -> nn.Module:
    """opts' optimiser, loss and schedule (IGNORE masked out). resume: {"iteration", "optimizer"} to
    continue a run; on_checkpoint(iteration, model, optimizer) is called every `every` iterations.
    Progress: a tqdm bar on a terminal, else `segment done/total ...` lines through `log` (the Blender
    panel reads them)."""
    if not samples:
        raise SegmentError("no training frames")
    opt = make_optimizer(opts.optimizer, model.parameters(), opts.lr)
    dtype, why = bf16_autocast(torch.device(device), opts.amp)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        start = int(resume["iteration"])
    model.train().to(device)
    loader = _loader(samples, preset, size, opts, start, device)
    bar = tqdm(loader, total=opts.iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True,
               disable=None)
    progress = Reporter("segment", opts.iterations, "it", log, done=start) if bar.disable else None
    weight = None if opts.class_weights is None else torch.tensor(opts.class_weights, dtype=torch.float32,
                                                                     device=device)
    if start == 0:
        log(f"  {desc}: {opts.loss} loss, {opts.schedule} schedule (peak lr {opts.lr:g}), {opts.optimizer}, "
            f"rare-class share {opts.rare_share:g}, {why}")
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype else contextlib.nullcontext
    for it, (x, t) in enumerate(bar, start + 1):
        x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
        for group in opt.param_groups:  # a pure function of the iteration: a resumed run gets the same rates
            group["lr"] = opts.lr_at(it)
        with autocast():
            logits = model(x)
        loss = segmentation_loss(logits, t, opts.loss, weight)  # float32 even under autocast
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if progress is not None:
            progress.update(it)
        if it % max(1, opts.iterations // 5) == 0:
            log(f"  {desc}: iteration {it}/{opts.iterations}, loss {loss.item():.4f}")
        if on_checkpoint is not None and every and it % every == 0 and it < opts.iterations:
            on_checkpoint(it, model, opt)
    bar.close()
    return model


@torch.no_grad()
def predict(model: nn.Module, s: Sample, size, device) -> tuple[np.ndarray, np.ndarray]:
    """Prediction at the mask's own resolution and the image (for overlays)."""
    model.eval()
    img = read_image(s.image)
    x, _ = prepare(img, None, size)
    logits = model(x[None].to(device))
    logits = F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].cpu().numpy(), img


def evaluate(model, samples: list[Sample], preset: LabelPreset, size, device) -> list[dict]:
    """One row per real frame: patient, frame name and the Dice of each of the preset's classes."""
    rows = []
    for s in samples:
        pred, _ = predict(model, s, size, device)
        target = preset.to_train_ids(read_mask(s.mask))
        rows.append({"patient": s.patient, "frame": s.image.name, **frame_dice(pred, target, preset.classes)})
    return rows
