"""Asymmetric MUNIT: generator A (renders, one style), generator B (real, style code), discriminators.

Every network call goes through `forward` (with a `mode` argument) so DistributedDataParallel
sees it and synchronises gradients; AdaIN parameters are passed to the decoder as a tensor, not
assigned onto modules, which keeps the modules stateless between calls (DDP and torch.compile
friendly). No `.cuda()` anywhere: modules follow `.to(device)`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .config import DisConfig, GenConfig

# Layer tables keyed by the values config.py allows (PAD_TYPES, ACTIVATIONS, DIS_NORMS; a test keeps them equal).
PADS = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d, "zero": nn.ZeroPad2d}
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=False), "lrelu": lambda: nn.LeakyReLU(0.2, inplace=False),
               "tanh": nn.Tanh, "none": nn.Identity}


def _pad(kind: str, amount: int) -> nn.Module:
    return PADS[kind](amount)


def _activation(kind: str) -> nn.Module:
    return ACTIVATIONS[kind]()


class LayerNorm(nn.Module):
    """Normalise each sample over (C, H, W), then a per-channel affine (MUNIT's decoder norm)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        x = (x - mean) / (std + self.eps)
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


NORMS = {"in": lambda c: nn.InstanceNorm2d(c, affine=False), "ln": LayerNorm, "none": lambda c: nn.Identity(),
         "adain": lambda c: nn.Identity()}  # adain: weight and bias come with each call (generator B's decoder)


class ConvBlock(nn.Module):
    """pad -> conv -> norm -> activation; norm 'adain' takes (weight, bias) at call time."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, norm="none", activ="relu", pad_type="reflect"):
        super().__init__()
        self.pad = _pad(pad_type, padding)
        self.pad_type = pad_type
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=True)
        self.norm_kind = norm
        self.norm = NORMS[norm](cout)
        self.activ = _activation(activ)
        self.channels = cout

    def forward(self, x, adain: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.conv(self.pad(x))
        if self.norm_kind == "adain":
            weight, bias = adain  # (N, C) each
            x = F.instance_norm(x) * weight[:, :, None, None] + bias[:, :, None, None]
        else:
            x = self.norm(x)
        return self.activ(x)


def _phase_kernels(weight: torch.Tensor, padding: int) -> torch.Tensor:
    """(4 * out, in, n, n) kernels on the input for the four output phases of a k x k kernel on the 2x
    nearest-upsampled input: output pixel 2q + r sees input pixel q + (r + t - padding) // 2 through
    tap t, so each phase's kernel sums the taps that fall on the same input pixel. Plain slicing and
    sums (no index tensors: nothing to copy to the device, nothing for torch.compile to trip on)."""
    k = weight.shape[-1]
    offsets = range(-((padding + 1) // 2), (k - padding) // 2 + 1)

    def split(w: torch.Tensor, dim: int, r: int) -> torch.Tensor:
        parts = []
        for d in offsets:
            taps = [t for t in range(k) if (r + t - padding) // 2 == d]  # contiguous
            parts.append(w.narrow(dim, taps[0], len(taps)).sum(dim) if taps else w.select(dim, 0) * 0)
        return torch.stack(parts, dim)

    phases = [split(split(weight, 2, r), 3, s) for r in (0, 1) for s in (0, 1)]  # each (out, in, n, n)
    return torch.stack(phases, 1).flatten(0, 1)  # output channel o * 4 + r * 2 + s: pixel_shuffle's order


def plain_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                        pad_type: str) -> torch.Tensor:
    """conv2d(pad(upsample_nearest_2x(x))), the direct way (gen.upsample plain)."""
    return F.conv2d(_pad(pad_type, padding)(F.interpolate(x, scale_factor=2, mode="nearest")), weight, bias)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                  pad_type: str) -> torch.Tensor:
    """conv2d(pad(upsample_nearest_2x(x))) without the upsampled copy, for a square odd kernel padded to
    keep the size (padding = kernel // 2; anything else takes the plain way).

    Each output pixel (2q + r, 2p + s) sees input pixels only, so the four phases (r, s) are four
    convolutions of the input with the kernel's taps summed per input pixel: for a 5x5 kernel, 3x3
    kernels on the low-resolution input, 0.36x the arithmetic of the 5x5 convolution on the upsampled
    image (the decoder's two upsampling layers were over a third of a training step's arithmetic). Zero and
    replicate padding carry over exactly to the input; reflect padding does not (the reflection of
    the upsampled image is not the upsampled reflection), so the `padding` outer rows and columns
    are recomputed the plain way on thin strips. Same function, float rounding aside (tested)."""
    k = weight.shape[-1]
    h, w = x.shape[-2:]
    m = (k - 2) // 2 + 1  # input rows a border strip needs
    if (weight.shape[-2] != k or k % 2 == 0 or padding != k // 2 or pad_type not in ("reflect", "replicate", "zero")
            or min(h, w) < 2 * m):
        return plain_upsample_conv(x, weight, bias, padding, pad_type)
    lo, hi = (padding + 1) // 2, (k - padding) // 2
    low_pad = "constant" if pad_type == "zero" else "replicate"
    # the bias once per phase: repeat_interleave(4) without the host sync it costs on CUDA
    y = F.conv2d(F.pad(x, (lo, hi, lo, hi), mode=low_pad), _phase_kernels(weight, padding),
                 None if bias is None else bias.view(-1, 1).expand(-1, 4).reshape(-1))
    y = F.pixel_shuffle(y, 2)
    if pad_type == "reflect" and padding:
        def exact(strip: torch.Tensor) -> torch.Tensor:
            return F.pad(F.interpolate(strip, scale_factor=2, mode="nearest"), (padding,) * 4, mode="reflect")
        rows = padding + k - 1  # padded rows that give `padding` output rows
        top = F.conv2d(exact(x[:, :, :m])[:, :, :rows], weight, bias)
        bottom = F.conv2d(exact(x[:, :, -m:])[:, :, -rows:], weight, bias)
        y = torch.cat([top, y[:, :, padding:-padding], bottom], dim=2)
        left = F.conv2d(exact(x[:, :, :, :m])[:, :, :, :rows], weight, bias)
        right = F.conv2d(exact(x[:, :, :, -m:])[:, :, :, -rows:], weight, bias)
        y = torch.cat([left, y[:, :, :, padding:-padding], right], dim=3)
    return y


class UpConvBlock(ConvBlock):
    """Nearest 2x upsampling, then pad -> conv -> norm -> activation (the decoder's upsampling layer),
    computed by `upsample_conv` (phases) or `plain_upsample_conv` (gen.upsample; auto: phases on the CPU,
    plain elsewhere); the same parameters and state-dict keys as a ConvBlock."""

    def __init__(self, cin, cout, kernel, padding, norm, activ, pad_type, upsample: str = "auto"):
        super().__init__(cin, cout, kernel, 1, padding, norm, activ, pad_type)
        self.padding, self.upsample = padding, upsample

    def phases(self, x: torch.Tensor) -> bool:
        # phases: less arithmetic, more (small) kernels, which wins where arithmetic bounds the step (a CPU);
        # a GPU step at batch 1 is bound by kernel launches, where the direct way wins
        return self.upsample == "phases" or (self.upsample == "auto" and x.device.type == "cpu")

    def forward(self, x, adain=None):
        conv = upsample_conv if self.phases(x) else plain_upsample_conv
        x = conv(x, self.conv.weight, self.conv.bias, self.padding, self.pad_type)
        return self.activ(self.norm(x))


class ResBlock(nn.Module):
    def __init__(self, dim, norm, pad_type):
        super().__init__()
        self.c1 = ConvBlock(dim, dim, 3, 1, 1, norm, "relu", pad_type)
        self.c2 = ConvBlock(dim, dim, 3, 1, 1, norm, "none", pad_type)

    def forward(self, x, adain=None):
        if adain is None:
            return x + self.c2(self.c1(x))
        return x + self.c2(self.c1(x, adain[0]), adain[1])


class ContentEncoder(nn.Module):
    def __init__(self, cfg: GenConfig, in_channels: int = 3):
        super().__init__()
        dim = cfg.dim
        layers = [ConvBlock(in_channels, dim, 7, 1, 3, "in", cfg.activ, cfg.pad_type)]
        for _ in range(cfg.n_downsample):
            layers.append(ConvBlock(dim, dim * 2, 4, 2, 1, "in", cfg.activ, cfg.pad_type))
            dim *= 2
        self.down = nn.Sequential(*layers)
        self.res = nn.Sequential(*[ResBlock(dim, "in", cfg.pad_type) for _ in range(cfg.n_res)])
        # The squeeze to a few channels (the method's 8): little room to hide the render's details.
        self.squeeze = ConvBlock(dim, cfg.content_dim, 3, 1, 1, "none", cfg.content_activ, cfg.pad_type)
        self.out_channels = dim

    def forward(self, x):
        return self.squeeze(self.res(self.down(x)))

    def stages(self) -> list[nn.Module]:
        """The layers whose outputs are taps 1, 2, ... (tap 0 is the input): the first conv, each
        downsampling conv, each residual block, the squeeze to the content code."""
        return [*self.down, *self.res, self.squeeze]

    def tap_channels(self, in_channels: int = 3) -> list[int]:
        return [in_channels] + [s.channels if isinstance(s, ConvBlock) else s.c2.channels for s in self.stages()]

    def taps(self, x, ids: list[int], full: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The outputs at taps `ids` and, when `full`, the content code; without it the pass stops at the
        deepest tap (the contrastive loss needs no more of a translation's encoding)."""
        stages = self.stages()
        stop = len(stages) if full else max(ids)
        feats = {0: x} if 0 in ids else {}
        for i, stage in enumerate(stages[:stop], start=1):
            x = stage(x)
            if i in ids:
                feats[i] = x
        return [feats[i] for i in ids], (x if full else None)


class StyleEncoder(nn.Module):
    def __init__(self, cfg: GenConfig, in_channels: int = 3):
        super().__init__()
        dim = cfg.dim
        layers = [ConvBlock(in_channels, dim, 7, 1, 3, "none", cfg.activ, cfg.pad_type)]
        for i in range(cfg.style_downsample):
            nxt = dim * 2 if i < 2 else dim
            layers.append(ConvBlock(dim, nxt, 4, 2, 1, "none", cfg.activ, cfg.pad_type))
            dim = nxt
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, cfg.style_dim, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x).flatten(1)


class Decoder(nn.Module):
    def __init__(self, cfg: GenConfig, adain: bool, out_channels: int = 3):
        super().__init__()
        dim = cfg.dim * 2 ** cfg.n_downsample
        norm = "adain" if adain else "in"
        self.expand = ConvBlock(cfg.content_dim, dim, 3, 1, 1, "in", cfg.activ, cfg.pad_type)
        self.res = nn.ModuleList([ResBlock(dim, norm, cfg.pad_type) for _ in range(cfg.n_res)])
        # Named 1, 3, ..., like the upsample + conv pairs they replace: checkpoints keep their keys.
        ups = OrderedDict()
        for i in range(cfg.n_downsample):
            ups[str(2 * i + 1)] = UpConvBlock(dim, dim // 2, 5, 2, "ln", cfg.activ, cfg.pad_type,
                                              upsample=cfg.upsample)
            dim //= 2
        ups[str(2 * cfg.n_downsample)] = ConvBlock(dim, out_channels, 7, 1, 3, "none", "tanh", cfg.pad_type)
        self.up = nn.Sequential(ups)
        self.res_dim = cfg.dim * 2 ** cfg.n_downsample
        self.n_adain = 2 * 2 * cfg.n_res * self.res_dim if adain else 0  # (weight, bias) x 2 convs x blocks

    def forward(self, content, adain_params: torch.Tensor | None = None):
        x = self.expand(content)
        if adain_params is None:
            for block in self.res:
                x = block(x)
        else:
            chunks = adain_params.split(self.res_dim, dim=1)  # w, b, w, b per block
            for i, block in enumerate(self.res):
                w1, b1, w2, b2 = chunks[4 * i:4 * i + 4]
                x = block(x, ((1 + w1, b1), (1 + w2, b2)))  # centred at identity scale
        return self.up(x)


class MLP(nn.Module):
    def __init__(self, cin, cout, hidden, n_layers=3):
        super().__init__()
        layers, d = [], cin
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, cout))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def _noisy(x: torch.Tensor, std: float, on: bool) -> torch.Tensor:
    """The method's defence against steganography: noise on every encoder input."""
    return x + torch.randn_like(x) * std if on and std > 0 else x


