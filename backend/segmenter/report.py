"""The segmentation report: table.json and table.md (per-patient median Dice per class, shaped like
the paper's Table 1), a bar chart per class and predictions overlaid on real frames.

Imports numpy, PIL, blender_addon.core and `labels`, `data`, `training`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blender_addon.core.classes import overlay_picture
from blender_addon.core.files import atomic_write, atomic_write_bytes, atomic_write_text

from .data import Sample
from .labels import LabelPreset
from .training import predict

# Bar colours of the regimes (not label classes).
# the ten colours of matplotlib's tab10, so that an efficacy table of up to ten sources gives each its own
REGIME_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                  (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
                  # then the light tints of the first six: 16 sources before a colour repeats
                  (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148)]


def write_report(out: Path, table: dict, rows: dict, preset: LabelPreset, patients: list[str], notes: list[str],
                 model_for_overlay, reals: list[Sample], size, device) -> dict:
    """table: regime -> patient -> class -> median Dice; rows: regime -> the frames' Dice rows."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"preset": preset.name, "classes": preset.classes, "patients": patients, "notes": notes,
               "median_dice": table, "frames": rows}
    atomic_write_bytes(out / "table.json", (json.dumps(summary, indent=1, default=float) + "\n").encode())
    atomic_write_text(out / "table.md", _markdown(table, preset, patients, notes))
    _bars(out, table, preset.classes, patients)
    _overlays(out, model_for_overlay, reals, size, device)
    return summary


def _markdown(table: dict, preset: LabelPreset, patients: list[str], notes: list[str]) -> str:
    lines = [f"# Segmentation: per-patient median Dice ({preset.name})", ""]
    lines += [f"_{n}_" for n in notes] + ([""] if notes else [])
    for c in preset.classes:
        lines += [f"## {c}", "", "| regime | " + " | ".join(patients) + " | median | mean |",
                  "|---|" + "---|" * (len(patients) + 2)]
        for regime, per in table.items():
            vals = [per.get(p, {}).get(c, float("nan")) for p in patients]
            finite = [v for v in vals if not np.isnan(v)]
            med = float(np.median(finite)) if finite else float("nan")
            mean = float(np.mean(finite)) if finite else float("nan")
            lines.append(f"| {regime} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {med:.2f} | {mean:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _bars(out: Path, table: dict, classes: list[str], patients: list[str]) -> None:
    """dice_<class>.png: one bar per regime and patient."""
    colors = REGIME_COLOURS
    for c in classes:
        bar_w, gap, h = 14, 10, 220
        regimes = list(table)
        width = 40 + len(patients) * (len(regimes) * bar_w + gap)
        pic = Image.new("RGB", (max(width, 300), h + 60 + 14 * len(regimes)), (255, 255, 255))
        d = ImageDraw.Draw(pic)
        d.text((5, 5), f"median Dice per patient: {c}", fill=(0, 0, 0))
        for pi, p in enumerate(patients):
            x0 = 40 + pi * (len(regimes) * bar_w + gap)
            for ri, r in enumerate(regimes):
                v = table[r].get(p, {}).get(c, float("nan"))
                if not np.isnan(v):
                    d.rectangle([x0 + ri * bar_w, 30 + h * (1 - v), x0 + (ri + 1) * bar_w - 2, 30 + h],
                                fill=colors[ri % len(colors)])
            d.text((x0, 34 + h), p[:8], fill=(0, 0, 0))
        for ri, r in enumerate(regimes):
            d.rectangle([5, h + 52 + 14 * ri, 15, h + 62 + 14 * ri], fill=colors[ri % len(colors)])
            d.text((20, h + 50 + 14 * ri), r, fill=(0, 0, 0))
        _save_png(out / f"dice_{c}.png", pic)


def _save_png(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda f: picture.save(f, format="PNG"))


def _thumb(a: np.ndarray, width: int = 320) -> np.ndarray:
    return np.array(Image.fromarray(a).resize((width, round(width * a.shape[0] / a.shape[1]))))


def _overlays(out: Path, model, reals: list[Sample], size, device, n: int = 6) -> None:
    """predictions.png: up to n real frames, evenly spread, beside the model's labels blended over them."""
    pick = [reals[i] for i in np.linspace(0, len(reals) - 1, min(n, len(reals))).round().astype(int)]
    rows = []
    for s in pick:
        pred, img = predict(model, s, size, device)
        rows.append(np.concatenate([_thumb(img), _thumb(overlay_picture(img, pred.astype(np.uint8)))], 1))
    hmax = max(r.shape[0] for r in rows)
    rows = [np.pad(r, ((0, hmax - r.shape[0]), (0, 0), (0, 0))) for r in rows]
    _save_png(out / "predictions.png", Image.fromarray(np.concatenate(rows, 0)))
