"""Read a rendered (and translated) data set for training downstream models (segmentation, depth...)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from blender_addon.core.dataset import TRANSLATION_FOLDER, read_index, read_translation_index, translation_sets

from .images import DataError, image_to_tensor, read_mask, read_render


class LabelledFrames(torch.utils.data.Dataset):
    """A rendered (and translated) data set for training downstream models.

    Yields dicts: `image` float (3, H, W) in [0, 1] (the render, or translation `k`),
    `segmentation` int64 (H, W) class ids (docs/dataset-format.md), `depth` float32 (H, W) in mm
    (inf where nothing was hit), `normals` float32 (3, H, W) in the OpenCV camera frame, `meta`
    (the frame's JSON), `patient`, `frame`, `source` ("render" or "translation:k").

    use="render": one item per rendered frame; "translation": one item per translation of the learned
    translator (frames without translations are left out); "both": the render and those translations;
    the name of any other translation set (e.g. "fda", "colour": backend.translate --method): one item
    per output of that set. `source` is then "<set>:k".
    """

    def __init__(self, root: str | os.PathLike, use: str = "translation", patients: list[str] | None = None):
        self.root = Path(root)
        sets = translation_sets(self.root)
        if use not in ("render", "both", TRANSLATION_FOLDER) and use not in sets:
            raise DataError(f"{self.root}: no translation set {use!r} here (use render, both, translation"
                            f"{', ' if sets else ''}{', '.join(s for s in sets if s != TRANSLATION_FOLDER)})")
        if use == "both" and TRANSLATION_FOLDER not in sets:  # it would silently be renders alone
            raise DataError(f"{self.root}: use='both' is the renders and their {TRANSLATION_FOLDER!r} set, which it "
                            f"does not have (its sets: {', '.join(sets) or 'none'}); use render for renders alone")
        entries = read_index(self.root)
        if patients is not None:
            entries = [e for e in entries if e["patient"] in patients]
        name = TRANSLATION_FOLDER if use == "both" else use
        translations = read_translation_index(self.root, name) if use != "render" else {}
        self.items: list[tuple[dict, str, str]] = []
        for e in entries:
            if use in ("render", "both"):
                self.items.append((e, e["image"], "render"))
            for k, p in enumerate(translations.get((e["patient"], int(e["frame"])), {}).get("translations", [])):
                self.items.append((e, p, f"{name}:{k}"))
        if not self.items:
            raise DataError(f"{self.root}: no frames for use={use!r}")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        e, image_path, source = self.items[i]
        image = read_render(self.root / image_path)
        seg = read_mask(self.root / e["segmentation"])
        return {
            "image": image_to_tensor(image, signed=False),
            "segmentation": torch.from_numpy(seg.astype(np.int64)),
            "depth": torch.from_numpy(np.load(self.root / e["depth"])),
            "normals": torch.from_numpy(np.load(self.root / e["normals"])).permute(2, 0, 1),
            "meta": json.loads((self.root / e["meta"]).read_text()),
            "patient": e["patient"], "frame": int(e["frame"]), "source": source,
        }
