"""The frames a segmentation model sees: samples of real and synthetic frames, their targets in our
class ids, which frames show the rare classes (for rare-class sampling, recipe.py), the augmentation
of a training pair, the network's input tensors, and the class weights of median frequency balancing.

Augmentation of a training pair (`augment_pair`, from (seed, sample number) alone), in order:
- geometric, applied to frame and label alike: a random crop of the network's aspect ratio covering
  75-100% of the largest such crop, at a random place, and a horizontal flip half of the time (the
  crop is then resized to the network input: bilinear for the frame, nearest for the label, so no
  label id is blended);
- photometric, the frame only: saturation, contrast and brightness each scaled by 0.8-1.2 (the
  default), or with `strong` (the efficacy table's "augmented" source) the wide changes of
  `strong_photometric`: hue, gamma, saturation, contrast, brightness, tint, blur and sensor noise.
Without --augment only the flip is kept.

Imports numpy, PIL, torch, blender_addon.core, backend.common and `labels`.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from blender_addon.core.classes import LABEL_CLASSES, LABEL_IDS, OUTSIDE_FOV
from blender_addon.core.errors import DatasetError
from blender_addon.core.settings import files_digest

from ..common.images import DataError, image_size, image_to_tensor, read_image, read_mask
from ..common.labelled import LabelledFrames
from .labels import IGNORE, LabelPreset, SegmentError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # ImageNet normalisation (VGG11's encoder)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def prepare(img: np.ndarray, mask: np.ndarray | None,
            size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network input (ImageNet-normalised, resized bilinearly to size = (h, w)) and the target resized
    with nearest neighbours (None without a mask)."""
    h, w = size
    im = Image.fromarray(img).convert("RGB").resize((w, h), Image.BILINEAR)
    x = (image_to_tensor(np.array(im), signed=False) - MEAN) / STD
    if mask is None:
        return x, None
    m = Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)
    return x, torch.from_numpy(np.array(m).astype(np.int64))


@dataclass
class Sample:
    image: Path
    mask: Path | None  # real frames
    patient: str
    synthetic: dict | None = None  # (root, entry, translation path) for rendered frames


def real_samples(images: Path, masks: Path, preset: LabelPreset) -> list[Sample]:
    """Every image with a mask of the same stem (PNG) and of the same size (read from the headers, so
    before any work); the patient from the file name."""
    if not images.is_dir() or not masks.is_dir():
        raise SegmentError(f"--real-images {images} / --real-masks {masks}: folders not found")
    out = []
    pattern = re.compile(preset.pattern)
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):  # macOS's ._ files, temporaries
            continue
        m = masks / (p.stem + ".png")
        if not m.is_file():
            continue
        found = pattern.search(p.name)
        if not found:
            raise SegmentError(f"{p.name}: --patient-pattern {preset.pattern!r} finds no patient in it")
        _same_size(p, m)
        out.append(Sample(p, m, found.group("patient")))
    if not out:
        raise SegmentError(f"no image with a mask of the same name in {images} and {masks}")
    check_real_frames(out, preset)
    return out


def check_real_frames(samples: list[Sample], preset: LabelPreset) -> None:
    """Decode every real image and mask once, up front: a frame that does not decode failed when first drawn,
    hours into a training, inside a DataLoader worker. And refuse masks in which the preset finds no class at
    all (a wrong preset or mask encoding trained and scored on empty targets without a word)."""
    def mask_values(s: Sample) -> np.ndarray:
        read_image(s.image)
        m = read_mask(s.mask)
        return np.flatnonzero(np.bincount(m.ravel())) if m.dtype == np.uint8 else np.unique(m)

    found: set[int] = set()
    with ThreadPoolExecutor(max_workers=4) as pool:  # decoders release the GIL
        for values in pool.map(mask_values, samples):
            found.update(int(v) for v in values)
    if not found & set(preset.values):
        shown = ", ".join(map(str, sorted(found)[:12])) + (" ..." if len(found) > 12 else "")
        raise SegmentError(f"--preset {preset.name}: none of the {len(samples)} masks holds a value it maps "
                           f"({', '.join(f'{v}->{c}' for v, c in preset.values.items())}); their values: {shown}. "
                           "Another preset, or a JSON preset for these masks")


def _same_size(image: Path, mask: Path) -> None:
    (w, h), (mw, mh) = image_size(image), image_size(mask)
    if (w, h) != (mw, mh):
        hint = ""
        if (w, h) == (mh, mw) and _exif_rotation(image):  # frames are read as stored, EXIF rotation not applied
            hint = (f" (the image's EXIF says to show it rotated ({_exif_rotation(image)}); frames are read as "
                    "stored: save it with its pixels rotated, e.g. PIL.ImageOps.exif_transpose)")
        raise SegmentError(f"{mask}: the mask is {mw}x{mh} but its image {image} is {w}x{h}{hint}")


