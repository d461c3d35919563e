"""The translator's configuration: one typed object, MUNIT's key names, validated once.

`load_config(path, overrides)` reads a YAML file, applies `key=value` overrides (dotted keys
for nested sections, e.g. `gen.style_dim=4`), refuses unknown keys and bad values with a message
naming them, and returns a TrainConfig. Every default names its source (the paper, the authors'
code lineage, NVlabs MUNIT, or our own choice; `src` below, docs/training.md).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from blender_addon.core.errors import ConfigError

__all__ = ["AugConfig", "ConfigError", "CutConfig", "DisConfig", "GenConfig", "TrainConfig", "config_from_dict",
           "load_config", "saved_config"]

# The allowed values of every enumerated key; networks.py builds its layers from tables with exactly
# these keys (a test keeps them equal), so a value accepted here never fails later with a KeyError.
PAD_TYPES = ("reflect", "replicate", "zero")
ACTIVATIONS = ("relu", "lrelu", "tanh", "none")
DIS_NORMS = ("none", "in", "ln")  # MUNIT also has bn/adain; a discriminator here has no AdaIN parameters
GAN_TYPES = ("lsgan",)  # the method's; MUNIT's nsgan is not implemented
LR_POLICIES = ("step", "constant")
INITS = ("kaiming", "gaussian", "xavier", "orthogonal")
AMPS = ("bf16", "fp16", "none")
CPU_AMPS = ("auto", "bf16", "none")  # backend/translator/precision.py
MODELS = ("munit", "cut")  # the method's two-sided MUNIT; a one-sided contrastive translator (cut.py)
DIS_FAKES = ("reuse", "fresh")  # trainer.py, Trainer.step
UPSAMPLES = ("auto", "phases", "plain")  # networks.py, UpConvBlock
RENDER_SCALES = ("random", "native")  # data.py, augment
CHOICES = {"model": MODELS, "dis_fakes": DIS_FAKES, "lr_policy": LR_POLICIES, "init": INITS, "amp": AMPS, "cpu_amp": CPU_AMPS, "gen.activ": ACTIVATIONS,
           "gen.content_activ": ACTIVATIONS, "gen.pad_type": PAD_TYPES, "gen.upsample": UPSAMPLES, "aug.render_scale": RENDER_SCALES,
           "dis.gan_type": GAN_TYPES, "dis.activ": ACTIVATIONS, "dis.norm": DIS_NORMS, "dis.pad_type": PAD_TYPES}


# The largest count (iterations, intervals, sizes) a config may give: far beyond any run, far below overflow.
MAX_COUNT = 10 ** 9


# Where a default comes from (docs/training.md, "Where the defaults come from"); every leaf key names one.
SOURCES = {
    "paper": "Pfeiffer et al., MICCAI 2019",
    "lineage": "the authors' released code or its descendant (Rivoir et al., ICCV 2021); not in the paper",
    "MUNIT": "NVlabs/MUNIT's configs and trainer (Huang et al. 2018), kept by the lineage",
    "CUT": "contrastive unpaired translation (Park et al., ECCV 2020), its paper and defaults; model: cut only",
    "ours": "our own choice, with the reason given",
}


def _d(default, doc: str = "", section: str = "", src: str = ""):
    """A config field: its default, the comment configs/default.yaml shows, the heading it opens, and
    where the default comes from (a SOURCES key, for "ours" followed by the reason)."""
    meta = {"doc": doc, "section": section, "src": src}
    if isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class GenConfig:
    dim: int = _d(64, "channels of the first encoder conv", src="MUNIT")
    mlp_dim: int = _d(256, "hidden width of the style MLP (AdaIN parameters)", src="MUNIT")
    style_dim: int = _d(8, src="MUNIT")
    content_dim: int = _d(8, "content code squeezed to 8 channels (vanilla MUNIT: 256)", src="lineage (descendant)")
    n_downsample: int = _d(2, src="MUNIT")
    n_res: int = _d(4, src="MUNIT")
    style_downsample: int = _d(4, src="MUNIT")
    activ: str = _d("relu", src="MUNIT")
    content_activ: str = _d("none", "activation on the squeezed content code (none: a linear code; relu: the "
                            "descendant's)", src="ours: a linear code kept structure and Dice better at equal "
                            "iterations (docs/training.md, 'Two experiments'; checkpoints from before had relu)")
    pad_type: str = _d("reflect", src="MUNIT")
    upsample: str = _d("auto", "the decoder's nearest 2x + 5x5 conv: phases (four 3x3 convolutions of the "
                       "low-resolution input, 0.36x the arithmetic), plain (upsample, then convolve: fewer "
                       "kernels) or auto (phases on the CPU, plain elsewhere); the same function and weights",
                       src="ours: phases made a CPU step at the paper's widths 1.25x faster; plain an H200 step "
                       "1.26-1.49x faster (docs/evaluation.md, GPU run 4)")


@dataclass
class DisConfig:
    dim: int = _d(64, src="MUNIT")
    n_layer: int = _d(4, src="MUNIT")
    num_scales: int = _d(3, src="MUNIT")
    gan_type: str = _d("lsgan", src="MUNIT")
    activ: str = _d("lrelu", src="MUNIT")
    norm: str = _d("none", src="MUNIT")
    pad_type: str = _d("reflect", src="MUNIT")


@dataclass
class AugConfig:
    random_resize: bool = _d(True, "random resized crop, aspect ratio kept", src="lineage (the kind; amounts: ours)")
    min_scale: float = _d(0.6, "smallest crop, as a fraction of the largest crop that fits",
                          src="ours: magnification up to 1.67x, untuned")
    render_scale: str = _d("random", "renders: random (resized like real frames, magnified 1 to 1/min_scale) or "
                           "native (the pixel scale translation sees: 1 render pixel = 1 input pixel)",
                           src="ours: magnified like real crops; native lost Dice (docs/training.md, 'Two experiments')")
    circular_mask_p: float = _d(0.5, "renders only: black outside a random circle, like the endoscope's view",
                                src="ours: the lineage's mask, on half the renders so both kinds are seen")
    rotation: float = _d(10.0, "degrees, uniform +-", src="ours: 'small rotations' of the lineage, untuned")
    rotation_p: float = _d(0.5, src="ours, untuned")
    color_jitter: bool = _d(True, src="lineage (the kind)")
    brightness: float = _d(0.15, src="ours, untuned")
    contrast: float = _d(0.15, src="ours, untuned")


@dataclass
class CutConfig:
    """The one-sided model's own keys (model: cut); MUNIT's ignores them."""
    nce_w: float = _d(1.0, "PatchNCE between render and translation features", src="CUT")
    nce_idt_w: float = _d(1.0, "PatchNCE between a real frame and its own translation (0: off, saves one generator pass)",
                          src="CUT (its nce_idt for CUT, off for FastCUT)")
    nce_layers: str = _d("0,1,2,3,4", "content-encoder taps: 0 input, 1 first conv, then each downsampling conv, "
                         "each residual block, the content code", src="ours: CUT's five taps, pixels to mid-level")
    nce_patches: int = _d(256, "patches sampled per tap and image", src="CUT")
    nce_t: float = _d(0.07, "InfoNCE temperature", src="CUT")
    nce_mlp_dim: int = _d(256, "projection head per tap: C -> nce_mlp_dim -> nce_mlp_dim, then L2-normalised",
                          src="CUT")

    def layer_ids(self) -> list[int]:
        return [int(v) for v in self.nce_layers.split(",")]


@dataclass
class TrainConfig:
    """The translator's defaults, MUNIT's key names where one exists, each with its source (`src`).
    The only place they are written; configs/default.yaml is generated from here and overrides nothing."""

    model: str = _d("munit", "munit: the method's asymmetric MUNIT; cut: one generator with a patch contrastive loss "
                    "(keys in cut)", "model", src="paper (munit; cut is issue 18's option)")
    max_iter: int = _d(375_000, "iterations (the released checkpoint had 500000)", "optimisation", src="paper")
    batch_size: int = _d(1, src="MUNIT")
    lr: float = _d(1e-4, src="MUNIT")
    beta1: float = _d(0.5, src="MUNIT")
    beta2: float = _d(0.999, src="MUNIT")
    weight_decay: float = _d(1e-4, src="MUNIT")
    lr_policy: str = _d("step", "halve the learning rate every step_size iterations (step | constant)", src="MUNIT")
    step_size: int = _d(100_000, src="MUNIT")
    gamma: float = _d(0.5, src="MUNIT")
    init: str = _d("kaiming", "generators; discriminators get Gaussian N(0, 0.02)", src="MUNIT")
    dis_fakes: str = _d("reuse", "reuse: generator update first, the discriminator learns from its translations "
                        "(detached); fresh: discriminator first, on translations made anew (NVlabs/MUNIT)",
                        src="ours: CycleGAN's order; saves the discriminator update's generator pass")
    gan_w: float = _d(1.0, "adversarial, both domains", "loss weights", src="MUNIT")
    recon_x_w: float = _d(10.0, "image reconstruction within a domain", src="MUNIT")
    recon_c_w: float = _d(1.0, "content reconstruction", src="MUNIT")
    recon_s_w: float = _d(1.0, "style reconstruction (B)", src="MUNIT")
    recon_x_cyc_w: float = _d(10.0, "cycle A->B->A and B->A->B",
                              src="lineage (MUNIT: 10 for synthia2cityscape, 0 for edges2*)")
    ms_ssim_a_w: float = _d(5.0, "1 - MS-SSIM(bright(x_A), bright(x_AB))", src="lineage")
    ms_ssim_b_w: float = _d(3.0, "1 - MS-SSIM(bright(x_B), bright(x_BA))", src="lineage")
    noise_std: float = _d(0.1, "Gaussian noise on every encoder input, [-1, 1] scale (against steganography)",
                          "method specifics", src="lineage (the noise is the paper's, its std is not)")
    style_replace_p: float = _d(0.5, "A->B style: the real image's encoded style instead of N(0, I)", src="lineage")
    input_dim_a: int = _d(3, "", "images (height x width; 256x448 keeps the 452x256 aspect of the renders)",
                          src="MUNIT")
    input_dim_b: int = _d(3, src="MUNIT")
    crop_image_height: int = _d(256, src="lineage (descendant: 256x512)")
    crop_image_width: int = _d(448, src="ours: the 452x256 renders' aspect, a multiple of 4")
    aug: AugConfig = _d(AugConfig, "training augmentation")
    gen: GenConfig = _d(GenConfig, "", "networks")
    dis: DisConfig = _d(DisConfig)
    cut: CutConfig = _d(CutConfig, "model: cut only (docs/training.md, One-sided model)")
    seed: int = _d(0, "", "bookkeeping", src="ours")
    log_iter: int = _d(10, src="MUNIT")
    image_save_iter: int = _d(1000, src="ours: MUNIT 10000; early grids are cheap")
    snapshot_save_iter: int = _d(10_000, src="MUNIT")
    keep_last: int = _d(3, "checkpoints kept: the last keep_last and every keep_every-th", src="ours: disk")
    keep_every: int = _d(50_000, src="ours: disk")
    nan_patience: int = _d(20, "stop after this many non-finite steps in a row", src="ours")
    amp: str = _d("bf16", "autocast on CUDA: bf16, fp16 or none (losses and MS-SSIM stay float32)", "speed",
                  src="ours: CUDA speed, no loss scaler needed")
    cpu_amp: str = _d("auto", "autocast on the CPU: auto (bf16 where the CPU has amx_bf16 or avx512_bf16, "
                      "else float32), bf16 or none", src="ours: measured, issue 18")
    compile: bool = _d(False, src="ours: compile time, portability")
    cuda_graphs: bool = _d(False, "replay each update's forward and backward as a CUDA graph (CUDA, one process; "
                           "amp bf16 or none)", src="ours: measured on an H100, docs/evaluation.md")
    channels_last: bool = _d(False, "NHWC memory layout for the networks and their inputs", src="ours")
    num_workers: int = _d(2, src="ours: MUNIT 8; 2-core machines")

    def validate(self) -> "TrainConfig":
        def check(ok, key, value, why):
            if not ok:
                raise ConfigError(f"{key}={value!r}: {why}")

        for f in ("max_iter", "batch_size", "step_size", "crop_image_height", "crop_image_width", "log_iter",
                  "image_save_iter", "snapshot_save_iter", "keep_last", "keep_every", "nan_patience"):
            # an upper bound too: counts beyond it only overflow later (sampler lengths, torch's int64)
            check(1 <= getattr(self, f) <= MAX_COUNT, f, getattr(self, f), f"must be between 1 and {MAX_COUNT:.0e}")
        check(0 <= self.seed < 2 ** 32, "seed", self.seed, "must be between 0 and 2**32 - 1")
        for f in ("lr", "gamma"):
            check(getattr(self, f) > 0, f, getattr(self, f), "must be > 0")
        for f in ("gan_w", "recon_x_w", "recon_c_w", "recon_s_w", "recon_x_cyc_w", "ms_ssim_a_w", "ms_ssim_b_w",
                  "noise_std", "weight_decay", "num_workers"):
            check(getattr(self, f) >= 0, f, getattr(self, f), "must be >= 0")
        for f in ("beta1", "beta2", "style_replace_p"):
            check(0 <= getattr(self, f) <= 1, f, getattr(self, f), "must be in [0, 1]")
        for key, allowed in CHOICES.items():
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            check(value in allowed, key, value, f"expected one of {', '.join(allowed)}")
        check(self.input_dim_a == 3 and self.input_dim_b == 3, "input_dim_a/b", 3, "only RGB is supported")
        check(not (self.cuda_graphs and self.amp == "fp16"), "cuda_graphs", True,
              "not with amp fp16 (its loss scaler changes between iterations); use amp bf16 or none")
        check(not (self.cuda_graphs and self.compile), "cuda_graphs", True, "not with compile: true; choose one")
        for f in ("dim", "mlp_dim", "style_dim", "content_dim", "n_downsample", "style_downsample"):
            check(getattr(self.gen, f) >= 1, f"gen.{f}", getattr(self.gen, f), "must be >= 1")
        check(self.gen.n_res >= 0, "gen.n_res", self.gen.n_res, "must be >= 0")
        for f in ("dim", "n_layer", "num_scales"):
            check(getattr(self.dis, f) >= 1, f"dis.{f}", getattr(self.dis, f), "must be >= 1")
        down = 2 ** self.gen.n_downsample
        for f in ("crop_image_height", "crop_image_width"):
            check(getattr(self, f) % down == 0, f, getattr(self, f), f"must be a multiple of {down}")
        check(min(self.crop_image_height, self.crop_image_width) >= 48, "crop_image_height/width",
              (self.crop_image_height, self.crop_image_width), "at least 48 pixels (5-scale MS-SSIM)")
        check(0 < self.aug.min_scale <= 1, "aug.min_scale", self.aug.min_scale, "must be in (0, 1]")
        for f in ("circular_mask_p", "rotation_p"):
            check(0 <= getattr(self.aug, f) <= 1, f"aug.{f}", getattr(self.aug, f), "must be in [0, 1]")
        # jitter multiplies by U(1 - x, 1 + x): beyond 1 a negative factor would invert the image
        for f in ("brightness", "contrast"):
            check(0 <= getattr(self.aug, f) <= 1, f"aug.{f}", getattr(self.aug, f), "must be in [0, 1]")
        check(0 <= self.aug.rotation <= 180, "aug.rotation", self.aug.rotation, "degrees, must be in [0, 180]")
        self._validate_cut(check)
        return self

    def _validate_cut(self, check) -> None:
        c = self.cut
        for f in ("nce_w", "nce_idt_w"):
            check(getattr(c, f) >= 0, f"cut.{f}", getattr(c, f), "must be >= 0")
        for f in ("nce_patches", "nce_mlp_dim"):
            check(getattr(c, f) >= 1, f"cut.{f}", getattr(c, f), "must be >= 1")
        check(c.nce_t > 0, "cut.nce_t", c.nce_t, "must be > 0")
        # taps: the input, the first conv, each downsampling conv, each residual block, the content code
        last = 1 + self.gen.n_downsample + self.gen.n_res + 1
        try:
            ids = c.layer_ids()
        except ValueError:
            ids = None
        check(ids is not None and len(ids) >= 1 and len(set(ids)) == len(ids) and all(0 <= i <= last for i in ids),
              "cut.nce_layers", c.nce_layers, f"expected distinct comma-separated integers 0 to {last}, e.g. 0,1,2,3,4")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _apply(obj, data: dict, prefix: str = "") -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {name!r} (known: {', '.join(sorted(known))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a section (mapping), got {value!r}")
            _apply(current, value, prefix=f"{name}.")
            continue
        setattr(obj, key, _coerce(name, current, value))


def _coerce(name: str, current, value):
    typ = type(current)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name}={value!r}: expected true or false")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected an integer")
        try:
            number = float(value) if isinstance(value, str) and "e" in value.lower() else value  # 1e5: YAML's text
            if isinstance(number, float) and not number.is_integer():  # 1.5e0, inf, nan: not silently cut
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected an integer") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected a number") from None
        if not math.isfinite(number):  # .inf, .nan, 1e999: no weight, rate or probability means that
            raise ConfigError(f"{name}={value!r}: expected a finite number")
        return number
    if typ is str:
        # YAML reads `cut.nce_layers=3` as an int and `[0, 1]` as a list; both mean the comma-separated text
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return ",".join(map(str, value))
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return value
    raise ConfigError(f"{name}: unsupported type {typ.__name__}")


def parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. gen.style_dim=4")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML") from None
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = parsed
    return out


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v
    return a


def config_from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data or {})
    return cfg.validate()


# Keys added after checkpoints were first written, with the value such a checkpoint had in effect when
# that differs from today's default (keys missing here had, in effect, their default).
LATER_KEYS: dict[str, object] = {"gen.content_activ": "relu"}


def saved_config(data: dict) -> TrainConfig:
    """The config a checkpoint was trained with: its keys, keys added since at the value they had then."""
    data = _copy_nested(data or {})
    for key, old in LATER_KEYS.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.setdefault(leaf, old)
    return config_from_dict(data)


def _copy_nested(data: dict) -> dict:
    return {k: _copy_nested(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
    for o in overrides:
        _merge(data, parse_override(o))
    return config_from_dict(data)


def _yaml_value(v) -> str:
    text = yaml.safe_dump(v, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("...") else text


def _yaml_lines(obj, indent: str = "") -> list[str]:
    lines = []
    for f in fields(obj):
        if f.metadata.get("section") and not indent:
            lines += ["", f"# {f.metadata['section']}"]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            head = f"{indent}{f.name}:"
            lines.append(f"{head:<26}# {f.metadata['doc']}" if f.metadata.get("doc") else head)
            lines += _yaml_lines(value, indent + "  ")
            continue
        entry = f"{indent}{f.name}: {_yaml_value(value)}"
        comment = " ".join(filter(None, (f.metadata.get("doc"), f"[{f.metadata['src']}]" if f.metadata.get("src") else "")))
        lines.append(f"{entry:<26}# {comment}" if comment else entry)
    return lines


def default_yaml() -> str:
    """configs/default.yaml: every key with its default and comment, generated from TrainConfig."""
    head = ["# Translator defaults, MUNIT's key names where one exists. [brackets]: where a default comes from:",
            *[f"#   {k}: {v}" for k, v in SOURCES.items()],
            "# (docs/training.md, 'Where the defaults come from').",
            "# Generated from backend/translator/config.py (python -m backend.translator.config > configs/default.yaml);",
            "# edit the defaults there. Override any key: python -m backend.train ... --set gen.style_dim=4"]
    return "\n".join(head + _yaml_lines(TrainConfig())) + "\n"


if __name__ == "__main__":
    print(default_yaml(), end="")
