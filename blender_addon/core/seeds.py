"""Seeds derived from (data set seed, patient, numbers...): the one derivation every stage uses.

Frame k of patient p depends only on (seed, p, k), translation j of it on (seed, p, k, j): adding
patients, frames or shards changes nothing that was already there.
"""
from __future__ import annotations

import zlib

import numpy as np


def patient_key(name: str) -> int:
    """Stable per-patient number (adding or removing patients changes no other patient's frames)."""
    return zlib.crc32(name.encode("utf-8"))


def derive_seed(seed: int, patient: str, *numbers: int) -> int:
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(patient_key(patient), *(int(n) for n in numbers)))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def frame_seed(seed: int, patient: str, frame: int) -> int:
    """Seed of rendered frame `frame` of `patient`."""
    return derive_seed(seed, patient, frame)


def translation_seed(seed: int, patient: str, frame: int, k: int) -> int:
    """Seed of translation k of a frame (style draw and encoder noise)."""
    return derive_seed(seed, patient, frame, k)