def _exif_rotation(path: Path) -> str:
    try:
        with Image.open(path) as im:
            tag = im.getexif().get(0x0112, 1)  # Orientation
    except Exception:
        return ""
    return {5: "transposed", 6: "90 degrees clockwise", 7: "transversed", 8: "90 degrees anticlockwise"}.get(tag, "")


def synthetic_samples(root: Path, use: str) -> list[Sample]:
    """The rendered (use="render") and/or translated frames of a data set, with their label maps."""
    try:
        ds = LabelledFrames(root, use=use)
    except (DatasetError, DataError) as e:
        raise SegmentError(f"--synthetic: {e}") from None
    return [Sample(root / path, None, e["patient"], {"entry": e, "root": root}) for e, path, _ in ds.items]


def samples_digest(samples: list[Sample]) -> str:
    """lines_digest of the SHA-256s of every file the samples read (image, then its mask or rendered class
    image), in order: what a resume compares to know it trains on the bytes it started with."""
    paths = []
    for s in samples:
        paths.append(s.image)
        if s.mask is not None:
            paths.append(s.mask)
        if s.synthetic is not None:
            paths.append(s.synthetic["root"] / s.synthetic["entry"]["segmentation"])
    return files_digest(paths, SegmentError)


def read_pair(s: Sample, preset: LabelPreset) -> tuple[np.ndarray, np.ndarray]:
    """The frame as RGB uint8 and its target in our class ids (IGNORE where unknown)."""
    return read_image(s.image), read_target(s, preset)


def read_target(s: Sample, preset: LabelPreset) -> np.ndarray:
    """The target alone (in our class ids), without decoding the frame."""
    if s.synthetic is not None:
        target = read_mask(s.synthetic["root"] / s.synthetic["entry"]["segmentation"]).astype(np.int64)
        # the black border of a circular field of view (format 2): background, as real data sets label it
        target[target == OUTSIDE_FOV[0]] = LABEL_IDS["background"]
        return target
    return preset.to_train_ids(read_mask(s.mask))


def rare_pools(samples: list[Sample], preset: LabelPreset, rare: dict[str, tuple[int, ...]],
               min_share: float) -> dict[str, list[int]]:
    """Per rare class, the indices of the frames in which it covers at least min_share of the labelled
    pixels; classes no frame shows are left out (a real set may label no tool tip, a patient no
    gallbladder). The last few answers are kept: a budget probe and the run after it read the masks once."""
    key = (tuple(str(s.mask or s.image) for s in samples), preset.name, tuple(preset.values.items()),
           tuple(rare.items()), min_share)
    if key not in _POOLS:
        while len(_POOLS) >= 4:
            _POOLS.pop(next(iter(_POOLS)))
        _POOLS[key] = _scan_pools(samples, preset, rare, min_share)
    return _POOLS[key]


_POOLS: dict[tuple, dict[str, list[int]]] = {}


def _scan_pools(samples, preset, rare, min_share) -> dict[str, list[int]]:
    pools: dict[str, list[int]] = {name: [] for name in rare}
    for i, s in enumerate(samples):
        target = read_target(s, preset)
        labelled = max(1, int((target != IGNORE).sum()))
        for name, ids in rare.items():
            if np.isin(target, ids).sum() >= min_share * labelled:
                pools[name].append(i)
    return {name: idx for name, idx in pools.items() if idx}


