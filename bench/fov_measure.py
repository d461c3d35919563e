"""Measure the laparoscope's circular field of view on real frames (the ranges in blender_addon/views.py).

    python bench/fov_measure.py ../shared/data/real/endoscapes/images

Per frame: the bright region (max channel > 25) is found row by row (every 4th row); its left and right
ends that are not at the image edge are edge points of the circle, and a circle is fitted to them by
linear least squares. Frames with fewer than 20 edge points show no border; fits whose median residual
is 3 px or more (dark frames, instruments at the edge) are left out. Prints percentiles of the radius /
width and the centre / size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def fit_circle(image: np.ndarray, threshold: float = 25) -> tuple[float, float, float, float] | None:
    """(cx / w, cy / h, r / w, median residual px), or None when no border shows."""
    h, w = image.shape[:2]
    bright = image.max(axis=2) > threshold
    pts = []
    for y in range(0, h, 4):
        xs = np.flatnonzero(bright[y])
        if len(xs) < 10:
            continue
        if xs[0] > 3:
            pts.append((xs[0], y))
        if xs[-1] < w - 4:
            pts.append((xs[-1], y))
    if len(pts) < 20:
        return None
    p = np.array(pts, float)
    a = np.c_[2 * p, np.ones(len(p))]
    cx, cy, c = np.linalg.lstsq(a, (p ** 2).sum(axis=1), rcond=None)[0]
    r = np.sqrt(c + cx ** 2 + cy ** 2)
    residual = np.median(np.abs(np.hypot(p[:, 0] - cx, p[:, 1] - cy) - r))
    return cx / w, cy / h, r / w, float(residual)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", type=Path)
    args = ap.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"{args.images}: no JPEG or PNG frames")
    fits = [fit_circle(iio.imread(f)[..., :3].astype(np.float32)) for f in files]
    good = np.array([f[:3] for f in fits if f is not None and f[3] < 3])
    print(f"{len(files)} frames: {sum(f is None for f in fits)} show no border, {len(good)} fitted well")
    for i, name in enumerate(("centre x / width", "centre y / height", "radius / width")):
        q = np.percentile(good[:, i], [5, 50, 95])
        print(f"  {name:18s} 5%: {q[0]:.3f}  median: {q[1]:.3f}  95%: {q[2]:.3f}")


if __name__ == "__main__":
    main()
