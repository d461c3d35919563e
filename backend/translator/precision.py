"""Which autocast precision training and translation use on a device.

CUDA: the config's `amp` (bf16 by default). CPU: `cpu_amp`, whose default `auto` means bf16 autocast
only where the CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16) and float32 elsewhere; the
detection from the CPU flags (and why) lives in backend.common.precision, which the segmenter uses too.
"""
from __future__ import annotations

import torch

from ..common.precision import (  # noqa: F401 - this module's names since issue 18
    BF16_CPU_FLAGS,
    CPU_AMPS,
    CPU_FLAGS_ENV,
    bf16_features,
    cpu_autocast,
    cpu_flags,
    parse_cpu_flags,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def autocast_dtype(device: torch.device, amp: str, cpu_amp: str, flags=None) -> tuple[torch.dtype | None, str]:
    """(dtype, why) for `device`: CUDA follows `amp` (bf16, fp16, none), the CPU `cpu_amp`, others float32."""
    if device.type == "cuda":
        return DTYPES[amp], f"{amp if amp != 'none' else 'float32'} (amp: {amp})"
    if device.type == "cpu":
        return cpu_autocast(cpu_amp, flags)
    return None, f"float32 (no autocast on {device.type})"
