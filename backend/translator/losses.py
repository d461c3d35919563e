"""Loss terms of the translator; `trainer.py` sums them with the weights named as in the paper."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Mean over RGB: hue may change under translation, bright stays bright and dark stays dark."""
    return x.mean(dim=1, keepdim=True)


def msssim_window(smaller_side: int) -> int:
    """Largest odd Gaussian window (<= 11) that pytorch-msssim accepts for 5 scales at this size."""
    for win in range(11, 1, -2):
        if smaller_side > (win - 1) * 16:
            return win
    raise ValueError(f"images of {smaller_side} px are too small for 5-scale MS-SSIM (need > 32)")


def structure_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM between the brightness of two [-1, 1] images, computed in float32."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        bx = (brightness(x.float()) + 1) / 2
        by = (brightness(y.float()) + 1) / 2
        win = msssim_window(min(x.shape[-2:]))
        return 1.0 - ms_ssim(bx, by, data_range=1.0, size_average=True, win_size=win)


def recon(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(x.float(), y.float())


def lsgan_dis(real_outs: list[torch.Tensor], fake_outs: list[torch.Tensor]) -> torch.Tensor:
    return sum(((r.float() - 1) ** 2).mean() + (f.float() ** 2).mean() for r, f in zip(real_outs, fake_outs))


def lsgan_gen(fake_outs: list[torch.Tensor]) -> torch.Tensor:
    return sum(((f.float() - 1) ** 2).mean() for f in fake_outs)
