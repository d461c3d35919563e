"""Class statistics of labelled frames: how often each class is in view and how much of the image it
fills, for a rendered data set and a real labelled set side by side (`python -m backend.stats`).

A translator changes appearance, not content: if the renders show a gallbladder in a third of the
frames and real video in nearly all, no translation fixes that. These numbers say so before any
training. Shares are of the whole image (black border included, as in the real frames); a class is
visible in a frame when it has at least one pixel.

Appearance, for the same classes: the mean sRGB colour of the class's pixels, percentiles of their
brightness (the mean of R, G and B, 0-255), their median saturation (HSV: (max - min) / max) and their
grey share (saturation below GREY_SATURATION). The renderer's looks (gallbladder, instruments) were set
from these real-set figures; a user with other video sees here what to change. The same for translation
sets (`--translation NAME`): their outputs with the renders' labels, so a translator that gives a class
another class's look shows here before any segmenter is trained on it.

Imports numpy, PIL, blender_addon.core and `labels`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blender_addon.core.dataset import read_index, read_translation_index, translation_sets
from blender_addon.core.errors import DatasetError
from blender_addon.core.files import atomic_write, atomic_write_json, atomic_write_text

from ..common.images import read_image, read_mask, read_render
from .labels import EVAL_CLASSES, OURS_TO_EVAL, LabelPreset, SegmentError, natural_order

RATIO_LIMIT = 1.5  # the renderer issue's target: median shares within this factor of the real set's
BINS = 20
PERCENTILES = (10, 25, 50, 75, 90)
# Saturation (0-255 steps) below which a pixel counts as grey: 0.25, as in docs/evaluation.md's instrument
# and tissue colour tables (real instruments: 78% grey; real tissue: 25%; rendered tissue: 2%).
GREY_SATURATION = 64


def frame_shares(mask: np.ndarray, values: dict[int, str]) -> dict[str, float]:
    """Image share of each evaluation class in one mask (values: mask value -> class)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    out = {c: 0.0 for c in dict.fromkeys(values.values())}
    for v, c in values.items():
        if v < len(counts):  # a 16-bit value never occurs in an 8-bit mask
            out[c] += counts[v] / mask.size
    return out


def rendered_shares(root: Path) -> list[dict[str, float]]:
    """Per frame of a rendered data set (its segmentation PNGs, through the index)."""
    try:
        entries = read_index(root)
    except DatasetError as e:
        raise SegmentError(f"--data: {e}") from None
    if not entries:
        raise SegmentError(f"--data {root}: no finished frames")
    return [frame_shares(read_mask(root / e["segmentation"]), OURS_TO_EVAL) for e in entries]


def real_shares(masks: list[Path], preset: LabelPreset) -> list[dict[str, float]]:
    return [frame_shares(read_mask(m), preset.values) for m in masks]


