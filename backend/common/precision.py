"""Whether this CPU runs bf16 autocast faster than float32, judged from its flags, and the autocast
dtype of a device under an `auto | bf16 | none` setting. Shared by the translator and the segmenter.

bf16 autocast pays only where the CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16 in its
flags): measured (issue 18) bf16 took the translator's paper config from 10.6 to 4.4 s/iteration on
a Xeon with AMX-BF16, while on an AMD EPYC with AVX2 only one bf16 step did not finish in 4.5
minutes against 27 s in float32 (the bf16 kernels are emulated there). So `auto` means bf16 on such
CPUs and float32 elsewhere; `bf16` and `none` force either.

The CPU flags come from /proc/cpuinfo (none elsewhere, so float32), or from LAPSYNTH_CPU_FLAGS when
set (a space-separated flag list; tests and benchmarks use it to pretend another CPU).

Imports torch and the standard library only.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # either makes CPU bf16 autocast faster than float32
CPU_FLAGS_ENV = "LAPSYNTH_CPU_FLAGS"
CPU_AMPS = ("auto", "bf16", "none")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of /proc/cpuinfo text (x86 "flags", ARM "Features"); all cores list the same."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags: LAPSYNTH_CPU_FLAGS when set, else /proc/cpuinfo's (none when unreadable)."""
    if CPU_FLAGS_ENV in os.environ:
        return frozenset(os.environ[CPU_FLAGS_ENV].split())
    try:
        return parse_cpu_flags(Path(cpuinfo).read_text(errors="replace"))
    except OSError:  # not Linux
        return frozenset()


def bf16_features(flags) -> list[str]:
    """The bf16 matrix features among `flags` (empty: bf16 autocast would be slower than float32)."""
    return [f for f in BF16_CPU_FLAGS if f in flags]


def bf16_summary(flags=None) -> str:
    """One line for benchmarks: this CPU's bf16 matrix features, or none (and which were looked for)."""
    found = bf16_features(cpu_flags() if flags is None else flags)
    return ", ".join(found) if found else f"none (neither {' nor '.join(BF16_CPU_FLAGS)})"


def cpu_autocast(setting: str, flags=None) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for float32, why) for the CPU under cpu_amp `setting`."""
    if setting not in CPU_AMPS:
        raise ValueError(f"cpu_amp {setting!r}: expected one of {', '.join(CPU_AMPS)}")
    if setting == "bf16":
        return torch.bfloat16, "bf16 (cpu_amp: bf16)"
    if setting == "none":
        return None, "float32 (cpu_amp: none)"
    found = bf16_features(cpu_flags() if flags is None else flags)
    if found:
        return torch.bfloat16, f"bf16 (cpu_amp: auto; the CPU has {' and '.join(found)})"
    return None, f"float32 (cpu_amp: auto; the CPU has neither {' nor '.join(BF16_CPU_FLAGS)})"


def bf16_autocast(device: torch.device, setting: str, flags=None) -> tuple[torch.dtype | None, str]:
    """(dtype, why) for one `auto | bf16 | none` setting on `device`: on CUDA auto and bf16 mean bf16, on
    the CPU as cpu_autocast (auto: from the flags), elsewhere (mps) float32 always."""
    if setting not in CPU_AMPS:
        raise ValueError(f"amp {setting!r}: expected one of {', '.join(CPU_AMPS)}")
    if device.type == "cuda":
        return (None, "float32 (amp: none)") if setting == "none" else (torch.bfloat16, f"bf16 (amp: {setting})")
    if device.type == "cpu":
        dtype, why = cpu_autocast(setting, flags)
        return dtype, why.replace("cpu_amp:", "amp:")
    return None, f"float32 (no autocast on {device.type})"
