"""Loss terms of the translator; `trainer.py` sums them with the weights named as in the paper."""
from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F
from pytorch_msssim.ssim import gaussian_filter

# MS-SSIM as pytorch-msssim computes it (Wang et al. 2003: 5 scales, these exponents, K = (0.01, 0.03),
# Gaussian sigma 1.5), with one change below: how a negative per-scale term enters the product.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2, SIGMA = 0.01, 0.03, 1.5
# Below FLOOR a term t enters as FLOOR^w / (1 + w (FLOOR - t) / FLOOR) instead of relu(t)^w; see
# _positive_power. At and above it the value is exactly pytorch-msssim's.
FLOOR = 0.01


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Mean over RGB: hue may change under translation, bright stays bright and dark stays dark."""
    return x.mean(dim=1, keepdim=True)


def msssim_window(smaller_side: int) -> int:
    """Largest odd Gaussian window (<= 11) that pytorch-msssim accepts for 5 scales at this size."""
    for win in range(11, 1, -2):
        if smaller_side > (win - 1) * 16:
            return win
    raise ValueError(f"images of {smaller_side} px are too small for 5-scale MS-SSIM (need > 32)")


@functools.lru_cache(maxsize=32)
def _gaussian_window(size: int, channels: int, device: torch.device, dtype: torch.dtype,
                     sigma: float = SIGMA) -> torch.Tensor:
    """The separable window in the layout gaussian_filter expects: (channels, 1, 1, size). Made once per
    device: a host-to-device copy per call is a sync point, and cannot be captured in a CUDA graph."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1).to(device, dtype)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float = 1.0):
    """Per image and channel: mean SSIM and mean contrast-structure (cs) over the valid filter positions."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = gaussian_filter(x, win), gaussian_filter(y, win)
    var_x = gaussian_filter(x * x, win) - mu_x ** 2
    var_y = gaussian_filter(y * y, win) - mu_y ** 2
    cov = gaussian_filter(x * y, win) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim_terms(x: torch.Tensor, y: torch.Tensor, win_size: int, data_range: float = 1.0) -> torch.Tensor:
    """(5, N, C): the mean cs of scales 1-4 and the mean SSIM of scale 5, unclamped (each in [-1, 1])."""
    win = _gaussian_window(win_size, x.shape[1], x.device, x.dtype)
    terms = []
    for i in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_terms(x, y, win, data_range)
        if i < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(cs)
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    return torch.stack(terms + [ssim])


def _positive_power(t: torch.Tensor, w: float, floor: float = FLOOR) -> torch.Tensor:
    """t^w for t >= floor; below, a positive, strictly increasing continuation with the same value and
    slope at the floor: floor^w / (1 + w (floor - t) / floor).

    pytorch-msssim uses relu(t)^w: a scale whose render and translation are anti-correlated (t <= 0) zeroes
    the whole product, the loss sits at 1 and its gradient is exactly zero, so nothing pushes the
    translation back towards the render's structure. The continuation keeps every factor positive (a
    negative factor would flip the sign of the others' gradients) and decays only polynomially (an
    exponential tail underflows float32 for t near -1), so the gradient is never exactly zero."""
    above = t.clamp(min=floor) ** w
    below = floor ** w / (1 + w * (floor - t.clamp(max=floor)) / floor)  # clamped: finite in both branches
    return torch.where(t >= floor, above, below)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, win_size: int, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM averaged over the batch (and channels), in (0, 1]: pytorch_msssim.ms_ssim wherever every
    per-scale term is >= FLOOR, positive and with a gradient everywhere (_positive_power)."""
    terms = ms_ssim_terms(x, y, win_size, data_range)
    factors = [_positive_power(t, w) for t, w in zip(terms, MS_SSIM_WEIGHTS)]
    # a chain of products, not torch.prod: prod's backward checks for zeros on the host (a sync, and not
    # capturable in a CUDA graph)
    return functools.reduce(operator.mul, factors).mean()


def structure_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM between the brightness of two [-1, 1] images, computed in float32."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        bx = (brightness(x.float()) + 1) / 2
        by = (brightness(y.float()) + 1) / 2
        return 1.0 - ms_ssim(bx, by, msssim_window(min(x.shape[-2:])))


def recon(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(x.float(), y.float())


def patch_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over patches, per image: (B, P, D) unit-length queries and keys, P places of one image.
    Query p's positive is key p (the same place); the other P - 1 keys of the same image are its negatives.
    Returns (B,): the mean over places of -log softmax_p(q_p . k / t), in float32. Matching features score
    about log(1) = 0 at low temperature, unrelated ones about log(P)."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        logits = torch.bmm(queries.float(), keys.float().transpose(1, 2)) / temperature  # (B, P, P)
        target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(dim=1)


def lsgan_dis(real_outs: list[torch.Tensor], fake_outs: list[torch.Tensor]) -> torch.Tensor:
    return sum(((r.float() - 1) ** 2).mean() + (f.float() ** 2).mean() for r, f in zip(real_outs, fake_outs))


def lsgan_gen(fake_outs: list[torch.Tensor]) -> torch.Tensor:
    return sum(((f.float() - 1) ** 2).mean() for f in fake_outs)
