"""The label classes of the data set (ids in the segmentation PNGs) and their display colours.

(Not to be confused with Blender's registered classes in ui.py, `BLENDER_CLASSES`.)
"""
from __future__ import annotations

import numpy as np

# id, name, display colour (RGB). Ids are the pass_index of the scene objects.
LABEL_CLASSES = [
    (0, "background", (0, 0, 0)),
    (1, "liver", (180, 60, 50)),
    (2, "gallbladder", (70, 200, 70)),
    (3, "abdominal_wall", (230, 160, 200)),
    (4, "fat", (250, 220, 60)),
    (5, "ligament", (90, 140, 255)),
    (6, "tool_shaft", (150, 150, 150)),
    (7, "tool_tip", (0, 255, 255)),
]
LABEL_IDS = {name: cid for cid, name, _ in LABEL_CLASSES}
LABEL_NAMES = [name for _, name, _ in LABEL_CLASSES]
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _cid, _name, _rgb in LABEL_CLASSES:
    PALETTE[_cid] = _rgb
# Not a scene object: pixels outside the laparoscope's circular field of view (--fov-mask circle, data set
# format 2). Not in LABEL_CLASSES, so class counts of models stay as they were; segmenters train these
# pixels as background, as real data sets label their black border.
OUTSIDE_FOV = (8, "outside_fov", (40, 40, 110))
PALETTE[OUTSIDE_FOV[0]] = OUTSIDE_FOV[2]


def colorize(segmentation: np.ndarray) -> np.ndarray:
    return PALETTE[segmentation]


def overlay_picture(image: np.ndarray, seg: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each pixel's class colour blended in (uint8 RGB)."""
    return (image * (1 - alpha) + PALETTE[seg] * alpha).astype(np.uint8)
