"""Real frames (domain B) from a surgical video; see backend/frames.py for the options."""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from blender_addon.core import png
from blender_addon.core.errors import InputError
from blender_addon.core.files import atomic_write_bytes, check_output_dir


class FramesError(InputError):
    pass


def view_box(frames: list[np.ndarray], threshold: int = 20) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of the lit circular view over a few frames."""
    lit = np.zeros(frames[0].shape[:2], bool)
    for f in frames:
        lit |= f.max(axis=2) > threshold
    rows, cols = np.flatnonzero(lit.mean(axis=1) > 0.05), np.flatnonzero(lit.mean(axis=0) > 0.05)
    if len(rows) == 0 or len(cols) == 0:
        return 0, frames[0].shape[0], 0, frames[0].shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def thumb(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    ys, xs = np.linspace(0, h - 1, 36).astype(int), np.linspace(0, w - 1, 64).astype(int)
    return a[ys][:, xs].astype(np.float32)


def extract(video: Path, out: Path, fps: float, crop_border: bool = False, skip_black: float = 0.0,
            skip_duplicates: float = 0.0, log=print) -> dict:
    check_output_dir(out, "--out")
    if not video.is_file():
        raise FramesError(f"--video {video}: file not found")
    if fps <= 0:
        raise FramesError(f"--fps {fps}: must be > 0")
    for option, value in (("--skip-black", skip_black), ("--skip-duplicates", skip_duplicates)):
        if not 0 <= value <= 255:
            raise FramesError(f"{option} {value}: a mean grey level, 0 to 255 (0: off)")
    try:
        reader = imageio.get_reader(str(video), "ffmpeg")
        src_fps = float(reader.get_meta_data().get("fps") or 25.0)
    except Exception as e:
        raise FramesError(f"--video {video}: cannot be read as a video ({type(e).__name__}: {e})") from None
    step = src_fps / fps
    out.mkdir(parents=True, exist_ok=True)
    box = None
    head: list[np.ndarray] = []
    kept = skipped_black = skipped_dup = 0
    last = None
    next_t = 0.0
    try:
        for i, frame in enumerate(reader):
            if i + 1e-9 < next_t:
                continue
            next_t += step
            frame = np.asarray(frame)[..., :3]
            if crop_border and box is None:
                head.append((i, frame))
                if len(head) < 5:
                    continue
                box = view_box([f for _, f in head])
                pending, head = head, []
            else:
                pending = [(i, frame)]
            for i_f, f in pending:
                if crop_border:
                    f = f[box[0]:box[1], box[2]:box[3]]
                if skip_black and f.mean() < skip_black:
                    skipped_black += 1
                    continue
                t = thumb(f)
                if skip_duplicates and last is not None and np.abs(t - last).mean() < skip_duplicates:
                    skipped_dup += 1
                    continue
                last = t
                path = out / f"{video.stem}_{i_f:06d}.png"
                if not path.exists():
                    atomic_write_bytes(path, png.encode(np.ascontiguousarray(f)))
                kept += 1
        if crop_border and box is None and head:  # a video shorter than the probe
            box = view_box([f for _, f in head])
            for i_f, f in head:
                atomic_write_bytes(out / f"{video.stem}_{i_f:06d}.png",
                                   png.encode(np.ascontiguousarray(f[box[0]:box[1], box[2]:box[3]])))
                kept += 1
    finally:
        reader.close()
    summary = {"kept": kept, "skipped_black": skipped_black, "skipped_duplicates": skipped_dup,
               "source_fps": src_fps, "fps": fps, "crop_box": box}
    log(f"{video.name}: {kept} frames written to {out} ({skipped_black} black, {skipped_dup} near-duplicates "
        f"skipped; {src_fps:g} fps sampled at {fps:g})")
    return summary
