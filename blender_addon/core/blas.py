"""One BLAS thread in the render process.

numpy's OpenBLAS keeps a pool of threads for its LAPACK calls, `np.linalg.inv` of a 4x4 matrix included,
and they spin while they wait for work. Beside Cycles, which keeps both cores of a 2-core machine busy,
a 4x4 inverse in the render's worker thread took up to 8 ms (3.1 ms a frame in all; 0.08 ms with one
thread), and spinning threads take CPU from the render. The renderer's matrices are 3x3 and 4x4: a
thread pool gains nothing there.
"""
from __future__ import annotations

import ctypes
import os
import sys

# numpy 1.x wheels bundle OpenBLAS (64-bit integers: the 64_ suffix), numpy 2.x scipy-openblas (its own prefix)
SETTERS = ("openblas_set_num_threads64_", "openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
           "scipy_openblas_set_num_threads")


def single_threaded_blas() -> str | None:
    """Give numpy's OpenBLAS one thread, whether numpy is loaded already (`import bpy` loads it) or not.
    Returns the library's file name, or None where none was found (other BLAS, other systems)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a numpy loaded later reads it
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split(None, 5)[-1].strip() for line in f if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # the library already loaded: the same handle, nothing loads twice
        except OSError:
            continue
        for name in SETTERS:
            if hasattr(lib, name):
                getattr(lib, name)(1)
                return os.path.basename(path)
    return None
