"""Translate a data set's renders with K styles each and write them beside the labels.

For every frame: its content is encoded once and decoded with K styles in one batch, each style
drawn from N(0, I) or encoded from a real frame picked from `style_from`. The whole frame is
translated at label resolution (never cropped or resized), so labels stay pixel-aligned. The
layout (`<patient>/translation/<frame>_<k>.png`, `<frame>.json`, `translation_index/`,
`translation.json`) is the data-set contract's (blender_addon/core/dataset.py); files are
written atomically, the JSON last, then the frame enters the translation index through the same
`IndexWriter` as renders.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blender_addon.core import png
from blender_addon.core.classes import LABEL_IDS, OUTSIDE_FOV
from blender_addon.core.dataset import (
    TRANSLATION_FOLDER,
    TRANSLATION_FORMAT,
    DatasetError,
    IndexWriter,
    check_set_name,
    finished_translations,
    parse_shard,
    prepare_translations,
    read_index,
    read_manifest,
    read_translation_manifest,
    set_index_dir,
    set_manifest,
    set_sheet,
    translation_paths,
)
from blender_addon.core.errors import InputError
from blender_addon.core.files import atomic_write_bytes, check_output_dir, check_output_file, sweep_temporaries
from blender_addon.core.progress import Reporter
from blender_addon.core.seeds import translation_seed
from blender_addon.core.settings import files_digest, lines_digest

from ..common.devices import resolve_device
from ..common.images import (
    DataError,
    check_images,
    image_to_tensor,
    load_rgb,
    read_mask,
    read_render,
    real_images,
    tensor_to_image,
)
from . import checkpoint as ckpt
from .config import ConfigError, saved_config
from .cut import CutGenerator
from .networks import GeneratorA, GeneratorB
from .precision import CPU_AMPS, cpu_autocast
from .sheet import contact_sheet
from .transfer import band_spectrum, fda_from_band, real_style

NOISE_K = 10_000  # the "k" of a frame's encoder-noise seed, apart from its K style seeds
TRANSLATE_AMPS = CPU_AMPS  # auto, bf16, none
INDEX_LIMIT = 2 ** 31 - 1  # elements one CUDA kernel may index (padding, among others, uses 32-bit index maths)


class TranslateError(InputError):
    pass


# ----------------------------------------------------------------------------- model

def load_translator(path: Path, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict]:
    """The generators of a training checkpoint, checked against the config stored in it: MUNIT's gen_a and
    gen_b, or for a `model: cut` checkpoint its one generator and None (info["model"] says which)."""
    if path.is_dir():  # a run folder or its checkpoints/: name the file meant
        newest = ckpt.latest(path) or ckpt.latest(path / "checkpoints")
        hint = f", e.g. its newest, {newest}" if newest else " (it holds none)"
        raise TranslateError(f"--checkpoint {path}: a folder; pass a checkpoint file{hint}")
    if not path.is_file():
        raise TranslateError(f"--checkpoint {path}: file not found")
    try:
        state = ckpt.load(path, map_location="cpu")
    except Exception as e:  # not a torch file, truncated, or pickled objects
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TranslateError(f"--checkpoint {path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise TranslateError(f"--checkpoint {path}: not a backend.train checkpoint (no config)")
    try:
        cfg = saved_config(state["config"])  # keys added since (model, ...) at the value they had then
    except ConfigError as e:
        raise TranslateError(f"--checkpoint {path}: its config is invalid here ({e})") from None
    if cfg.model == "cut":
        nets = {"gen": CutGenerator(cfg.gen, cfg.noise_std)}
    else:
        nets = {"gen_a": GeneratorA(cfg.gen, cfg.noise_std), "gen_b": GeneratorB(cfg.gen, cfg.noise_std)}
    if not set(nets) <= set(state):
        raise TranslateError(f"--checkpoint {path}: not a backend.train checkpoint of model {cfg.model} "
                             f"(needs config, {', '.join(nets)})")
    for name, net in nets.items():
        try:
            net.load_state_dict(state[name])
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise TranslateError(f"--checkpoint {path}: {name} does not match the configuration stored with it "
                                 f"({first[1].strip() if len(first) > 1 else first[0]})") from None
        net.to(device).eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    info = {"path": str(path.resolve()), "sha256_16": digest, "iteration": int(state["iteration"]),
            "style_dim": cfg.gen.style_dim, "noise_std": cfg.noise_std, "multiple": 2 ** cfg.gen.n_downsample,
            "dim": cfg.gen.dim, "model": cfg.model}
    if cfg.model == "cut":
        return nets["gen"], None, info
    return nets["gen_a"], nets["gen_b"], info


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, (h, w)


def _noise_like(x: torch.Tensor, seed: int, std: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(x.shape, generator=g) * std).to(x.device, x.dtype)


class Translator:
    """Translate frames with K styles each, deterministically per (seed, patient, frame, k).

    MUNIT (info["model"] munit, the default): a frame's content is encoded once, from its own encoder
    noise, and decoded with K style codes. cut (one generator, no style code): output k is the frame
    encoded with encoder noise drawn from seed k and decoded; the K outputs differ only through that
    noise (gen_b is None), which changes them little. With real frames (`style_images`), cut's output k
    also takes the low-frequency amplitude spectrum of a real frame drawn from seed k (FDA with `beta`,
    as the fda baseline does to renders): its colour and brightness come from a real exemplar, its
    texture and edges from the network (`exemplar_styles`)."""

    def __init__(self, gen_a, gen_b, info: dict, device: torch.device, styles: int, seed: int, noise: bool,
                 style_images: list[Path] | None = None, amp: str = "auto", cpu_flags=None, beta: float = 0.01):
        """amp: auto (bf16 on CUDA, and on a CPU with amx_bf16 or avx512_bf16; float32 elsewhere), bf16 or
        none (float32), as the config's cpu_amp (precision.py); `cpu_flags` stands in for this machine's."""
        self.gen_a, self.gen_b, self.info, self.device = gen_a, gen_b, info, device
        self.k, self.seed, self.noise, self.beta = styles, seed, noise, beta
        self.style_images = style_images or []
        self.cut = info.get("model", "munit") == "cut"
        if self.cut and not noise and styles > 1 and not self.style_images:
            raise TranslateError(f"--noise off with a cut checkpoint makes the {styles} outputs of a frame identical "
                                 "(they differ by the encoder noise only): use --noise on, --style-from or --styles 1")
        if amp not in TRANSLATE_AMPS:
            raise TranslateError(f"--amp {amp}: expected one of {', '.join(TRANSLATE_AMPS)}")
        if device.type == "cuda":
            self.amp, self.precision = amp != "none", f"{'float32' if amp == 'none' else 'bf16'} (--amp {amp})"
        elif device.type == "cpu":
            dtype, why = cpu_autocast(amp, cpu_flags)
            self.amp, self.precision = dtype is not None, why.replace("cpu_amp:", "--amp")
        else:
            self.amp, self.precision = False, f"float32 (no autocast on {device.type})"

    @property
    def precision_name(self) -> str:
        """What the outputs were computed in, for the manifest (outputs differ between the two)."""
        return "bf16" if self.amp else "float32"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def styles_for(self, patient: str, frame: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[dict]]:
        vecs, records = [], []
        for k in range(self.k):
            s = translation_seed(self.seed, patient, frame, k)
            rng = np.random.default_rng(s)
            rec = {"k": k, "seed": s}
            if self.style_images:
                src = self.style_images[int(rng.integers(len(self.style_images)))]
                img = load_rgb(src).resize((size[1], size[0]))
                x = image_to_tensor(np.asarray(img))[None].to(self.device)
                if self.noise:
                    x = x + _noise_like(x, s + 1, self.info["noise_std"])
                with torch.no_grad(), self.autocast():
                    v = self.gen_b(x, mode="style", noise=False)[0].float()
                rec["source"] = str(src)
            else:  # drawn on the host: no device round trip per style
                v = torch.from_numpy(rng.standard_normal(self.info["style_dim"]).astype(np.float32))
            rec["style"] = [float(f) for f in v.cpu()]
            vecs.append(v.to(self.device))
            records.append(rec)
        return torch.stack(vecs), records

    def frame_noise(self, images: torch.Tensor, keys: list[tuple[str, int]]) -> torch.Tensor | None:
        """The encoder noise of each frame, on the host, from its own seed (independent of batching); cut:
        (B * K, ...) frame-major, output k's from seed k."""
        if not self.noise:
            return None
        if self.cut:
            return torch.cat([_noise_like(images[i:i + 1].cpu(), translation_seed(self.seed, p, f, k),
                                          self.info["noise_std"]) for i, (p, f) in enumerate(keys)
                              for k in range(self.k)])
        return torch.cat([_noise_like(images[i:i + 1].cpu(), translation_seed(self.seed, p, f, NOISE_K),
                                      self.info["noise_std"]) for i, (p, f) in enumerate(keys)])

    @torch.no_grad()
    def translate(self, images: torch.Tensor, keys: list[tuple[str, int]],
                  noise: torch.Tensor | None = None) -> tuple[torch.Tensor, list[list[dict]]]:
        """images (B, 3, H, W) in [-1, 1] -> (B, K, 3, H, W) and the per-output records. `noise`: this
        batch's frame_noise, when a loader thread made it ahead of time."""
        b = images.shape[0]
        if self.noise and noise is None:
            noise = self.frame_noise(images, keys)
        if self.cut:
            return self._translate_cut(images, keys, noise)
        non_blocking = images.is_pinned()
        x = images.to(self.device, non_blocking=non_blocking)
        if noise is not None:
            x = x + noise.to(self.device, non_blocking=non_blocking)
        x, (h, w) = _pad_to(x, self.info["multiple"])
        styles, records = zip(*[self.styles_for(p, f, (h, w)) for p, f in keys])
        style = torch.cat(styles)  # (B*K, style_dim)
        n = self._batch_limit(x)
        with self.autocast():
            content = torch.cat([self.gen_a(x[i:i + n], mode="encode", noise=False)  # once per frame
                                 for i in range(0, b, n)])
            content = content.repeat_interleave(self.k, dim=0)
            style = style.to(content.dtype)
            out = torch.cat([self.gen_b(content=content[i:i + n], style=style[i:i + n], mode="decode")
                             for i in range(0, content.shape[0], n)])
        out = out[..., :h, :w].float()
        return out.view(b, self.k, 3, h, w), list(records)

    @property
    def exemplar_styled(self) -> bool:
        """Whether outputs take real frames' spectra on the host (cut with --style-from)."""
        return bool(self.cut and self.style_images)

    def exemplar_styles(self, arrays: np.ndarray, records: list[list[dict]]) -> None:
        """cut with real frames, in place on uint8 outputs (B, K, H, W, 3): output k takes the low-band
        amplitude of the real frame that seed k draws (the fda baseline's draw); records gain its path."""
        if not self.exemplar_styled:
            return
        h, w = arrays.shape[2:4]
        for outs, recs in zip(arrays, records):
            for k, rec in enumerate(recs):
                src = self.style_images[int(np.random.default_rng(rec["seed"]).integers(len(self.style_images)))]
                out = outs[k]
                outs[k] = fda_from_band(out, band_spectrum(out, self.beta),
                                         real_style("fda", Path(src), w, h, self.beta), self.beta)
                rec["source"] = str(src)

    def _batch_limit(self, x: torch.Tensor) -> int:
        """At most this many images per network call: the widest full-resolution activation (2*dim channels
        before the last upsampling conv, twice that for margin) must stay within 32-bit indexing."""
        return max(1, INDEX_LIMIT // (4 * self.info.get("dim", 64) * (x.shape[-2] + 8) * (x.shape[-1] + 8)))

    def _translate_cut(self, images: torch.Tensor, keys: list[tuple[str, int]],
                       noise: torch.Tensor | None) -> tuple[torch.Tensor, list[list[dict]]]:
        b = images.shape[0]
        non_blocking = images.is_pinned()
        x = images.to(self.device, non_blocking=non_blocking).repeat_interleave(self.k, dim=0)  # (B*K, ...)
        if noise is not None:
            x = x + noise.to(self.device, non_blocking=non_blocking)
        x, (h, w) = _pad_to(x, self.info["multiple"])
        n = self._batch_limit(x)
        with self.autocast():
            out = torch.cat([self.gen_a(content=self.gen_a(x[i:i + n], mode="encode", noise=False), mode="decode")
                             for i in range(0, x.shape[0], n)])
        out = out[..., :h, :w].float()
        records = [[{"k": k, "seed": translation_seed(self.seed, p, f, k)} for k in range(self.k)] for p, f in keys]
        return out.view(b, self.k, 3, h, w), records


# ----------------------------------------------------------------------------- data set side

LEARNED = ("munit", "cut")  # backend.train's models (config key `model`), read from --checkpoint
BASELINE_METHODS = ("fda", "colour")  # training-free (baselines.py)
METHODS = LEARNED + BASELINE_METHODS


# The circular field of view is content, not style: a translator fills the black outside it with
# tissue (seen at 800 iterations on cpu.yaml), which no real frame shows and no label says.
OUTSIDE_FOV_CHOICES = ("black", "translated")


def outside_fov_masks(root: Path, batch: list[dict]) -> np.ndarray:
    """(B, H, W) True where a frame's class image marks the pixel outside the field of view."""
    return np.stack([read_mask(root / e["segmentation"]) == OUTSIDE_FOV[0] for e in batch])


def black_outside(out: torch.Tensor, outside: torch.Tensor) -> None:
    """In place: translations (B, K, 3, H, W) in [-1, 1] become black (-1, i.e. 0 as uint8) where the masks
    (B, H, W) are True. On the device, before the host copy: on the host, numpy's boolean assignment
    on a 32-frame batch of 5 styles took 166 ms, serial with the GPU's work."""
    out.masked_fill_(outside.to(out.device, non_blocking=outside.is_pinned())[:, None, None], -1.0)


# Render classes whose pixels every output keeps from the render (`--keep-render`). Instruments are steel
# and black plastic in renders and in real video alike, and they are what a translator (or a global
# colour / spectrum transfer) harms first: FDA and colour transfer give shafts tissue colours, MUNIT washes
# thin ones into tissue tones (docs/evaluation.md). Their pixels are exact from the class image.
# tools+gallbladder also keeps the rendered gallbladder: to tell what a translator's gallbladder costs a
# segmenter from what its surroundings do (docs/evaluation.md, issue 18).
_TOOLS = (LABEL_IDS["tool_shaft"], LABEL_IDS["tool_tip"])
KEEP_RENDER = {"none": (), "tools": _TOOLS, "tools+gallbladder": (*_TOOLS, LABEL_IDS["gallbladder"])}
# How kept pixels look (`--keep-render-look`). render: the render's pixels as they are. styled (cut with
# --style-from): pasted into the network's output before it takes the real exemplar's low band, so they get
# the output's colour cast and brightness like every other pixel; otherwise a kept class is the one region
# with the renderer's colours, a look a segmenter can key on that real frames lack (docs/evaluation.md).
KEEP_RENDER_LOOKS = ("render", "styled")


def keep_render_masks(root: Path, batch: list[dict], keep: str) -> np.ndarray:
    """(B, H, W) True where a frame's class image shows a class that `--keep-render keep` keeps."""
    return np.stack([np.isin(read_mask(root / e["segmentation"]), KEEP_RENDER[keep]) for e in batch])


def keep_render_pixels(outputs: np.ndarray, renders: np.ndarray, masks: np.ndarray) -> None:
    """In place: outputs (B, K, H, W, 3) take the renders' (B, H, W, 3) pixels where masks (B, H, W)."""
    for out, render, mask in zip(outputs, renders, masks):
        out[:, mask] = render[mask]


def dataset_has_fov_mask(root: Path) -> bool:
    return read_manifest(root).get("settings", {}).get("fov_mask", "none") != "none"


@dataclass
class TranslateOptions:
    checkpoint: Path | None
    data: Path
    method: str | None = None  # None: the learned translator of --checkpoint, whichever model it is
    name: str | None = None  # the translation set; default: "translation" for a learned one, else the method's name
    beta: float = 0.01  # FDA: half-width of the swapped low-frequency band, as a fraction of min(H, W)
    styles: int = 5
    style_from: str | None = None
    seed: int = 0
    shard: str = "0/1"
    noise: bool = True
    batch_frames: int = 8
    workers: int = 4
    png_level: int = 1
    device: str = "auto"
    sheet: int = 6
    overwrite: bool = False
    amp: str = "auto"
    outside_fov: str = "black"  # every method: pixels outside the renders' circular field stay black
    keep_render: str = "none"  # every method: pixels of these render classes keep the render's colours
    keep_render_look: str = "render"  # render: as rendered; styled: before cut's exemplar low band

    def validate(self) -> tuple[int, int]:
        for name, low in (("styles", 1), ("batch_frames", 1), ("workers", 1)):
            if getattr(self, name) < low:
                raise TranslateError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= {low}")
        if self.outside_fov not in OUTSIDE_FOV_CHOICES:
            raise TranslateError(f"--outside-fov {self.outside_fov}: expected one of {', '.join(OUTSIDE_FOV_CHOICES)}")
        if self.keep_render not in KEEP_RENDER:
            raise TranslateError(f"--keep-render {self.keep_render}: expected one of {', '.join(KEEP_RENDER)}")
        if self.keep_render_look not in KEEP_RENDER_LOOKS:
            raise TranslateError(f"--keep-render-look {self.keep_render_look}: expected one of "
                                 f"{', '.join(KEEP_RENDER_LOOKS)}")
        if self.keep_render_look == "styled" and (self.keep_render == "none" or not self.style_from
                                                  or self.method in BASELINE_METHODS):
            raise TranslateError("--keep-render-look styled: only with --keep-render tools|tools+gallbladder, a cut "
                                 "checkpoint and --style-from (kept pixels take the real exemplar's low band)")
        if self.seed < 0:  # numpy's SeedSequence takes no negative entropy
            raise TranslateError(f"--seed {self.seed}: must be >= 0")
        if self.styles > NOISE_K:  # seed k = NOISE_K is each frame's encoder noise
            raise TranslateError(f"--styles {self.styles}: at most {NOISE_K}")
        if not 0 <= self.png_level <= 9:
            raise TranslateError(f"--png-level {self.png_level}: must be 0 to 9")
        if self.method is not None and self.method not in METHODS:
            raise TranslateError(f"--method {self.method}: one of {', '.join(METHODS)}")
        learned = self.method is None or self.method in LEARNED
        if learned and self.checkpoint is None:
            raise TranslateError(f"{'--method ' + self.method if self.method else 'the learned translator'} needs "
                                 f"--checkpoint (a backend.train checkpoint); or --method {'|'.join(BASELINE_METHODS)} "
                                 "with --style-from")
        if not learned and not self.style_from:
            raise TranslateError(f"--method {self.method} needs --style-from (the real frames it draws from)")
        if not 0 < self.beta <= 0.5:
            raise TranslateError(f"--beta {self.beta}: must be in (0, 0.5]")
        if self.name is None:
            self.name = TRANSLATION_FOLDER if learned else self.method
        try:
            check_set_name(self.name)
        except DatasetError as e:
            raise TranslateError(f"--name: {e}") from None
        if self.amp not in TRANSLATE_AMPS:
            raise TranslateError(f"--amp {self.amp}: expected one of {', '.join(TRANSLATE_AMPS)}")
        return parse_shard(self.shard)


class FrameWriter:
    """Encodes a batch's PNGs in worker threads and finishes frames in order: PNGs, then the frame's
    JSON, then its index line (at most a few batches in flight)."""

    def __init__(self, root: Path, index: IndexWriter, manifest: dict, opts: TranslateOptions,
                 pool: ThreadPoolExecutor):
        self.root, self.index, self.manifest, self.opts, self.pool = root, index, manifest, opts, pool
        self.pending: list[tuple[dict, list[Path], Path, list[dict], list[Future]]] = []
        self.stats = {"png_s": 0.0, "images": 0}

    def _encode_and_write(self, path: Path, arr: np.ndarray) -> float:
        t = time.perf_counter()
        atomic_write_bytes(path, png.encode(arr, level=self.opts.png_level, filter="up"))
        return time.perf_counter() - t

    def submit(self, entry: dict, arrays: list[np.ndarray], records: list[dict]) -> None:
        pngs, meta = translation_paths(entry["patient"], int(entry["frame"]), self.opts.styles, self.opts.name)
        pngs, meta = [self.root / p for p in pngs], self.root / meta
        pngs[0].parent.mkdir(parents=True, exist_ok=True)
        futures = [self.pool.submit(self._encode_and_write, p, a) for p, a in zip(pngs, arrays)]
        self.pending.append((entry, pngs, meta, records, futures))
        while self.pending and (len(self.pending) > 2 * self.opts.batch_frames
                                or all(f.done() for f in self.pending[0][4])):
            self._finish(self.pending.pop(0))

    def in_flight_images(self) -> int:
        return len(self.pending) * self.opts.styles

    def drain(self) -> None:
        while self.pending:
            self._finish(self.pending.pop(0))

    def _finish(self, item) -> None:
        e, pngs, meta, recs, futures = item
        self.stats["png_s"] += sum(f.result() for f in futures)
        self.stats["images"] += len(pngs)
        rel = [str(p.relative_to(self.root)) for p in pngs]
        record = {"patient": e["patient"], "frame": int(e["frame"]), "render": e["image"],
                  "translation": self.manifest, "outputs": [{**r, "image": p} for r, p in zip(recs, rel)]}
        atomic_write_bytes(meta, (json.dumps(record, indent=1) + "\n").encode())
        self.index.append({"patient": e["patient"], "frame": int(e["frame"]),
                           "meta": str(meta.relative_to(self.root)), "translations": rel})


def check_translation_outputs(root: Path, entries: list[dict], name: str = TRANSLATION_FOLDER) -> None:
    """Every place a set's translations go must be a folder (or a file for the manifest) or not exist yet."""
    folders = [set_index_dir(name)] + sorted({f"{e['patient']}/{name}" for e in entries})
    for rel in folders:
        check_output_dir(root / rel, f"--data {root}:")
    for rel in (set_manifest(name), set_sheet(name)):
        check_output_file(root / rel, f"--data {root}:")


def frames_to_translate(opts: TranslateOptions) -> tuple[list[dict], tuple[int, int]]:
    """The data set's finished frames and the shard, with the options and every place the set's outputs
    go checked."""
    try:
        entries = read_index(opts.data)
    except DatasetError as e:
        raise TranslateError(f"--data: {e}") from None
    if not entries:
        raise TranslateError(f"--data {opts.data}: the index lists no finished frames")
    shard = opts.validate()
    check_translation_outputs(opts.data, entries, opts.name)
    return entries, shard


def style_frames(style_from: str) -> list[Path]:
    """The real frames of --style-from that decode (others are skipped)."""
    try:
        paths = real_images([style_from], "--style-from")
    except DataError as e:
        raise TranslateError(str(e)) from None
    try:
        return check_images(paths, 8, 8, None, "style")
    except DataError as e:
        raise TranslateError(f"--style-from {style_from}: {e}") from None


def key(entry: dict) -> tuple[str, int]:
    return entry["patient"], entry["frame"]


def plan(entries: list[dict], batch_frames: int, part: tuple[int, int]) -> list[list[dict]]:
    """Batches are fixed blocks of a patient's frame numbers (frames f with the same f // batch_frames):
    numerics depend on the batch, so a frame is computed in the same company whichever other frames the
    index listed when a run started (renders still coming in, a data set extended later). Blocks go to
    shards and torchrun processes by their number, offset per patient by a hash of its name: disjoint,
    deterministic, independent of the rest of the index, no padding; the union is exactly the full run.
    A block translated before all its frames were rendered is finished later with the frames it lacked."""
    blocks: dict[tuple[str, int], list[dict]] = {}
    for e in entries:
        blocks.setdefault((e["patient"], int(e["frame"]) // batch_frames), []).append(e)
    return [sorted(g, key=lambda e: int(e["frame"])) for (patient, block), g in sorted(blocks.items())
            if (block + zlib.crc32(patient.encode())) % part[1] == part[0]]


def process_part(shard: tuple[int, int], rank: int, world: int) -> tuple[int, int]:
    """What process `rank` of `world` (torchrun) takes of shard k/n in plan(): blocks numbered k + n*rank
    modulo n*world. Its processes together take exactly shard k/n's blocks (k modulo n) whatever their
    number, so shards run with different process counts still add up to the whole set, each block once."""
    k, n = shard
    return k + n * rank, n * world


class RefusedByLead(TranslateError):
    """Raised on the other torchrun processes when the lead process refused the set (it says why)."""


def run(opts: TranslateOptions, rank: int = 0, world: int = 1, share: Callable[[object], object] = lambda v: v,
        say: Callable[[str], None] = print) -> dict:
    """Translate this process's part of the data set; resumable (finished frames are skipped). Under
    torchrun `share(value)` returns rank 0's value on every rank (a broadcast, hence also a barrier)."""
    root = opts.data
    device = resolve_device(opts.device)
    entries, shard = frames_to_translate(opts)
    gen_a, gen_b, info = load_translator(opts.checkpoint, device)
    if opts.method is not None and opts.method != info["model"]:  # one model's checkpoint given as the other's
        raise TranslateError(f"--method {opts.method}: {opts.checkpoint} is a {info['model']} checkpoint (model: "
                             f"{info['model']} in its config); pass --method {info['model']} or leave --method out")
    style_images = style_frames(opts.style_from) if opts.style_from else None
    translator = Translator(gen_a, gen_b, info, device, opts.styles, opts.seed, opts.noise, style_images, opts.amp,
                            beta=opts.beta)
    styled_keep = opts.keep_render_look == "styled"
    if styled_keep and not translator.exemplar_styled:  # munit: no low band to take, it would equal `render`
        raise TranslateError(f"--keep-render-look styled: {opts.checkpoint} is a {info['model']} checkpoint; only "
                             "cut's exemplar styles (--style-from) style kept pixels; use --keep-render-look render")
    # the precision is part of the settings: bf16 and float32 outputs differ, one data set holds one kind
    manifest = {"format": TRANSLATION_FORMAT, "precision": translator.precision_name, "checkpoint_sha256_16": info["sha256_16"],
                "checkpoint_iteration": info["iteration"], "styles": opts.styles, "seed": opts.seed,
                "noise": opts.noise, "batch_frames": opts.batch_frames,
                "style_from": str(Path(opts.style_from).resolve()) if opts.style_from else None}
    try:
        old = read_translation_manifest(root, opts.name)
    except DatasetError:
        old = None  # unreadable: prepare_translations refuses it
    # The device kind too: the same precision computes other bits on a GPU than on the CPU (other kernels,
    # other autocast op lists, TF32 convolutions), so a set is finished where it was started. Sets made
    # before this was recorded keep resuming.
    if old is None or "device" in old:
        manifest["device"] = device.type
    if style_images is not None:  # which real frames styles are drawn from: a folder that gained frames
        # would give resumed frames other exemplars. Sets made before this was recorded keep resuming.
        # and their bytes: frames replaced under the same names would style resumed outputs otherwise
        pinned = {"count": len(style_images), "sha256_16": lines_digest(str(p.resolve()) for p in style_images),
                  "content_sha256_16": files_digest(style_images, TranslateError)}
        if old is None or "style_frames" in old:
            if old is not None and "content_sha256_16" not in (old["style_frames"] or {}):
                del pinned["content_sha256_16"]  # pinned before contents were: compared as it was recorded
            manifest["style_frames"] = pinned
    if info["model"] != "munit":  # only then: sets made before `model` existed keep resuming
        manifest["model"] = info["model"]
        if opts.style_from:  # cut's exemplar styles: FDA of real frames, with this band
            manifest["beta"] = opts.beta
    blacken = opts.outside_fov == "black" and dataset_has_fov_mask(root)
    if blacken:  # only where it changes outputs: sets of renders without a field keep resuming
        manifest["outside_fov"] = "black"
    if opts.keep_render != "none":  # only where it changes outputs: older sets keep resuming
        manifest["keep_render"] = opts.keep_render
    if styled_keep:  # only where it changes outputs
        manifest["keep_render_look"] = "styled"
    refusal = None
    if rank == 0:
        try:
            prepare_translations(root, manifest, opts.overwrite, opts.name)
        except InputError as e:  # other settings on disk: every process stops, only this one says why
            refusal = e
    if share(None if refusal is None else str(refusal)) is not None:  # the manifest exists before anyone writes
        raise refusal if rank == 0 else RefusedByLead("refused by rank 0")
    if rank == 0:  # files of writers killed with -9 (an hour old: no live shard's)
        sweep_temporaries((root / p / opts.name for p in sorted({e["patient"] for e in entries})), say=say)
    part = process_part(shard, rank, world)
    mine = plan(entries, opts.batch_frames, part)
    done = finished_translations(root, opts.styles, opts.name)  # decided by the translation index
    todo = [g for g in mine if not all(key(e) in done for e in g)]
    n_frames = sum(len(g) for g in mine)
    n_todo = sum(1 for g in todo for e in g if key(e) not in done)
    say(f"{n_frames} frames in this part, {n_frames - n_todo} done, {n_todo} to translate "
        f"x {opts.styles} styles on {device}, {translator.precision}")
    report = Reporter("translate", n_todo * opts.styles, "images", say)
    t_start = time.perf_counter()
    pin = device.type == "cuda"

    def load(batch: list[dict]):
        """Decode a batch's renders and draw its noise; runs in a reader thread while the previous batch
        is on the device (PNG decoding releases the GIL)."""
        keys = [(e["patient"], int(e["frame"])) for e in batch]
        renders = [read_render(root / e["image"]) for e in batch]
        images = torch.stack([image_to_tensor(r) for r in renders])
        noise = translator.frame_noise(images, keys)
        if pin:
            images, noise = images.pin_memory(), None if noise is None else noise.pin_memory()
        kept = None
        if opts.keep_render != "none":
            kept = (np.stack(renders), keep_render_masks(root, batch, opts.keep_render))
        outside = torch.from_numpy(outside_fov_masks(root, batch)) if blacken else None
        if pin and outside is not None:
            outside = outside.pin_memory()
        return images, noise, outside, kept

    with ThreadPoolExecutor(opts.workers) as pool, ThreadPoolExecutor(1) as reader, \
            IndexWriter(root, part, folder=set_index_dir(opts.name)) as index:
        writer = FrameWriter(root, index, manifest, opts, pool)
        ahead = reader.submit(load, todo[0]) if todo else None
        for bi, batch in enumerate(todo):
            images, noise, outside, kept = ahead.result()
            if bi + 1 < len(todo):
                ahead = reader.submit(load, todo[bi + 1])
            out, records = translator.translate(images, [(e["patient"], int(e["frame"])) for e in batch], noise)
            if outside is not None and not translator.exemplar_styled:
                black_outside(out, outside)
            arrays = tensor_to_image(out)  # (B, K, H, W, 3) uint8, one copy to the host
            if kept is not None and styled_keep:
                keep_render_pixels(arrays, *kept)
            translator.exemplar_styles(arrays, records)
            if outside is not None and translator.exemplar_styled:  # after the spectra, which see the whole frame
                arrays[np.broadcast_to(outside.numpy()[:, None], arrays.shape[:-1])] = 0
            if kept is not None and not styled_keep:
                keep_render_pixels(arrays, *kept)
            for i, (e, recs) in enumerate(zip(batch, records)):
                if key(e) in done:
                    continue  # done before an interruption; computed only to keep the batch identical
                writer.submit(e, list(arrays[i]), recs)
            report.update(writer.stats["images"] + writer.in_flight_images())
        writer.drain()
    report.update(writer.stats["images"], force=True)
    elapsed = time.perf_counter() - t_start
    if rank == 0 and opts.sheet > 0:
        contact_sheet(root, opts.styles, opts.sheet, name=opts.name)
    images = writer.stats["images"]
    say(f"done: {images} images in {elapsed:.1f} s ({images / max(elapsed, 1e-9):.1f} images/s; "
        f"PNG encoding {writer.stats['png_s']:.1f} s of worker time)")
    return {"images": images, "seconds": elapsed, **writer.stats}


def world_from_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
