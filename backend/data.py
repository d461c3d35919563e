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

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blender_addon.dataset import DatasetError, read_index

from .config import AugConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DOMAIN_IDS = {"render": 1, "real": 2}


class DataError(ValueError):
    pass


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


def real_images(sources: list[str | os.PathLike]) -> list[Path]:
    """Real frames from folders (searched recursively) and/or list files (one path per line)."""
    out: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            out += sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif src.is_file():
            base = src.parent
            for line in src.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    out.append(p if p.is_absolute() else base / p)
        else:
            raise DataError(f"--real {src}: no such folder or list file")
    if not out:
        raise DataError(f"--real {', '.join(map(str, sources))}: no .png/.jpg images found")
    return out


def load_rgb(path: Path) -> Image.Image:
    """Decode to RGB: grey expands to RGB, alpha is composited on black."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            black = Image.new("RGBA", im.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, im).convert("RGB")
        return im.convert("RGB")


def _check_one(path: Path, min_h: int, min_w: int) -> str | None:
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.load()
            im.convert("RGB")
    except Exception as e:  # any decoder failure means: unusable file
        return f"cannot decode ({type(e).__name__}: {e})"
    if h < min_h or w < min_w:
        return f"{w}x{h} is smaller than the {min_w}x{min_h} crop"
    return None


def check_images(paths: list[Path], min_h: int, min_w: int, report: Path | None, domain: str,
                 workers: int = 4) -> list[Path]:
    """Decode every image once; list the bad ones in the report (JSON lines) and skip them."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = list(pool.map(lambda p: _check_one(p, min_h, min_w), paths))
    good = [p for p, why in zip(paths, problems) if why is None]
    bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
    if report is not None and bad:
        report.parent.mkdir(parents=True, exist_ok=True)
        with open(report, "a") as f:
            for p, why in bad:
                f.write(json.dumps({"domain": domain, "path": str(p), "problem": why}) + "\n")
    if not good:
        raise DataError(f"no usable {domain} images among {len(paths)} "
                        f"(first problem: {bad[0][0]}: {bad[0][1]})" if bad else f"no {domain} images")
    return good


def augment(img: Image.Image, rng: np.random.Generator, crop_h: int, crop_w: int, aug: AugConfig,
            is_render: bool) -> np.ndarray:
    """Random resized crop keeping the aspect ratio, rotation, jitter, circular mask; uint8 HxWx3."""
    w, h = img.size
    if aug.rotation > 0 and rng.random() < aug.rotation_p:
        img = img.rotate(float(rng.uniform(-aug.rotation, aug.rotation)), resample=Image.BILINEAR)
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


def to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(127.5).sub(1.0)


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
        return to_tensor(augment(img, rng, self.crop_h, self.crop_w, self.aug, self.domain == "render"))


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



def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker init: leave SIGINT/SIGTERM to the main process. Ctrl-C in a terminal, SLURM and
    `timeout` signal the whole process group; a worker killed by them makes the main process fail in
    its next batch instead of writing its checkpoint. Orphaned workers still exit (torch's watchdog)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(ds: DomainImages, start_iter: int, end_iter: int, batch_size: int, rank: int, world: int,
                workers: int, pin: bool) -> torch.utils.data.DataLoader:
    # Its own generator: creating the iterator must not draw from the global RNG, whose state a
    # resumed run restores (the samples themselves never use it).
    gen = torch.Generator().manual_seed(ds.seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=IterationSampler(start_iter, end_iter, batch_size, rank, world),
        num_workers=workers, pin_memory=pin, persistent_workers=False, drop_last=True, generator=gen,
        worker_init_fn=ignore_stop_signals if workers else None)


class LabelledFrames(torch.utils.data.Dataset):
    """A rendered (and translated) data set for training downstream models.

    Yields dicts: `image` float (3, H, W) in [0, 1] (the render, or translation `k`),
    `segmentation` int64 (H, W) class ids (docs/dataset-format.md), `depth` float32 (H, W) in mm
    (inf where nothing was hit), `normals` float32 (3, H, W) in the OpenCV camera frame, `meta`
    (the frame's JSON), `patient`, `frame`, `source` ("render" or "translation:k").

    use="render": one item per rendered frame; "translation": one item per translation (frames
    without translations are left out); "both": the render and its translations.
    """

    def __init__(self, root: str | os.PathLike, use: str = "translation", patients: list[str] | None = None):
        from .translate import read_translation_index

        if use not in ("render", "translation", "both"):
            raise ValueError(f"use={use!r}: render, translation or both")
        self.root = Path(root)
        entries = read_index(self.root)
        if patients is not None:
            entries = [e for e in entries if e["patient"] in patients]
        translations = read_translation_index(self.root) if use != "render" else {}
        self.items: list[tuple[dict, str, str]] = []
        for e in entries:
            if use in ("render", "both"):
                self.items.append((e, e["image"], "render"))
            for k, p in enumerate(translations.get((e["patient"], int(e["frame"])), {}).get("translations", [])):
                self.items.append((e, p, f"translation:{k}"))
        if not self.items:
            raise DataError(f"{self.root}: no frames for use={use!r}")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from blender_addon import png

        e, image_path, source = self.items[i]
        image = png.decode((self.root / image_path).read_bytes())
        seg = png.decode((self.root / e["segmentation"]).read_bytes())
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0,
            "segmentation": torch.from_numpy(seg.astype(np.int64)),
            "depth": torch.from_numpy(np.load(self.root / e["depth"])),
            "normals": torch.from_numpy(np.load(self.root / e["normals"])).permute(2, 0, 1),
            "meta": json.loads((self.root / e["meta"]).read_text()),
            "patient": e["patient"], "frame": int(e["frame"]), "source": source,
        }
