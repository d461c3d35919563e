"""Real frames (domain B) from a surgical video; see backend/frames.py for the options."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from blender_addon.core import png
from blender_addon.core.errors import InputError
from blender_addon.core.files import atomic_write_bytes, atomic_write_json, check_output_dir
from blender_addon.core.settings import settings_conflicts


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


def header_rates(video: Path) -> tuple[float, float] | None:
    """(average frame rate, tbr) of the first video stream as ffmpeg's header prints them, or None where it
    prints no such line (the reader then says what is wrong). tbr is the rate ffmpeg decodes to when no rate
    is asked for: a variable-frame-rate file has an average below it, and its frames arrive repeated to tbr."""
    import imageio_ffmpeg

    try:
        proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)],
                              capture_output=True, text=True, errors="replace", timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None

    def rate(line, unit):
        m = re.search(rf"(\d+(?:\.\d+)?)(k?) {unit}\b", line)
        return float(m.group(1)) * (1000 if m.group(2) else 1) if m else None

    for line in proc.stderr.splitlines():
        if "Stream #" in line and "Video:" in line:
            fps, tbr = rate(line, "fps"), rate(line, "tbr")
            return (fps, tbr) if fps and tbr else None
    return None


def variable_rate(rates: tuple[float, float] | None) -> bool:
    """A header whose average frame rate is more than 1 percent off its tbr: a variable-frame-rate file (a
    constant-rate file's average is its rate, give or take a frame over its length, e.g. 24.99 for 25)."""
    return rates is not None and abs(rates[0] - rates[1]) > 0.01 * rates[1]


def check_record(out: Path, video: Path, settings: dict) -> Path:
    """`<video stem>.frames.json` beside the frames records how they were extracted (written before the first
    frame): a re-run with other settings (another --fps, crop or thresholds) would mix two kinds of frames
    under one video's names, so it is refused. Frames extracted before the record existed are taken as they are."""
    record = out / f"{video.stem}.frames.json"
    if record.is_file():
        try:
            old = json.loads(record.read_text())["settings"]
        except (ValueError, KeyError, TypeError):
            raise FramesError(f"{record}: not a frames record; delete it, or pick another --out") from None
        conflicts = settings_conflicts(old, settings)
        if conflicts:
            raise FramesError(f"{out}: the frames of {video.stem} there were extracted with other settings "
                              f"({'; '.join(conflicts)}); pick another --out, or delete {video.stem}_*.png and "
                              f"{record.name} to extract them again")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"settings": settings}, indent=1)
    return record


