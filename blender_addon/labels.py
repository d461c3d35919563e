"""Turn Cycles render passes into the data set's labels, in numpy, where it can be tested.

Cycles writes depth, object index and material-free data passes from the first sample of each
pixel, so class ids and depth come from the same ray and are never blended between classes.
"""
from __future__ import annotations

import numpy as np

from .core.classes import LABEL_CLASSES, OUTSIDE_FOV, overlay_picture
from .core.geometry import project

NO_HIT_DEPTH = 1e9  # Cycles writes 1e10 scene units where a ray hits nothing


def pass_channel(name: str) -> bool:
    """Whether passes_from_exr reads this EXR channel (not the noisy image that denoising adds, nor alpha):
    read_exr's `keep`, which skips converting 5 of a render's 13 channels."""
    return "Noisy" not in name and not name.endswith("Combined.A")


def passes_from_exr(channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pick the passes out of a multilayer EXR's channel dict, whatever the layer prefix."""
    def find(suffix):
        for k, v in channels.items():
            if k.endswith(suffix) and "Noisy" not in k:
                return v
        raise KeyError(f"render pass {suffix!r} missing from the EXR (found {sorted(channels)})")

    out = {"rgb": np.stack([find(f"Combined.{c}") for c in "RGB"], axis=-1)}
    try:
        out["depth"] = find("Depth.Z")
    except KeyError:
        out["depth"] = find("Depth.V")
    out["normal"] = np.stack([find(f"Normal.{c}") for c in "XYZ"], axis=-1)
    try:
        out["index"] = find("Object Index.X")
    except KeyError:
        out["index"] = find("IndexOB.X")
    vector = [k for k in channels if k.endswith("Vector.X")]  # clips only
    if vector:
        out["vector"] = np.stack([find(f"Vector.{c}") for c in "XYZW"], axis=-1)
    return out


def auto_exposure_gain(rgb: np.ndarray, target: float = 0.7, percentile: float = 97.0) -> float:
    """Gain that puts the bright end of the image at `target`, like a laparoscope's auto exposure."""
    lum = rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722
    p = float(np.percentile(lum, percentile))
    return float(np.clip(target / p, 1 / 256, 256)) if p > 0 else 1.0


def linear_to_srgb8(rgb: np.ndarray, exposure: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """Scene-linear RGB to 8-bit sRGB (Blender's 'Standard' view transform): gain, then exposure in stops."""
    x = np.clip(rgb * (gain * 2.0 ** exposure), 0.0, 1.0)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.rint(srgb * 255.0).astype(np.uint8)


def segmentation_from_index(index: np.ndarray) -> np.ndarray:
    seg = np.rint(index).astype(np.int64)
    valid = np.array([c[0] for c in LABEL_CLASSES])
    if not np.isin(seg, valid).all():
        bad = np.setdiff1d(np.unique(seg), valid)
        raise ValueError(f"object index pass holds ids {bad.tolist()} outside the class table")
    return seg.astype(np.uint8)


def depth_mm(depth_scene: np.ndarray, scene_to_mm: float) -> np.ndarray:
    d = depth_scene.astype(np.float64)
    return np.where(d >= NO_HIT_DEPTH, np.inf, d * scene_to_mm).astype(np.float32)


def normals_to_camera(normal_world: np.ndarray, cam_to_world: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """World-space normals to unit normals in the OpenCV camera frame; zero where nothing was hit.
    float32 throughout (the passes' precision; 4x faster than float64, which it matches to 2e-7)."""
    R = np.asarray(cam_to_world, np.float64)[:3, :3].astype(np.float32)  # n_cam = R^T n = n @ R
    n = np.asarray(normal_world, np.float32) @ R
    sq = np.einsum("...i,...i->...", n, n)
    scale = np.where((sq > 1e-12) & hit, 1.0 / np.sqrt(np.maximum(sq, np.float32(1e-24))), np.float32(0))
    n *= scale[..., None].astype(np.float32, copy=False)
    return n


def class_pixel_counts(seg: np.ndarray) -> dict[str, int]:
    counts = np.bincount(seg.ravel(), minlength=256)
    out = {name: int(counts[cid]) for cid, name, _ in LABEL_CLASSES}
    if counts[OUTSIDE_FOV[0]]:
        out[OUTSIDE_FOV[1]] = int(counts[OUTSIDE_FOV[0]])
    return out


def tip_visibility(tip_cam: np.ndarray, K: np.ndarray, seg: np.ndarray, depth: np.ndarray,
                   tol_mm: float = 4.0, radius_px: int = 2) -> tuple[list[float], bool]:
    """Pixel of a tool tip point and whether that point is seen (tool-tip pixel at its depth nearby)."""
    h, w = seg.shape
    if tip_cam[2] <= 0:
        return [float("nan"), float("nan")], False
    u, v = project(K, tip_cam[None])[0]
    if not (0 <= u < w and 0 <= v < h):
        return [float(u), float(v)], False
    cu, cv = int(u), int(v)
    y0, y1 = max(cv - radius_px, 0), min(cv + radius_px + 1, h)
    x0, x1 = max(cu - radius_px, 0), min(cu + radius_px + 1, w)
    win_seg = seg[y0:y1, x0:x1]
    win_depth = depth[y0:y1, x0:x1]
    seen = (win_seg == 7) & (np.abs(win_depth - tip_cam[2]) < tol_mm)
    return [float(u), float(v)], bool(seen.any())


# ----------------------------------------------------------------------------- pictures

_DEPTH_STOPS = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], float)


def depth_picture(depth: np.ndarray) -> np.ndarray:
    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    lo, hi = np.percentile(depth[finite], [1, 99])
    t = np.clip((np.where(finite, depth, hi) - lo) / max(hi - lo, 1e-6), 0, 1) * (len(_DEPTH_STOPS) - 1)
    i = np.minimum(t.astype(int), len(_DEPTH_STOPS) - 2)
    f = (t - i)[..., None]
    rgb = _DEPTH_STOPS[i] * (1 - f) + _DEPTH_STOPS[i + 1] * f
    rgb[~finite] = 0
    return rgb.astype(np.uint8)


def normals_picture(normals: np.ndarray) -> np.ndarray:
    pic = ((normals * np.array([1, -1, -1]) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    pic[np.all(normals == 0, axis=-1)] = 0
    return pic


def preview_sheet(rows: list[dict], max_width: int = 1808) -> np.ndarray:
    """Rows of image | class overlay | depth | normals, with a legend of the class colours."""
    from PIL import Image, ImageDraw

    tiles = []
    for r in rows:
        tiles.append(np.concatenate([r["image"], overlay_picture(r["image"], r["segmentation"]),
                                     depth_picture(r["depth"]), normals_picture(r["normals"])], axis=1))
    sheet = np.concatenate(tiles, axis=0)
    legend_h = 22
    pic = Image.fromarray(np.concatenate([np.zeros((legend_h, sheet.shape[1], 3), np.uint8), sheet]))
    draw = ImageDraw.Draw(pic)
    x = 4
    for _cid, name, rgb in LABEL_CLASSES[1:]:
        draw.rectangle([x, 5, x + 12, 17], fill=tuple(rgb))
        draw.text((x + 16, 5), name, fill=(255, 255, 255))
        x += 22 + 7 * len(name)
    draw.text((max(x + 10, sheet.shape[1] - 260), 5), "image | classes | depth | normals", fill=(200, 200, 200))
    if pic.width > max_width:
        pic = pic.resize((max_width, round(pic.height * max_width / pic.width)))
    return np.asarray(pic)
