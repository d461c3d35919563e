"""Images for the translator: domain A (renders, through a data set's index) and domain B (real frames).

Sampling is a pure function of the global sample number: sample i of a domain is image
`perm_epoch[i % N]` with `epoch = i // N`, augmented with a generator seeded by (seed, domain, i).
So data order and augmentation do not depend on worker processes, and a resumed run sees
exactly the samples an uninterrupted run would have seen.

Black borders: real laparoscopic frames show a circular field of view inside a black frame; they
are used as they are. Renders fill the whole image, so with probability `aug.circular_mask_p` a
render is masked to a random circle (black outside) after augmentation. Both domains then contain
black borders, and the translator learns that black maps to black instead of inventing tissue
there or using the border as a domain cue.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blender_addon.core.dataset import DatasetError, read_index

from ..common.images import DataError, image_to_tensor, load_rgb
from ..common.signals import ignore_stop_signals
from .config import AugConfig

DOMAIN_IDS = {"render": 1, "real": 2}


def render_images(root: str | os.PathLike) -> list[Path]:
    """Rendered images of a Domain A data set, in index order (labels are not used in training)."""
    root = Path(root)
    try:
        entries = read_index(root)
    except DatasetError as e:
        raise DataError(f"--renders: {e}") from None
    if not entries:
        raise DataError(f"--renders {root}: the data set's index has no finished frames")
    return [root / e["image"] for e in entries]


def augment(img: Image.Image, rng: np.random.Generator, crop_h: int, crop_w: int, aug: AugConfig,
            is_render: bool) -> np.ndarray:
    """Random resized crop keeping the aspect ratio (renders with `render_scale: native`: a crop at the
    image's own pixel scale), rotation, jitter, circular mask; uint8 HxWx3."""
    w, h = img.size
    if aug.rotation > 0 and rng.random() < aug.rotation_p:
        img = img.rotate(float(rng.uniform(-aug.rotation, aug.rotation)), resample=Image.BILINEAR)
    if is_render and aug.render_scale == "native":
        # Translation feeds whole renders at their own size: crop at that pixel scale, at a whole-pixel
        # offset, so the generator sees render pixels exactly as it will then (images smaller than the
        # crop never get here: check_images skips them).
        y0 = int(rng.integers(0, h - crop_h + 1))
        x0 = int(rng.integers(0, w - crop_w + 1))
        out = img.crop((x0, y0, x0 + crop_w, y0 + crop_h))
    else:
        s_max = min(h / crop_h, w / crop_w)  # the largest crop with the target aspect that fits
        s = s_max * (rng.uniform(aug.min_scale, 1.0) if aug.random_resize else 1.0)
        ch, cw = crop_h * s, crop_w * s
        y0 = rng.uniform(0, h - ch)
        x0 = rng.uniform(0, w - cw)
        out = img.resize((crop_w, crop_h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    a = np.asarray(out, dtype=np.float32)
    if aug.color_jitter:
        a = a * rng.uniform(1 - aug.brightness, 1 + aug.brightness)
        mean = a.mean()
        a = (a - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
    if is_render and rng.random() < aug.circular_mask_p:
        yy, xx = np.mgrid[:crop_h, :crop_w]
        cy = crop_h / 2 + rng.uniform(-0.1, 0.1) * crop_h
        cx = crop_w / 2 + rng.uniform(-0.1, 0.1) * crop_w
        r = rng.uniform(0.5, 0.75) * np.hypot(crop_h, crop_w) / 2
        a[(yy - cy) ** 2 + (xx - cx) ** 2 > r * r] = 0
    return np.clip(a, 0, 255).astype(np.uint8)


class DomainImages(torch.utils.data.Dataset):
    """Indexed by global sample number (unbounded); see the module docstring."""

    def __init__(self, paths: list[Path], domain: str, crop_h: int, crop_w: int, aug: AugConfig, seed: int):
        self.paths, self.domain = list(paths), domain
        self.crop_h, self.crop_w, self.aug, self.seed = crop_h, crop_w, aug, seed
        self._perm_epoch, self._perm = -1, None

    def __len__(self):
        return 2 ** 62

    def image_index(self, i: int) -> int:
        n = len(self.paths)
        epoch = i // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, DOMAIN_IDS[self.domain], epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[i % n])

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, DOMAIN_IDS[self.domain], 7, int(i)])
        img = load_rgb(self.paths[self.image_index(int(i))])
        return image_to_tensor(augment(img, rng, self.crop_h, self.crop_w, self.aug, self.domain == "render"))


class IterationSampler(torch.utils.data.Sampler):
    """Global sample numbers of one rank from iteration `start` on: rank r takes its own slice."""

    def __init__(self, start_iter: int, end_iter: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start, self.end, self.batch, self.rank, self.world = start_iter, end_iter, batch_size, rank, world

    def __iter__(self):
        for it in range(self.start, self.end):
            base = (it * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self):
        return (self.end - self.start) * self.batch



def make_loader(ds: DomainImages, start_iter: int, end_iter: int, batch_size: int, rank: int, world: int,
                workers: int, pin: bool) -> torch.utils.data.DataLoader:
    # Its own generator: creating the iterator must not draw from the global RNG, whose state a
    # resumed run restores (the samples themselves never use it).
    gen = torch.Generator().manual_seed(ds.seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=IterationSampler(start_iter, end_iter, batch_size, rank, world),
        num_workers=workers, pin_memory=pin, persistent_workers=False, drop_last=True, generator=gen,
        worker_init_fn=ignore_stop_signals if workers else None)