class Appearance:
    """Per class: pixel count, summed sRGB and 256-bin histograms of brightness and saturation, over many
    frames."""

    def __init__(self):
        self.count, self.rgb, self.hist, self.sat = {}, {}, {}, {}

    def add(self, image: np.ndarray, mask: np.ndarray, values: dict[int, str]) -> None:
        if image.shape[:2] != mask.shape:
            return  # the shares above still count the frame; a mismatched image has no pixel colours
        for c in dict.fromkeys(values.values()):
            sel = np.isin(mask, [v for v, name in values.items() if name == c])
            px = image[sel].astype(np.int64)
            if not len(px):
                continue
            self.count[c] = self.count.get(c, 0) + len(px)
            self.rgb[c] = self.rgb.get(c, 0) + px.sum(axis=0)
            h = np.bincount(px.sum(axis=1) // 3, minlength=256)
            self.hist[c] = self.hist.get(c, 0) + h
            hi, lo = px.max(axis=1), px.min(axis=1)
            saturation = (hi - lo) * 255 // np.maximum(hi, 1)  # HSV saturation in 0-255 steps (black: 0)
            self.sat[c] = self.sat.get(c, 0) + np.bincount(saturation, minlength=256)

    def summary(self) -> dict[str, dict]:
        out = {}
        for c in (c for c in EVAL_CLASSES if c in self.count):
            cum = np.cumsum(self.hist[c])  # the q-th percentile: the least brightness with q% of pixels at or below
            sat = np.cumsum(self.sat[c])
            out[c] = {"pixels": int(self.count[c]), "mean_rgb": [round(float(v), 1) for v in self.rgb[c] / self.count[c]],
                      "brightness_percentiles": {str(q): int(np.searchsorted(cum, q * self.count[c] / 100)) for q in PERCENTILES},
                      "saturation_median": round(int(np.searchsorted(sat, self.count[c] / 2)) / 255, 3),
                      "grey_share": round(float(sat[GREY_SATURATION - 1]) / self.count[c], 4)}
        return out


def rendered_appearance(root: Path, every: int = 1) -> dict[str, dict]:
    """Colours of the rendered frames' classes (every `every`-th frame of the index)."""
    acc = Appearance()
    for e in read_index(root)[::every]:
        acc.add(read_render(root / e["image"]), read_mask(root / e["segmentation"]), OURS_TO_EVAL)
    return acc.summary()


def check_translation_sets(root: Path, names: list[str]) -> None:
    """Each of `names` is a translation set of data set `root`, or a SegmentError naming it."""
    sets = translation_sets(root)
    for name in names:
        if name not in sets:
            raise SegmentError(f"--translation {name}: not a translation set of {root} (its sets: "
                               f"{', '.join(sets) or 'none'})")


def translated_appearance(root: Path, name: str, every: int = 1) -> dict[str, dict]:
    """Colours of translation set `name`'s outputs (every style of every `every`-th frame of the data set's
    index), by the renders' classes."""
    check_translation_sets(root, [name])
    try:
        translated = read_translation_index(root, name)
        entries = read_index(root)[::every]
    except DatasetError as e:
        raise SegmentError(f"--translation {name}: {e}") from None
    acc = Appearance()
    for e in entries:
        t = translated.get((e["patient"], int(e["frame"])))
        if t is None:  # not translated yet: the set is being made, or was cut short
            continue
        mask = read_mask(root / e["segmentation"])
        for path in t["translations"]:
            acc.add(read_render(root / path), mask, OURS_TO_EVAL)
    if not acc.count:
        raise SegmentError(f"--translation {name}: no translated frame among every {every}-th of {root}")
    return acc.summary()


def real_appearance(pairs: list[tuple[Path, Path]], preset: LabelPreset, every: int = 1) -> dict[str, dict]:
    """Colours of the real frames' classes: (image, mask) pairs, every `every`-th."""
    acc = Appearance()
    for image, mask in pairs[::every]:
        acc.add(read_image(image), read_mask(mask), preset.values)
    return acc.summary()


def real_appearance_per_video(samples: list, preset: LabelPreset, every: int = 1) -> dict[str, dict]:
    """real_appearance of each real video on its own ({video: {"frames": n, "classes": {...}}}): the spread of
    looks that one mean hides (Endoscapes gallbladders range from saturated to half grey by video), every
    `every`-th frame of each video."""
    videos: dict[str, list] = {}
    for s in samples:
        videos.setdefault(s.patient, []).append((s.image, s.mask))
    return {v: {"frames": len(pairs[::every]), "classes": real_appearance(pairs, preset, every)}
            for v, pairs in sorted(videos.items(), key=lambda kv: natural_order(kv[0]))}


def summarise(frames: list[dict[str, float]]) -> dict[str, dict]:
    classes = [c for c in EVAL_CLASSES if any(c in f for f in frames)]
    out = {}
    for c in classes:
        s = np.array([f.get(c, 0.0) for f in frames])
        out[c] = {"frames": len(s), "visible": float((s > 0).mean()), "median": float(np.median(s)),
                  "mean": float(s.mean()), "histogram": np.histogram(s, BINS, (0.0, 1.0))[0].tolist()}
    return out


def compare(rendered: dict, real: dict | None, appearance: dict | None = None) -> dict:
    """Both summaries and, for the classes both have, the ratios of rendered to real median share;
    `appearance`: {"rendered": ..., "real": ...} from rendered_appearance / real_appearance."""
    out = {"rendered": rendered, "real": real, "ratio_limit": RATIO_LIMIT, "median_ratio": {}}
    if appearance is not None:
        out["appearance"] = appearance
    for c in (real or {}):
        if c in rendered and real[c]["median"] > 0:
            out["median_ratio"][c] = rendered[c]["median"] / real[c]["median"]
    return out


def _look_cells(a: dict) -> str:
    """One class's appearance as table cells: mean sRGB | brightness percentiles | saturation | grey share."""
    return ("(" + ", ".join(f"{v:.0f}" for v in a["mean_rgb"]) + ") | "
            + "/".join(str(v) for v in a["brightness_percentiles"].values())
            + f" | {a['saturation_median']:.2f} | {a['grey_share']:.0%}")


def markdown(report: dict, data: str, real_name: str | None) -> str:
    rendered, real = report["rendered"], report["real"] or {}
    n_r = next(iter(rendered.values()))["frames"]
    head = "| class | rendered: visible | median / mean share |"
    rule = "|---|---|---|"
    if real:
        n_real = next(iter(real.values()))["frames"]
        head += " real: visible | median / mean share | median ratio |"
        rule += "---|---|---|"
    lines = ["# Class statistics", "", f"Rendered: {data} ({n_r} frames)"
             + (f"; real: {real_name} ({n_real} frames)" if real else ""), "",
             "Share = fraction of the image; visible = at least one pixel.", "", head, rule]
    for c, r in rendered.items():
        row = f"| {c} | {r['visible']:.0%} | {r['median']:.3f} / {r['mean']:.3f} |"
        if real:
            if c in real:
                q = real[c]
                ratio = report["median_ratio"].get(c)
                flag = "" if ratio is None or 1 / RATIO_LIMIT <= ratio <= RATIO_LIMIT else " (outside 1.5x)"
                row += (f" {q['visible']:.0%} | {q['median']:.3f} / {q['mean']:.3f} | "
                        + (f"{ratio:.2f}{flag}" if ratio is not None else "-") + " |")
            else:
                row += " not labelled | | |"
        lines.append(row)
    look = report.get("appearance")
    if look:
        sides = {"rendered": look["rendered"], **{f"translation `{n}`": a for n, a in look.get("translations", {}).items()},
                 "real": look.get("real") or {}}
        lines += ["", "Appearance of each class's pixels: mean sRGB; brightness (mean of R, G, B; 0-255) at the "
                  + "/".join(map(str, PERCENTILES)) + "th percentiles; median HSV saturation; grey share (saturation "
                  f"below {GREY_SATURATION / 255:.2f}).", "",
                  "| class | set | mean sRGB | brightness | saturation | grey |", "|---|---|---|---|---|---|"]
        for c in dict.fromkeys(c for side in sides.values() for c in side):
            for side, a in ((k, v.get(c)) for k, v in sides.items()):
                if a is None:
                    continue
                lines.append(f"| {c} | {side} | {_look_cells(a)} |")
    per_video = (look or {}).get("real_videos")
    if per_video:
        lines += ["", "Real frames per video (every class's pixels in that video's frames; same columns):", "",
                  "| video | frames | class | mean sRGB | brightness | saturation | grey |",
                  "|---|---|---|---|---|---|---|"]
        for v, rec in per_video.items():
            for c, a in rec["classes"].items():
                lines.append(f"| {v} | {rec['frames']} | {c} | {_look_cells(a)} |")
    return "\n".join(lines) + "\n"


def histogram_picture(report: dict) -> Image.Image:
    """One panel per class: share-of-image histograms, rendered (orange) over real (blue), as the
    fraction of frames per bin."""
    rendered, real = report["rendered"], report["real"] or {}
    classes = list(rendered)
    pw, ph, pad = 260, 150, 30
    pic = Image.new("RGB", (pw * min(3, len(classes)) + pad, (ph + pad + 20) * ((len(classes) + 2) // 3) + 30),
                    (255, 255, 255))
    d = ImageDraw.Draw(pic)
    d.text((5, 5), "share of the image per frame: rendered (orange), real (blue)", fill=(0, 0, 0))
    for i, c in enumerate(classes):
        x0, y0 = pad + (i % 3) * pw, 30 + (i // 3) * (ph + pad + 20)
        d.text((x0, y0), c, fill=(0, 0, 0))
        base = y0 + 15 + ph
        d.line([x0, base, x0 + pw - 20, base], fill=(0, 0, 0))
        bw = (pw - 20) / BINS
        for src, colour, off in ((rendered, (240, 140, 20), 0.0), (real, (40, 90, 220), 0.5)):
            if c not in src:
                continue
            h = np.array(src[c]["histogram"], float) / max(1, src[c]["frames"])
            for b, v in enumerate(h):
                x = x0 + b * bw + off * bw
                d.rectangle([x, base - v * ph, x + bw / 2 - 1, base], fill=colour)
        d.text((x0, base + 2), "0", fill=(0, 0, 0))
        d.text((x0 + pw - 30, base + 2), "1", fill=(0, 0, 0))
    return pic


def write_statistics(out: Path, report: dict, data: str, real_name: str | None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "class_stats.json", report)
    text = markdown(report, data, real_name)
    atomic_write_text(out / "class_stats.md", text)
    pic = histogram_picture(report)
    atomic_write(out / "class_stats.png", lambda f: pic.save(f, format="PNG"))
    return text