class GeneratorA(nn.Module):
    """Renders: content encoder + decoder with instance norm (domain A has a single style)."""

    def __init__(self, cfg: GenConfig, noise_std: float = 0.1):
        super().__init__()
        self.noise_std = noise_std
        self.enc = ContentEncoder(cfg)
        self.dec = Decoder(cfg, adain=False)

    def forward(self, x=None, content=None, mode: str = "encode", noise: bool | None = None):
        noise = self.training if noise is None else noise
        if mode == "encode":
            return self.enc(_noisy(x, self.noise_std, noise))
        if mode == "decode":
            return self.dec(content)
        raise ValueError(f"GeneratorA: unknown mode {mode!r}")


class GeneratorB(nn.Module):
    """Real frames: content encoder + style encoder + MLP (AdaIN parameters) + decoder."""

    def __init__(self, cfg: GenConfig, noise_std: float = 0.1):
        super().__init__()
        self.noise_std = noise_std
        self.style_dim = cfg.style_dim
        self.enc = ContentEncoder(cfg)
        self.enc_style = StyleEncoder(cfg)
        self.dec = Decoder(cfg, adain=True)
        self.mlp = MLP(cfg.style_dim, self.dec.n_adain, cfg.mlp_dim)

    def forward(self, x=None, content=None, style=None, mode: str = "encode", noise: bool | None = None):
        noise = self.training if noise is None else noise
        if mode == "encode":  # (content, style), each from its own noisy copy of x
            return self.enc(_noisy(x, self.noise_std, noise)), self.enc_style(_noisy(x, self.noise_std, noise))
        if mode == "style":
            return self.enc_style(_noisy(x, self.noise_std, noise))
        if mode == "decode":
            return self.dec(content, self.mlp(style))
        raise ValueError(f"GeneratorB: unknown mode {mode!r}")


