"""A lower scheduling priority for the render's worker thread.

While Cycles renders a frame on every core, one worker thread labels and writes the frame before and
plans the next (pipeline.render_frames). At the same priority the kernel shares the cores with it: each
millisecond of its CPU made a 1-sample 452x256 render on 2 cores 0.54-0.59 ms longer, against 0.28-0.45
ms at nice +10, where it gets the cores more where Cycles leaves them idle (two runs of 20-30 ms of work).
In render.py's loop the label overhead on cholecystectomy views fell by about 0.01 (three runs); on liver
views no change was measurable (docs/evaluation.md, "the worker's priority"). Where the work does not fit
beside the render, the main thread waits for it with Cycles idle, and the worker then has the cores
whatever its priority.
"""
from __future__ import annotations

import os
import sys
import threading

WORKER_NICE = 10  # added to the worker thread's nice value (0-19: higher is lower priority)


def lower_this_thread(by: int = WORKER_NICE) -> int | None:
    """Raise the calling thread's nice value by `by` (Linux: nice is per thread). Returns the new value,
    or None where it cannot be done (other systems, a sandbox that refuses it): nothing else changes.
    Threads that this thread starts later inherit the value; Cycles' and numpy's pools are started by the
    main thread (the scene is built and its first frame rendered there) or kept to one thread (core/blas.py)."""
    if by <= 0 or not sys.platform.startswith("linux"):
        return None
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + by))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):
        return None
