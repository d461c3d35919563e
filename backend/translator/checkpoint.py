"""Checkpoints: one file each, written atomically, loaded with weights_only=True.

A checkpoint holds both generators, both discriminators, both optimisers and schedulers, the AMP
scaler, the iteration, every RNG state and the config. Files are `ckpt_<iteration>.pt`; the last
`keep_last` are kept plus every one whose iteration is a multiple of `keep_every`.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from blender_addon.core.files import atomic_write

_NAME = re.compile(r"ckpt_(\d{8})\.pt$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, iteration: int, payload: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{iteration:08d}.pt"
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return sorted(found)


def latest(folder: Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1][1] if found else None


def prune(folder: Path, keep_last: int, keep_every: int) -> None:
    found = checkpoints(folder)
    keep = {it for it, _ in found[-keep_last:]} | {it for it, _ in found if it % keep_every == 0}
    for it, p in found:
        if it not in keep:
            p.unlink(missing_ok=True)


def load(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