def strong_photometric(f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "augmented" baseline's look changes, float (H, W, 3) in [0, 1]: hue rotation (+-0.1 turn),
    gamma 0.6-1.6, saturation 0.4-1.6, contrast and brightness 0.6-1.4, a tint of up to 10% per
    channel, Gaussian blur (sigma 0.5-1.5, half the frames) and sensor noise (sigma up to 0.03, half
    the frames): renders must not teach one exact look, and no learned model is involved."""
    angle = rng.uniform(-0.1, 0.1) * 2 * np.pi  # hue: rotate the chroma plane of YIQ
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    f = np.clip(f @ (np.linalg.inv(to_yiq) @ rot @ to_yiq).T, 0, 1) ** rng.uniform(0.6, 1.6)
    grey = f.mean(axis=2, keepdims=True)
    f = grey + (f - grey) * rng.uniform(0.4, 1.6)
    f = f.mean() + (f - f.mean()) * rng.uniform(0.6, 1.4)
    f = f * rng.uniform(0.6, 1.4) * rng.uniform(0.9, 1.1, 3)
    if rng.random() < 0.5:
        im = Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8))
        f = np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))), np.float32) / 255
    if rng.random() < 0.5:
        f = f + rng.normal(0, rng.uniform(0, 0.03), f.shape)
    return np.clip(f, 0, 1)


def augment_pair(img: np.ndarray, target: np.ndarray, size, rng: np.random.Generator,
                 strong: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of the network's aspect (75-100% of the largest one), horizontal flip, and brightness,
    contrast and saturation jitter: synthetic frames must not teach the network one exact look.
    strong: the wider photometric changes of `strong_photometric` instead of the jitter."""
    h, w = img.shape[:2]
    aspect = size[1] / size[0]
    ch = min(h, w / aspect) * rng.uniform(0.75, 1.0)
    cw = ch * aspect
    y0 = int(rng.uniform(0, h - ch + 1e-6))
    x0 = int(rng.uniform(0, w - cw + 1e-6))
    y1, x1 = min(h, y0 + max(1, round(ch))), min(w, x0 + max(1, round(cw)))
    img, target = img[y0:y1, x0:x1], target[y0:y1, x0:x1]
    if rng.random() < 0.5:
        img, target = img[:, ::-1], target[:, ::-1]
    f = img.astype(np.float32) / 255
    if strong:
        return (strong_photometric(f, rng) * 255).round().astype(np.uint8), np.ascontiguousarray(target)
    grey = f.mean(axis=2, keepdims=True)
    f = grey + (f - grey) * rng.uniform(0.8, 1.2)  # saturation
    f = f.mean() + (f - f.mean()) * rng.uniform(0.8, 1.2)  # contrast
    f = f * rng.uniform(0.8, 1.2)  # brightness
    return (np.clip(f, 0, 1) * 255).round().astype(np.uint8), np.ascontiguousarray(target)


class TrainFrames(torch.utils.data.Dataset):
    """Sample number i of a training run: a frame and its augmentation drawn from (seed, i) alone, so the
    batches are the same with any number of loader workers and a resumed run continues exactly.

    rare_share p with `pools` (rare_pools): with probability p the frame comes from a rare class's pool
    (class uniform among the pools, frame uniform in it), else uniformly from all frames; with p = 0 the
    draws are exactly those of the recipe before rare-class sampling."""

    def __init__(self, samples: list[Sample], preset: LabelPreset, size, seed: int, augment: bool = True,
                 strong: bool = False, rare_share: float = 0.0, pools: dict[str, list[int]] | None = None):
        self.samples, self.preset, self.size, self.seed, self.augment = samples, preset, size, seed, augment
        self.strong = strong
        self.rare_share = rare_share
        self.pools = [list(p) for p in (pools or {}).values() if p]

    def __len__(self) -> int:
        return 2 ** 62

    def frame_index(self, rng: np.random.Generator) -> int:
        """The frame of one draw (consumes rng exactly as __getitem__ does before augmenting)."""
        if self.rare_share > 0 and self.pools and rng.random() < self.rare_share:
            pool = self.pools[int(rng.integers(len(self.pools)))]
            return pool[int(rng.integers(len(pool)))]
        return int(rng.integers(len(self.samples)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(i)])
        img, target = read_pair(self.samples[self.frame_index(rng)], self.preset)
        if self.augment:
            img, target = augment_pair(img, target, self.size, rng, self.strong)
        elif rng.random() < 0.5:
            img, target = img[:, ::-1].copy(), target[:, ::-1].copy()
        return prepare(img, target, self.size)


# ----------------------------------------------------------------------------- class weights

def class_frequencies(samples: list[Sample], preset: LabelPreset, max_frames: int = 200,
                      seed: int = 0) -> np.ndarray:
    """Pixel share of each training class over (a fixed sample of at most max_frames of) the training
    frames, ignore pixels left out."""
    rng = np.random.default_rng(seed)
    pick = samples if len(samples) <= max_frames else [samples[i] for i in
                                                        sorted(rng.choice(len(samples), max_frames, replace=False))]
    n = len(LABEL_CLASSES)
    counts = np.zeros(n, np.float64)
    for s in pick:
        _, target = read_pair(s, preset)
        counts += np.bincount(target[target != IGNORE].ravel(), minlength=n)[:n]
    if counts.sum() == 0:
        raise SegmentError("the training frames have no labelled pixel")
    return counts / counts.sum()


def median_frequency_weights(freq: np.ndarray, cap: float = 10.0) -> tuple[float, ...]:
    """Median frequency balancing (Eigen and Fergus, 2015): weight = median share / share, over the classes
    present; absent classes get weight 0 (they never occur in the targets); capped so that a class of a
    few pixels cannot dominate the loss."""
    present = freq > 0
    med = float(np.median(freq[present]))
    w = np.where(present, med / np.maximum(freq, 1e-12), 0.0)
    return tuple(float(v) for v in np.minimum(w, cap))
