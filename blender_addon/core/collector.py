"""Python's cyclic garbage collector, run between a render's frames instead of whenever it likes.

A render process keeps some 70 000-110 000 objects that the collector tracks (bpy's, the patient's meshes,
trees and gallbladder lifts), and view sampling makes many short-lived lists (a lifted organ's vertices
as lists for its ray-casting tree). Left to itself, the collector then starts a full collection every
few frames, which walks all of them on whichever thread allocated last: usually the render worker at
nice +10, beside Cycles, holding the GIL that the main thread needs to read a render back and pose the
next. In render.py's loop on cholecystectomy views that was 27 ms of collection a frame on average, single
full collections up to 0.3 s (docs/evaluation.md, "The garbage collector"). So while a patient's frames render,
automatic collection is off and the worker collects the young generations once per frame, after the
frame's files are written (0.07 ms a frame). Reference counting frees everything else at once as always;
only objects in reference cycles that outlive a young collection wait for the next full collection, once
automatic collection is back on after the block.
"""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def collections_between_frames():
    """Automatic collection off for the block, as it was after it (also on errors); inside, call
    collect_young() once per frame."""
    was = gc.isenabled()
    try:
        gc.disable()  # inside the try: nothing can come between it and the restore
        yield
    finally:
        if was:
            gc.enable()


def collect_young() -> int:
    """Collect generations 0 and 1 (what the automatic collector does most often, without the full walk)."""
    return gc.collect(1)
