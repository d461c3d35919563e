"""Image files and tensors: finding and checking real frames, the backend's one image decoder, and
the one conversion between uint8 HxWx3 arrays and float CxHxW tensors.

Every image the backend reads goes through `read_image` (frames: 8- or 16-bit, grey, RGB, RGBA or
palette, to uint8 RGB; 16-bit grey as round(v / 257), 16-bit colour as Pillow's high byte, within 1
of that; alpha composited on black), `read_mask` (label values exactly as stored) or `read_render`
(our own 8-bit PNGs, at the speed of core/png.py). A file that does not decode is one DataError
naming it; `image_size` reads only a header.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blender_addon.core import png
from blender_addon.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(InputError):
    """Images or a data set that cannot be used for training; the message names them."""


def image_to_tensor(a: np.ndarray, signed: bool = True) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W): in [-1, 1] (signed, the translator's range) or [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)).permute(2, 0, 1).float()
    return t.div(127.5).sub(1.0) if signed else t.div(255.0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounded. Converted where the tensor is
    (a whole GPU batch crosses to the host once, as bytes)."""
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def _images_under(folder: Path) -> list[Path]:
    """Image files under `folder`, also in linked subfolders (a video's frames linked in; each real folder
    once, so a link loop ends). Hidden files and folders are not frames: a writer's temporaries (.tmp-*),
    macOS's ._ files."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
                  and os.path.isfile(os.path.join(root, f))]
    return found


def real_images(sources: list[str | os.PathLike], option: str = "--real") -> list[Path]:
    """Real frames from folders (searched recursively, hidden files and folders left out), list files (one
    path per line) and/or single image files; errors name them as given with `option`."""
    out: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            out += sorted(_images_under(src))
        elif src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:  # one frame given by itself
            out.append(src)
        elif src.is_file():
            base = src.parent
            try:
                raw = src.read_bytes()
                if b"\0" in raw[:8192]:  # a video or another binary file given by mistake
                    raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "binary data")
                text = raw.decode("utf-8", "surrogateescape")  # paths that are not UTF-8 keep their bytes
            except (UnicodeDecodeError, OSError) as e:
                raise DataError(f"{option} {src}: not a folder, an image or a text list of frames "
                                f"({type(e).__name__})") from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    out.append(p if p.is_absolute() else base / p)
        else:
            raise DataError(f"{option} {src}: no such folder or list file")
    if not out:
        raise DataError(f"{option} {', '.join(map(str, sources))}: no .png/.jpg images found")
    return out


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PNG's 16-bit grey (Pillow gives colour as 8 bits)


def _decode_error(path, e: Exception) -> DataError:
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return DataError(f"{path}: cannot read ({e.strerror})")
    reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}".rstrip(": ")
    return DataError(f"{path}: cannot decode ({reason})")


def _decoded(path, convert):
    """convert(image) of the fully decoded image at `path`; DataError naming it when it does not decode."""
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except DataError:
        raise
    except Exception as e:  # any decoder failure: truncated, garbage, a decompression bomb, unreadable
        raise _decode_error(path, e) from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT:
        grey = np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3): grey expands to RGB, 16-bit values are scaled (round(v / 257)), alpha is
    composited on black. DataError naming the file when it does not decode."""
    return _decoded(path, _to_rgb)


def _label_values(path):
    def convert(im: Image.Image) -> np.ndarray:
        a = np.asarray(im)  # palette images: their indices are the labels
        if a.ndim == 3:
            if a.shape[2] in (2, 4):  # grey or colour with alpha: the alpha is not a label
                a = a[..., :-1]
            if a.shape[2] == 3 and not (np.array_equal(a[..., 0], a[..., 1]) and
                                        np.array_equal(a[..., 0], a[..., 2])):
                raise DataError(f"{path}: a colour mask; expected grey label values (R = G = B)")
            a = a[..., 0]
        return a.astype(np.uint8) if a.dtype == bool else np.ascontiguousarray(a)
    return convert


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """The label values of a mask exactly as stored: 2-D uint8 (8-bit grey, palette indices), uint16
    (16-bit grey) or int32; an RGB mask must be grey (R = G = B). DataError naming the file otherwise."""
    return _decoded(path, _label_values(path))


def read_render(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3) of a render or translation written by core/png.py, decoded at that codec's speed;
    any other image through read_image. DataError naming the file when it does not decode."""
    try:
        a = png.decode(Path(path).read_bytes())
    except Exception as e:  # truncated or garbled: struct, zlib, reshape errors...
        raise _decode_error(path, e) from None
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return a
    return read_image(path)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header alone (nothing decoded); DataError naming the file."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # not an image at all
        raise _decode_error(path, e) from None


def load_rgb(path: Path) -> Image.Image:
    """read_image as a PIL RGB image (for resizing and augmentation)."""
    return Image.fromarray(read_image(path), "RGB")


def _check_one(path: Path, min_h: int, min_w: int) -> str | None:
    try:
        h, w = read_image(path).shape[:2]
    except DataError as e:  # any decoder failure means: unusable file
        return str(e).removeprefix(f"{path}: ")
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
