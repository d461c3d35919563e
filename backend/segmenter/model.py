"""TernausNet-11 (a U-Net with torchvision's VGG11 encoder), where its ImageNet weights are found
(locally only, never downloaded), and the model files the commands write and read.

Imports torch, torchvision, blender_addon.core and `labels`.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg11

from blender_addon.core.classes import LABEL_CLASSES
from blender_addon.core.files import atomic_write

from .labels import SegmentError


class _ConvRelu(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class _DecoderBlock(nn.Sequential):
    def __init__(self, cin, mid, cout):
        super().__init__(_ConvRelu(cin, mid), nn.ConvTranspose2d(mid, cout, 3, stride=2, padding=1, output_padding=1),
                         nn.ReLU(inplace=True))


class TernausNet11(nn.Module):
    """U-Net with torchvision's VGG11 encoder (Iglovikov and Shvets, 2018). Input sides: multiples of 32."""

    def __init__(self, num_classes: int = len(LABEL_CLASSES), nf: int = 32, imagenet: Path | None = None):
        super().__init__()
        enc = vgg11(weights=None).features
        self.imagenet = None
        if imagenet is not None:
            state = torch.load(imagenet, map_location="cpu", weights_only=True)
            feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
            enc.load_state_dict(feats)
            self.imagenet = str(imagenet)
        self.pool = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU(inplace=True)
        self.conv1, self.conv2 = enc[0], enc[3]
        self.conv3s, self.conv3 = enc[6], enc[8]
        self.conv4s, self.conv4 = enc[11], enc[13]
        self.conv5s, self.conv5 = enc[16], enc[18]
        self.center = _DecoderBlock(nf * 16, nf * 16, nf * 8)
        self.dec5 = _DecoderBlock(nf * (16 + 8), nf * 16, nf * 8)
        self.dec4 = _DecoderBlock(nf * (16 + 8), nf * 16, nf * 4)
        self.dec3 = _DecoderBlock(nf * (8 + 4), nf * 8, nf * 2)
        self.dec2 = _DecoderBlock(nf * (4 + 2), nf * 4, nf)
        self.dec1 = _ConvRelu(nf * (2 + 1), nf)
        self.final = nn.Conv2d(nf, num_classes, 1)

    def forward(self, x):
        r = self.relu
        c1 = r(self.conv1(x))
        c2 = r(self.conv2(self.pool(c1)))
        c3 = r(self.conv3(r(self.conv3s(self.pool(c2)))))
        c4 = r(self.conv4(r(self.conv4s(self.pool(c3)))))
        c5 = r(self.conv5(r(self.conv5s(self.pool(c4)))))
        center = self.center(self.pool(c5))
        d5 = self.dec5(torch.cat([center, c5], 1))
        d4 = self.dec4(torch.cat([d5, c4], 1))
        d3 = self.dec3(torch.cat([d4, c3], 1))
        d2 = self.dec2(torch.cat([d3, c2], 1))
        d1 = self.dec1(torch.cat([d2, c1], 1))
        return self.final(d1)


def find_imagenet(path: str | None) -> Path | None:
    """A local VGG11 ImageNet state dict: the given path, else torchvision's cache; never downloaded."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise SegmentError(f"--imagenet {path}: file not found")
        return p
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(cache.glob("vgg11-*.pth"))
    return found[0] if found else None


# ----------------------------------------------------------------------------- model files

def save_model(path: Path, model: nn.Module, **extra) -> None:
    """{"model": state dict, **extra}, written atomically (a kill leaves the old file or the new one)."""
    payload = {"model": model.state_dict(), **extra}
    atomic_write(path, lambda f: torch.save(payload, f))


def read_model_file(path: Path) -> dict:
    """A model file as saved by `save_model` (tensors on the CPU); SegmentError naming it when it is not one
    (truncated by a full disk, another program's file, a folder)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises on a file that is not ours
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise SegmentError(f"{path}: not a readable model file ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise SegmentError(f"{path}: not a model file of backend.segment (no weights)")
    return state


def load_into(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(read_model_file(path)["model"])
    return model


def load_trained(path: Path, option: str = "--checkpoint") -> tuple[TernausNet11, dict]:
    """The network and the file's contents of a model written by `backend.segment train`; any other
    file is refused with one line naming it."""
    if not path.is_file():
        raise SegmentError(f"{option} {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = TernausNet11()
        model.load_state_dict(state["model"])
    except Exception as e:  # noqa: BLE001 - any unusable file: one clear line
        what = ("not a PyTorch file" if isinstance(e, (pickle.UnpicklingError, RuntimeError, EOFError))
                else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
        raise SegmentError(f"{option} {path}: not a model written by `backend.segment train` ({what})") from None
    return model, state
