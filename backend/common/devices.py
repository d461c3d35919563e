"""The --device option of every backend program: one meaning, one clear refusal.

auto: cuda:LOCAL_RANK when CUDA is usable (LOCAL_RANK is set by torchrun, 0 otherwise), else the CPU.
cuda: the same GPU as auto, so `--device cuda` works with and without torchrun. cuda:N: that GPU.
cpu, and mps on Apple machines. Asking for a GPU that is not there is an error, never a silent
fall-back to the CPU (a job that should take minutes would take days).
"""
from __future__ import annotations

import os

import torch

from blender_addon.core.errors import InputError


class DeviceError(InputError):
    """A --device that is not there or not a device."""


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(text: str) -> torch.device:
    try:
        device = torch.device(text if text != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {text}: not a device (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cpu":
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {text}: Apple's MPS is not available here; use --device cpu")
        return device
    if device.type != "cuda":
        raise DeviceError(f"--device {text}: only auto, cpu, cuda, cuda:N and mps are supported")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {text}: no usable CUDA GPU here (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
    index = local_rank() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {text}: GPU {index} asked for, {torch.cuda.device_count()} visible")
    return torch.device("cuda", index)
