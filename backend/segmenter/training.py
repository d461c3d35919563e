"""Training a segmentation model (Adam on cross-entropy with the ignore value masked out, resumable),
predicting one frame, and the Dice rows of a set of real frames.

Imports torch, tqdm, blender_addon.core, backend.common and `labels`, `metrics`, `data`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from blender_addon.core.progress import Reporter

from ..common.images import read_image, read_mask
from ..common.signals import ignore_stop_signals
from .data import Sample, TrainFrames, prepare
from .labels import IGNORE, LabelPreset, SegmentError
from .metrics import frame_dice


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


def _loader(samples: list[Sample], preset: LabelPreset, size, opts: TrainOptions, start: int, device):
    """Batches start+1 .. opts.iterations of the run: sample numbers, not a shuffled epoch, so a resumed
    run and any number of workers draw the same frames."""
    data = TrainFrames(samples, preset, size, opts.seed, opts.augment, opts.strong_photometric)
    order = range(start * opts.batch, opts.iterations * opts.batch)
    return torch.utils.data.DataLoader(data, batch_size=opts.batch, sampler=order, num_workers=opts.workers,
                                       pin_memory=device.type == "cuda", persistent_workers=False,
                                       worker_init_fn=ignore_stop_signals if opts.workers else None)


def train_model(model: nn.Module, samples: list[Sample], preset: LabelPreset, size, opts: TrainOptions, device,
                log=print, desc: str = "train", resume: dict | None = None, on_checkpoint=None,
                every: int = 0) -> nn.Module:
    """Adam on cross-entropy (IGNORE masked out). resume: {"iteration", "optimizer"} to continue a run;
    on_checkpoint(iteration, model, optimizer) is called every `every` iterations. Progress: a tqdm bar
    on a terminal, else `segment done/total ...` lines through `log` (the Blender panel reads them)."""
    if not samples:
        raise SegmentError("no training frames")
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr)
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
    for it, (x, t) in enumerate(bar, start + 1):
        x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), t, weight=weight, ignore_index=IGNORE)
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
