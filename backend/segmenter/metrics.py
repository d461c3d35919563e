"""Dice with an ignore value, per frame and per class, and the per-patient median the report shows.

Imports numpy and `labels` only.
"""
from __future__ import annotations

import numpy as np

from .labels import EVAL_TO_TRAIN_ID, IGNORE, OURS_TO_EVAL


def dice(pred: np.ndarray, target: np.ndarray, cls_ids: set[int], valid: np.ndarray) -> float:
    """Dice of one class (a set of ids) over valid pixels; nan when the class is absent from both."""
    p = np.isin(pred, list(cls_ids)) & valid
    t = np.isin(target, list(cls_ids)) & valid
    denom = p.sum() + t.sum()
    return float("nan") if denom == 0 else float(2 * (p & t).sum() / denom)


def frame_dice(pred_train_ids: np.ndarray, target_train_ids: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Dice of each evaluation class in one frame; IGNORE pixels of the target are left out."""
    valid = target_train_ids != IGNORE
    out = {}
    for c in classes:
        ids = {i for i, name in OURS_TO_EVAL.items() if name == c}
        out[c] = dice(pred_train_ids, target_train_ids, {EVAL_TO_TRAIN_ID[c]} | ids, valid)
    return out


def per_patient_median(rows: list[dict], classes: list[str]) -> dict[str, dict[str, float]]:
    """Per patient and class, the median Dice over the patient's frames (nan frames left out)."""
    out = {}
    for p in sorted({r["patient"] for r in rows}):
        out[p] = {}
        for c in classes:
            vals = [r[c] for r in rows if r["patient"] == p and not np.isnan(r[c])]
            out[p][c] = float(np.median(vals)) if vals else float("nan")
    return out