class ScaleDiscriminator(nn.Module):
    def __init__(self, cfg: DisConfig, in_channels: int = 3):
        super().__init__()
        dim = cfg.dim
        layers = [ConvBlock(in_channels, dim, 4, 2, 1, "none", cfg.activ, cfg.pad_type)]
        for _ in range(cfg.n_layer - 1):
            layers.append(ConvBlock(dim, dim * 2, 4, 2, 1, cfg.norm, cfg.activ, cfg.pad_type))
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class MultiScaleDiscriminator(nn.Module):
    """LSGAN discriminators on the image and on 2x, 4x average-pooled copies."""

    def __init__(self, cfg: DisConfig, in_channels: int = 3):
        super().__init__()
        self.scales = nn.ModuleList([ScaleDiscriminator(cfg, in_channels) for _ in range(cfg.num_scales)])
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = self.pool(x)
            outs.append(d(x))
        return outs


def init_weights(module: nn.Module, kind: str) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif kind == "gaussian":
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif kind == "xavier":
                nn.init.xavier_normal_(m.weight, gain=2 ** 0.5)
            elif kind == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=2 ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_networks(cfg) -> dict[str, nn.Module]:
    nets = {
        "gen_a": GeneratorA(cfg.gen, cfg.noise_std),
        "gen_b": GeneratorB(cfg.gen, cfg.noise_std),
        "dis_a": MultiScaleDiscriminator(cfg.dis),
        "dis_b": MultiScaleDiscriminator(cfg.dis),
    }
    init_weights(nets["gen_a"], cfg.init)
    init_weights(nets["gen_b"], cfg.init)
    init_weights(nets["dis_a"], "gaussian")
    init_weights(nets["dis_b"], "gaussian")
    return nets


def parameter_counts(nets: dict[str, nn.Module]) -> dict[str, int]:
    return {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items()}
