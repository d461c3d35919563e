"""Image files and tensors: finding and checking real frames, decoding to RGB, and the one
conversion between uint8 HxWx3 arrays and float CxHxW tensors."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blender_addon.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(InputError):
    """Images or a data set that cannot be used for training; the message names them."""


def image_to_tensor(a: np.ndarray, signed: bool = True) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W): in [-1, 1] (signed, the translator's range) or [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)).permute(2, 0, 1).float()
    return t.div(127.5).sub(1.0) if signed else t.div(255.0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3), rounded."""
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


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
