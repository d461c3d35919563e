"""<set>_sheet.png (translation_sheet.png for the learned translator): render | class overlay | K
translations for a sample of frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blender_addon.core import png
from blender_addon.core.classes import overlay_picture
from blender_addon.core.dataset import TRANSLATION_FOLDER, read_index, read_translation_index, set_sheet
from blender_addon.core.files import atomic_write_bytes

from ..common.images import read_mask, read_render


def contact_sheet(root: Path, styles: int, n: int, max_width: int = 2400,
                  name: str = TRANSLATION_FOLDER) -> Path | None:
    done = read_translation_index(root, name)
    entries = [e for e in read_index(root) if (e["patient"], int(e["frame"])) in done]
    if not entries:
        return None
    pick = [entries[i] for i in np.linspace(0, len(entries) - 1, min(n, len(entries))).round().astype(int)]
    rows = []
    for e in pick:
        image = read_render(root / e["image"])
        seg = read_mask(root / e["segmentation"])
        tr = [read_render(root / p) for p in done[(e["patient"], int(e["frame"]))]["translations"]]
        rows.append(np.concatenate([image, overlay_picture(image, seg)] + tr[:styles], axis=1))
    sheet = np.concatenate(rows, axis=0)
    pic = Image.fromarray(np.concatenate([np.zeros((20, sheet.shape[1], 3), np.uint8), sheet]))
    ImageDraw.Draw(pic).text((4, 4), f"render | classes | {styles} translations ({name})", fill=(230, 230, 230))
    if pic.width > max_width:
        pic = pic.resize((max_width, round(pic.height * max_width / pic.width)))
    path = Path(root) / set_sheet(name)
    atomic_write_bytes(path, png.encode(np.asarray(pic)))
    return path
