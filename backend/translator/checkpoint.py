"""Checkpoints: one file each, written atomically, loaded with weights_only=True.

A checkpoint holds both generators, both discriminators, both optimisers and schedulers, both AMP
loss scalers, the counts of skipped steps, the iteration, the number of processes, every rank's RNG
state and the config. Files are `ckpt_<iteration>.pt`; the last
`keep_last` are kept plus every one whose iteration is a multiple of `keep_every`. A checkpoint
that does not load (truncated by a full disk, say) is renamed `<name>.corrupt`, never deleted, and
the run resumes from the newest one that loads (`load_newest`). A write interrupted by kill -9
leaves its temporary (`.tmp-*.pt`, see blender_addon/core/files.atomic_write) behind; the next run
removes those at start-up (`remove_temporaries`), never a complete checkpoint.
"""
from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from blender_addon.core.errors import InputError
from blender_addon.core.files import atomic_write

from ..common.cli import log

_NAME = re.compile(r"ckpt_(\d{8})\.pt$")
_TEMPORARY = re.compile(r"^\.tmp-.*\.pt$")  # atomic_write's mkstemp(prefix=".tmp-", suffix=".pt")


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
    # A checkpoint is loaded with map_location=<the training device>, which moves these tensors onto the
    # GPU too; the generators take their states as CPU byte tensors only (a resume on CUDA failed so).
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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


def remove_temporaries(folder: Path, say: Callable[[str], None] = log) -> list[Path]:
    """Delete the temporaries of checkpoint writes that never finished (the writer was killed before its
    rename). Call at start-up, before this job writes: a file of that name is then nobody's checkpoint."""
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if _TEMPORARY.match(p.name) and p.is_file())
    for p in stale:
        size = p.stat().st_size
        p.unlink(missing_ok=True)
        say(f"removed {p.name} ({size} bytes): an unfinished checkpoint write of an interrupted run")
    return stale


def world_size(state: dict) -> int:
    """The number of processes a checkpoint was trained with (older ones: one RNG state per rank)."""
    return int(state.get("world", len(state.get("rng") or [None])))


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


def _set_aside(path: Path) -> Path:
    """Rename an unloadable checkpoint to <name>.corrupt (<name>.N.corrupt when that exists)."""
    target, n = path.with_name(path.name + ".corrupt"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{n}.corrupt")
    os.rename(path, target)
    return target


def _try_load(path: Path, map_location) -> tuple[dict | None, str]:
    """(state, "") when `path` loads as a checkpoint, else (None, why not)."""
    try:
        state = load(path, map_location=map_location)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise  # the machine's trouble, not the file's
    except OSError as e:  # likewise (permissions, an I/O error of the disk or network file system)
        raise InputError(f"checkpoint {path}: cannot be read ({e.strerror or e}); left as it is") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        first = (str(e).splitlines() or [""])[0].split(". ")[0]  # torch appends paragraphs of advice
        return None, first[:160] or type(e).__name__
    if not isinstance(state, dict) or not {"iteration", "config"} <= state.keys():
        return None, "not a training checkpoint"
    return state, ""


def load_newest(folder: Path, map_location="cpu", say: Callable[[str], None] = log,
                rename: bool = True) -> tuple[dict | None, Path | None]:
    """The newest checkpoint in `folder` that loads, and its path ((None, None) when none does).

    Each newer one that does not load is renamed to <name>.corrupt (when `rename`: only one process
    of a job renames) and named in a one-line warning saying which checkpoint is used instead."""
    bad: list[tuple[Path, str]] = []
    state = found = None
    for _, path in reversed(checkpoints(folder)):
        if not path.exists():  # set aside by another process of the same job meanwhile
            continue
        state, why = _try_load(path, map_location)
        if state is not None:
            found = path
            break
        bad.append((path, why))
    instead = f"resuming from {found.name} instead" if found else "no older checkpoint loads"
    for path, why in bad:
        kept = f"renamed to {_set_aside(path).name}" if rename else "skipped"
        say(f"warning: checkpoint {path} does not load ({why}); {kept}; {instead}")
    return state, found