def extract(video: Path, out: Path, fps: float, crop_border: bool = False, skip_black: float = 0.0,
            skip_duplicates: float = 0.0, log=print) -> dict:
    check_output_dir(out, "--out")
    if not video.is_file():
        raise FramesError(f"--video {video}: file not found")
    if not 0 < fps < float("inf"):  # nan fails the comparison too
        raise FramesError(f"--fps {fps}: must be a number > 0")
    for option, value in (("--skip-black", skip_black), ("--skip-duplicates", skip_duplicates)):
        if not 0 <= value <= 255:  # nan fails the comparison
            raise FramesError(f"{option} {value}: a mean grey level, 0 to 255 (0: off)")
    rates = header_rates(video)
    # A variable-frame-rate file is decoded to its average rate by time (ffmpeg's fps filter: slot i shows the
    # frame nearest i / rate seconds), so that frame i is at i / rate seconds as with a constant-rate file. Left
    # alone, ffmpeg repeats its frames to tbr while the header's average rate would be taken for the rate they
    # come at (5 fps asked, 10 sampled at 15 fps / 30 tbr). `-r` instead lets the timing drift by two frames.
    vfr = variable_rate(rates)
    try:
        reader = imageio.get_reader(str(video), "ffmpeg",
                                    **({"output_params": ["-vf", f"fps={rates[0]:g}"]} if vfr else {}))
        meta = reader.get_meta_data()
        src_fps = float(meta.get("fps") or 25.0)
    except Exception as e:  # ffmpeg's banner and build options come first: its last line says what is wrong
        last = ([ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""])[-1][:200]
        raise FramesError(f"--video {video}: cannot be read as a video ({type(e).__name__}: {last})") from None
    if vfr:
        src_fps = rates[0]
        log(f"{video.name}: variable frame rate ({rates[0]:g} fps on average, {rates[1]:g} tbr): decoded to "
            f"{rates[0]:g} fps by time; frame i is at i / {rates[0]:g} s")
    step = src_fps / fps
    settings = {"video": video.name, "video_bytes": video.stat().st_size, "fps": fps, "crop_border": crop_border,
                "skip_black": skip_black, "skip_duplicates": skip_duplicates,
                # only for such files, so that records of constant-rate videos stay as they were, and frames that
                # an older version sampled from this file at the wrong times are not mixed with these
                **({"variable_frame_rate_decoded_at": rates[0]} if vfr else {})}
    try:
        record = check_record(out, video, settings)
    except BaseException:
        reader.close()
        raise
    box = None
    head: list[tuple[int, np.ndarray]] = []  # --crop-border: the first lit frames, to measure the view on
    kept = skipped_black = skipped_dup = written = 0
    last = None
    next_t = 0.0
    decoded = 0

    def keep(i_f: int, f: np.ndarray) -> None:
        nonlocal kept, skipped_dup, last, written
        if crop_border:
            f = f[box[0]:box[1], box[2]:box[3]]
        t = thumb(f)
        if skip_duplicates and last is not None and np.abs(t - last).mean() < skip_duplicates:
            skipped_dup += 1
            return
        last = t
        path = out / f"{video.stem}_{i_f:06d}.png"
        if not path.exists():
            atomic_write_bytes(path, png.encode(np.ascontiguousarray(f)))
            written += 1
        kept += 1

    try:
        for i, frame in enumerate(reader):
            decoded = i + 1
            if i + 1e-9 < next_t:
                continue
            next_t += step
            frame = np.asarray(frame)[..., :3]
            # Black frames (a lead-in, the laparoscope outside the body) are dropped before anything else, so
            # that the view is measured on lit frames only; judged inside the view once it is known.
            seen = frame if box is None else frame[box[0]:box[1], box[2]:box[3]]
            if skip_black and seen.mean() < skip_black:
                skipped_black += 1
                continue
            if crop_border and box is None:
                head.append((i, frame))
                if len(head) < 5:
                    continue
                box = view_box([f for _, f in head])
                log(f"{video.name}: view {box[3] - box[2]}x{box[1] - box[0]} at x {box[2]}, y {box[0]} "
                    f"(measured on {len(head)} frames)")
                pending, head = head, []
            else:
                pending = [(i, frame)]
            for i_f, f in pending:
                keep(i_f, f)
        if crop_border and box is None and head:  # a video shorter than the probe
            box = view_box([f for _, f in head])
            for i_f, f in head:
                keep(i_f, f)
    finally:
        reader.close()
    duration = float(meta.get("duration") or 0)
    if duration and decoded < 0.9 * duration * src_fps - 2:  # the decoder stopped early: a cut or damaged file
        log(f"{video.name}: warning: {decoded} frames decoded where {duration:g} s at {src_fps:g} fps announce "
            f"about {round(duration * src_fps)}; the file may be cut short or damaged")
    summary = {"kept": kept, "written": written, "skipped_black": skipped_black, "skipped_duplicates": skipped_dup,
               "source_fps": src_fps, "fps": fps, "crop_box": box,
               **({"variable_frame_rate": {"fps": rates[0], "tbr": rates[1]}} if vfr else {})}
    atomic_write_json(record, {"settings": settings, "summary": summary}, indent=1)
    log(f"{video.name}: {kept} frames in {out}, {written} of them written now ({skipped_black} black, "
        f"{skipped_dup} near-duplicates skipped; {src_fps:g} fps sampled at {fps:g})")
    return summary
