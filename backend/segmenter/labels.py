"""What the evaluation counts: its classes, how our label ids and a real data set's mask values map to
them (label presets), and the error every refusal of the segmentation commands raises.

Imports numpy and blender_addon.core only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blender_addon.core.errors import InputError

IGNORE = 255
EVAL_CLASSES = ("liver", "gallbladder", "abdominal_wall", "fat", "ligament", "tool")
# Our label ids -> evaluation classes (tool = shaft or tip; real data sets label whole instruments).
OURS_TO_EVAL = {1: "liver", 2: "gallbladder", 3: "abdominal_wall", 4: "fat", 5: "ligament", 6: "tool", 7: "tool"}
EVAL_TO_TRAIN_ID = {"liver": 1, "gallbladder": 2, "abdominal_wall": 3, "fat": 4, "ligament": 5, "tool": 6}


class SegmentError(InputError):
    """Bad input to the segmentation commands; the message names the option, file or value."""



def natural_order(video: str):
    """Videos as a person counts them (video2 before video10; numbers before names): report row order."""
    return tuple((0, int(t), "") if t.isdecimal() else (1, 0, t) for t in re.split(r"(\d+)", video))


@dataclass
class LabelPreset:
    """How a real data set's mask values map to evaluation classes; other values are background."""

    name: str
    values: dict[int, str]  # mask value -> evaluation class
    ignore: tuple[int, ...]
    pattern: str  # file name -> patient (group 'patient')

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.values.values()), key=EVAL_CLASSES.index)

    def to_train_ids(self, mask: np.ndarray) -> np.ndarray:
        out = np.zeros(mask.shape, np.int64)
        for v, cls in self.values.items():
            out[mask == v] = EVAL_TO_TRAIN_ID[cls]
        out[np.isin(mask, self.ignore)] = IGNORE
        return out


PRESETS = {
    # CholecSeg8k watershed masks (grey values).
    "cholecseg8k": LabelPreset("cholecseg8k", {21: "liver", 22: "gallbladder", 11: "abdominal_wall", 12: "fat",
                                               31: "tool", 32: "tool"}, (255,), r"^(?P<patient>video\d+)"),
    # Endoscapes-Seg50: 5 gallbladder, 6 tool; 255 and 7 undocumented -> ignore; liver is not labelled.
    "endoscapes": LabelPreset("endoscapes", {5: "gallbladder", 6: "tool"}, (255, 7), r"^(?P<patient>[^_]+)_"),
    # Our own data sets' class ids.
    "lapsynth": LabelPreset("lapsynth", {1: "liver", 2: "gallbladder", 3: "abdominal_wall", 4: "fat",
                                         5: "ligament", 6: "tool", 7: "tool"}, (255,), r"^(?P<patient>[^/]+)"),
}


def _read_preset(path: Path) -> LabelPreset:
    """A label mapping from a JSON file: {"values": {"21": "liver", ...}, "ignore": [255], "pattern": "..."}."""
    try:
        d = json.loads(path.read_text())
        values = {int(k): v for k, v in d["values"].items()}
        ignore = tuple(int(v) for v in d.get("ignore", [255]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SegmentError(f"--preset {path}: not a label mapping ({type(e).__name__}: {e}); expected "
                           '{"values": {"21": "liver", ...}, "ignore": [255], "pattern": "..."}') from None
    bad = [c for c in values.values() if c not in EVAL_CLASSES]
    if bad:
        raise SegmentError(f"{path}: unknown classes {bad} (known: {', '.join(EVAL_CLASSES)})")
    # mask values as masks store them: 8-bit grey or palette indices, 16-bit grey (a -1 would match 255)
    out_of_range = sorted(v for v in [*values, *ignore] if not 0 <= v <= 65535)
    if out_of_range:
        raise SegmentError(f"--preset {path}: mask values {out_of_range} out of range (0 to 255 for 8-bit masks, "
                           "up to 65535 for 16-bit ones)")
    pattern = d.get("pattern", r"^(?P<patient>[^_]+)_")
    if not isinstance(pattern, str):
        raise SegmentError(f"--preset {path}: \"pattern\" must be a regular expression in a string, got {pattern!r}")
    return LabelPreset(path.stem, values, ignore, pattern)


def load_preset(name_or_json: str, pattern: str | None = None) -> LabelPreset:
    """A preset by name or JSON file, with its patient pattern replaced by `pattern` when given."""
    if name_or_json in PRESETS:
        p = PRESETS[name_or_json]
    else:
        path = Path(name_or_json)
        if not path.is_file():
            raise SegmentError(f"--preset {name_or_json!r}: not one of {', '.join(PRESETS)} and not a JSON file")
        p = _read_preset(path)
    if pattern:
        p = LabelPreset(p.name, p.values, p.ignore, pattern)
    try:
        groups = re.compile(p.pattern).groupindex
    except re.error as e:
        raise SegmentError(f"--patient-pattern {p.pattern!r}: not a regular expression ({e})") from None
    if "patient" not in groups:
        raise SegmentError(f"--patient-pattern {p.pattern!r}: needs a group named 'patient', e.g. "
                           r"'^(?P<patient>[^_]+)_'")
    return p
