"""Segmentation proof: TernausNet-11 trained on synthetic and/or real frames, the paper's Table 1 protocol.

    python -m backend.segment protocol --synthetic data/A --real-images IMG --real-masks MASKS \\
        --preset endoscapes --out reports/seg [--regimes synthetic,real,synthetic+real] \\
        [--imagenet PATH] [--iterations N] [--size 256x448]
    python -m backend.segment train --regime synthetic --synthetic data/A --out seg.pt
    python -m backend.segment eval --checkpoint seg.pt --real-images IMG --real-masks MASKS --out reports/seg

TernausNet-11 is a U-Net whose encoder is torchvision's VGG11. ImageNet weights are used only when
found locally (--imagenet PATH, or torchvision's cache); nothing is downloaded. Real masks are
mapped to our classes through a preset (or a JSON mapping) with an ignore value that loss and
metric respect; the patient of a frame comes from its file name (--patient-pattern). Regimes:
synthetic (translated renders and their labels), real (leave-one-patient-out over the real
patients), synthetic+real (synthetic pre-training, then fine-tuning on the other real patients);
each with or without ImageNet weights. Reported: per patient the median Dice over its frames,
per class that the real labels contain, as a Markdown/JSON table shaped like the paper's Table 1,
with bar charts and predictions overlaid on real frames.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from blender_addon.dataset import CLASSES

from .devices import DeviceError, resolve_device

IGNORE = 255
EVAL_CLASSES = ("liver", "gallbladder", "abdominal_wall", "fat", "ligament", "tool")
# Our label ids -> evaluation classes (tool = shaft or tip; real data sets label whole instruments).
OURS_TO_EVAL = {1: "liver", 2: "gallbladder", 3: "abdominal_wall", 4: "fat", 5: "ligament", 6: "tool", 7: "tool"}
EVAL_TO_TRAIN_ID = {"liver": 1, "gallbladder": 2, "abdominal_wall": 3, "fat": 4, "ligament": 5, "tool": 6}


class SegmentError(ValueError):
    pass


# ----------------------------------------------------------------------------- labels

@dataclass
class LabelPreset:
    """How a real data set's mask values map to evaluation classes; other values are background."""

    name: str
    values: dict[int, str]  # mask value -> evaluation class
    ignore: tuple[int, ...]
    pattern: str  # file name -> patient (group 'patient')

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.values.values()), key=EVAL_CLASSES.index)

    def to_train_ids(self, mask: np.ndarray) -> np.ndarray:
        out = np.zeros(mask.shape, np.int64)
        for v, cls in self.values.items():
            out[mask == v] = EVAL_TO_TRAIN_ID[cls]
        out[np.isin(mask, self.ignore)] = IGNORE
        return out


PRESETS = {
    # CholecSeg8k watershed masks (grey values).
    "cholecseg8k": LabelPreset("cholecseg8k", {21: "liver", 22: "gallbladder", 11: "abdominal_wall", 12: "fat",
                                               31: "tool", 32: "tool"}, (255,), r"^(?P<patient>video\d+)"),
    # Endoscapes-Seg50: 5 gallbladder, 6 tool; 255 and 7 undocumented -> ignore; liver is not labelled.
    "endoscapes": LabelPreset("endoscapes", {5: "gallbladder", 6: "tool"}, (255, 7), r"^(?P<patient>[^_]+)_"),
    # Our own data sets' class ids.
    "lapsynth": LabelPreset("lapsynth", {1: "liver", 2: "gallbladder", 3: "abdominal_wall", 4: "fat",
                                         5: "ligament", 6: "tool", 7: "tool"}, (255,), r"^(?P<patient>[^/]+)"),
}


def load_preset(name_or_json: str, pattern: str | None = None) -> LabelPreset:
    if name_or_json in PRESETS:
        p = PRESETS[name_or_json]
    else:
        path = Path(name_or_json)
        if not path.is_file():
            raise SegmentError(f"--preset {name_or_json!r}: not one of {', '.join(PRESETS)} and not a JSON file")
        try:
            d = json.loads(path.read_text())
            values = {int(k): v for k, v in d["values"].items()}
            ignore = tuple(int(v) for v in d.get("ignore", [255]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SegmentError(f"--preset {path}: not a label mapping ({type(e).__name__}: {e}); expected "
                               '{"values": {"21": "liver", ...}, "ignore": [255], "pattern": "..."}') from None
        bad = [c for c in values.values() if c not in EVAL_CLASSES]
        if bad:
            raise SegmentError(f"{path}: unknown classes {bad} (known: {', '.join(EVAL_CLASSES)})")
        p = LabelPreset(path.stem, values, ignore, d.get("pattern", r"^(?P<patient>[^_]+)_"))
    if pattern:
        p = LabelPreset(p.name, p.values, p.ignore, pattern)
    try:
        groups = re.compile(p.pattern).groupindex
    except re.error as e:
        raise SegmentError(f"--patient-pattern {p.pattern!r}: not a regular expression ({e})") from None
    if "patient" not in groups:
        raise SegmentError(f"--patient-pattern {p.pattern!r}: needs a group named 'patient', e.g. "
                           r"'^(?P<patient>[^_]+)_'")
    return p


def dice(pred: np.ndarray, target: np.ndarray, cls_ids: set[int], valid: np.ndarray) -> float:
    """Dice of one class (a set of ids) over valid pixels; nan when the class is absent from both."""
    p = np.isin(pred, list(cls_ids)) & valid
    t = np.isin(target, list(cls_ids)) & valid
    denom = p.sum() + t.sum()
    return float("nan") if denom == 0 else float(2 * (p & t).sum() / denom)


def frame_dice(pred_train_ids: np.ndarray, target_train_ids: np.ndarray, classes: list[str]) -> dict[str, float]:
    valid = target_train_ids != IGNORE
    out = {}
    for c in classes:
        ids = {i for i, name in OURS_TO_EVAL.items() if name == c}
        out[c] = dice(pred_train_ids, target_train_ids, {EVAL_TO_TRAIN_ID[c]} | ids, valid)
    return out


# ----------------------------------------------------------------------------- model

class _ConvRelu(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class _DecoderBlock(nn.Sequential):
    def __init__(self, cin, mid, cout):
        super().__init__(_ConvRelu(cin, mid), nn.ConvTranspose2d(mid, cout, 3, stride=2, padding=1, output_padding=1),
                         nn.ReLU(inplace=True))


class TernausNet11(nn.Module):
    """U-Net with torchvision's VGG11 encoder (Iglovikov and Shvets, 2018). Input sides: multiples of 32."""

    def __init__(self, num_classes: int = len(CLASSES), nf: int = 32, imagenet: Path | None = None):
        super().__init__()
        from torchvision.models import vgg11

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


# ----------------------------------------------------------------------------- data

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _prep(img: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    h, w = size
    im = Image.fromarray(img).convert("RGB").resize((w, h), Image.BILINEAR)
    x = (torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 - MEAN) / STD
    if mask is None:
        return x, None
    m = Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)
    return x, torch.from_numpy(np.array(m).astype(np.int64))


@dataclass
class Sample:
    image: Path
    mask: Path | None  # real frames
    patient: str
    synthetic: dict | None = None  # (root, entry, translation path) for rendered frames


def real_samples(images: Path, masks: Path, preset: LabelPreset) -> list[Sample]:
    if not images.is_dir() or not masks.is_dir():
        raise SegmentError(f"--real-images {images} / --real-masks {masks}: folders not found")
    out = []
    pattern = re.compile(preset.pattern)
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        m = masks / (p.stem + ".png")
        if not m.is_file():
            continue
        found = pattern.search(p.name)
        if not found:
            raise SegmentError(f"{p.name}: --patient-pattern {preset.pattern!r} finds no patient in it")
        out.append(Sample(p, m, found.group("patient")))
    if not out:
        raise SegmentError(f"no image with a mask of the same name in {images} and {masks}")
    return out


def synthetic_samples(root: Path, use: str) -> list[Sample]:
    from blender_addon.dataset import DatasetError

    from .data import DataError, LabelledFrames

    try:
        ds = LabelledFrames(root, use=use)
    except (DatasetError, DataError) as e:
        raise SegmentError(f"--synthetic: {e}") from None
    return [Sample(root / path, None, e["patient"], {"entry": e, "root": root}) for e, path, _ in ds.items]


def read_pair(s: Sample, preset: LabelPreset) -> tuple[np.ndarray, np.ndarray]:
    """The frame as RGB uint8 and its target in our class ids (IGNORE where unknown)."""
    img = np.array(Image.open(s.image).convert("RGB"))
    if s.synthetic is not None:
        target = np.array(Image.open(s.synthetic["root"] / s.synthetic["entry"]["segmentation"])).astype(np.int64)
    else:
        target = preset.to_train_ids(np.array(Image.open(s.mask)))
    return img, target


def augment(img: np.ndarray, target: np.ndarray, size, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of the network's aspect (75-100% of the largest one), horizontal flip, and brightness,
    contrast and saturation jitter: synthetic frames must not teach the network one exact look."""
    h, w = img.shape[:2]
    aspect = size[1] / size[0]
    ch = min(h, w / aspect) * rng.uniform(0.75, 1.0)
    cw = ch * aspect
    y0 = int(rng.uniform(0, h - ch + 1e-6))
    x0 = int(rng.uniform(0, w - cw + 1e-6))
    y1, x1 = min(h, y0 + max(1, round(ch))), min(w, x0 + max(1, round(cw)))
    img, target = img[y0:y1, x0:x1], target[y0:y1, x0:x1]
    if rng.random() < 0.5:
        img, target = img[:, ::-1], target[:, ::-1]
    f = img.astype(np.float32) / 255
    grey = f.mean(axis=2, keepdims=True)
    f = grey + (f - grey) * rng.uniform(0.8, 1.2)  # saturation
    f = f.mean() + (f - f.mean()) * rng.uniform(0.8, 1.2)  # contrast
    f = f * rng.uniform(0.8, 1.2)  # brightness
    return (np.clip(f, 0, 1) * 255).round().astype(np.uint8), np.ascontiguousarray(target)


class TrainFrames(torch.utils.data.Dataset):
    """Sample number i of a training run: a frame and its augmentation drawn from (seed, i) alone, so the
    batches are the same with any number of loader workers and a resumed run continues exactly."""

    def __init__(self, samples: list[Sample], preset: LabelPreset, size, seed: int, augment: bool = True):
        self.samples, self.preset, self.size, self.seed, self.augment = samples, preset, size, seed, augment

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(i)])
        img, target = read_pair(self.samples[int(rng.integers(len(self.samples)))], self.preset)
        if self.augment:
            img, target = augment(img, target, self.size, rng)
        elif rng.random() < 0.5:
            img, target = img[:, ::-1].copy(), target[:, ::-1].copy()
        return _prep(img, target, self.size)


# ----------------------------------------------------------------------------- train / eval

@dataclass
class TrainOptions:
    iterations: int
    batch: int
    lr: float
    seed: int
    augment: bool = True
    workers: int = 0
    class_weights: tuple[float, ...] | None = None  # per training class id, for the cross-entropy


def class_frequencies(samples: list[Sample], preset: LabelPreset, max_frames: int = 200,
                      seed: int = 0) -> np.ndarray:
    """Pixel share of each training class over (a fixed sample of at most max_frames of) the training
    frames, ignore pixels left out."""
    rng = np.random.default_rng(seed)
    pick = samples if len(samples) <= max_frames else [samples[i] for i in
                                                        sorted(rng.choice(len(samples), max_frames, replace=False))]
    counts = np.zeros(len(CLASSES), np.float64)
    for s in pick:
        _, target = read_pair(s, preset)
        counts += np.bincount(target[target != IGNORE].ravel(), minlength=len(CLASSES))[:len(CLASSES)]
    if counts.sum() == 0:
        raise SegmentError("the training frames have no labelled pixel")
    return counts / counts.sum()


def median_frequency_weights(freq: np.ndarray, cap: float = 10.0) -> tuple[float, ...]:
    """Median frequency balancing (Eigen and Fergus, 2015): weight = median share / share, over the classes
    present; absent classes get weight 0 (they never occur in the targets); capped so that a class of a
    few pixels cannot dominate the loss."""
    present = freq > 0
    med = float(np.median(freq[present]))
    w = np.where(present, med / np.maximum(freq, 1e-12), 0.0)
    return tuple(float(v) for v in np.minimum(w, cap))


def train_model(model: nn.Module, samples: list[Sample], preset: LabelPreset, size, opts: TrainOptions, device,
                log=print, desc: str = "train", resume: dict | None = None, on_checkpoint=None,
                every: int = 0) -> nn.Module:
    """Adam on cross-entropy (IGNORE masked out). resume: {"iteration", "optimizer"} to continue a run;
    on_checkpoint(iteration, model, optimizer) is called every `every` iterations."""
    if not samples:
        raise SegmentError("no training frames")
    from tqdm import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=opts.lr)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        start = int(resume["iteration"])
    model.train().to(device)
    data = TrainFrames(samples, preset, size, opts.seed, opts.augment)
    order = range(start * opts.batch, opts.iterations * opts.batch)
    from .data import ignore_stop_signals

    loader = torch.utils.data.DataLoader(data, batch_size=opts.batch, sampler=order, num_workers=opts.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=False,
                                         worker_init_fn=ignore_stop_signals if opts.workers else None)
    bar = tqdm(loader, total=opts.iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True,
               disable=None)
    weight = None if opts.class_weights is None else torch.tensor(opts.class_weights, dtype=torch.float32,
                                                                     device=device)
    for it, (x, t) in enumerate(bar, start + 1):
        x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), t, weight=weight, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if it % max(1, opts.iterations // 5) == 0:
            log(f"  {desc}: iteration {it}/{opts.iterations}, loss {loss.item():.4f}")
        if on_checkpoint is not None and every and it % every == 0 and it < opts.iterations:
            on_checkpoint(it, model, opt)
    bar.close()
    return model


@torch.no_grad()
def predict(model: nn.Module, s: Sample, size, device) -> tuple[np.ndarray, np.ndarray]:
    """Prediction at the mask's own resolution and the image (for overlays)."""
    model.eval()
    img = np.array(Image.open(s.image).convert("RGB"))
    x, _ = _prep(img, None, size)
    logits = model(x[None].to(device))
    logits = F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].cpu().numpy(), img


def evaluate(model, samples: list[Sample], preset: LabelPreset, size, device) -> list[dict]:
    rows = []
    for s in samples:
        pred, _ = predict(model, s, size, device)
        target = preset.to_train_ids(np.array(Image.open(s.mask)))
        rows.append({"patient": s.patient, "frame": s.image.name, **frame_dice(pred, target, preset.classes)})
    return rows


def per_patient_median(rows: list[dict], classes: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for p in sorted({r["patient"] for r in rows}):
        out[p] = {}
        for c in classes:
            vals = [r[c] for r in rows if r["patient"] == p and not np.isnan(r[c])]
            out[p][c] = float(np.median(vals)) if vals else float("nan")
    return out


def _options(args, samples: list[Sample], preset: LabelPreset, iterations: int, lr: float, log) -> TrainOptions:
    """Training options for one phase; class weights from that phase's own training frames."""
    weights = None
    if args.class_balance == "median":
        freq = class_frequencies(samples, preset, seed=args.seed)
        weights = median_frequency_weights(freq)
        log("  class weights (median frequency): " + ", ".join(
            f"{CLASSES[i][1]} {w:.2f}" for i, w in enumerate(weights) if freq[i] > 0))
    return TrainOptions(iterations, args.batch, lr, args.seed, args.augment, args.workers, weights)


def _settings(args, preset: LabelPreset, size, keys: tuple[str, ...]) -> dict:
    """What a result depends on: a rerun with the same settings continues, with others it is refused."""
    out = {"preset": {"name": preset.name, "values": {str(k): v for k, v in preset.values.items()},
                      "ignore": list(preset.ignore), "pattern": preset.pattern}, "size": list(size)}
    for k in keys:
        v = getattr(args, k, None)
        out[k] = str(Path(v).resolve()) if k in ("synthetic", "real_images", "real_masks") and v else v
    return out


def _differing(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _check_settings(path: Path, settings: dict, what: str) -> None:
    if not path.is_file():
        return
    diff = _differing(json.loads(path.read_text()), settings)
    if diff:
        raise SegmentError(f"{path}: {what} was started with other settings ({', '.join(diff)} differ); "
                           f"choose another --out or delete it")


def _save_model(path: Path, model: nn.Module, **extra) -> None:
    import io

    from blender_addon.dataset import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), **extra}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_into(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model


PROTOCOL_KEYS = ("seed", "synthetic", "use", "imagenet", "iterations", "finetune_iterations", "batch", "lr",
                 "augment", "class_balance", "real_images", "real_masks", "both_inits")


def run_protocol(args, log=print) -> dict:
    """Every regime; leave-one-patient-out folds for the real ones. Each finished fold's Dice rows (and the
    models the report needs) are saved atomically in --out, so an interrupted protocol resumes where it was."""
    from blender_addon.dataset import atomic_write_bytes

    preset = load_preset(args.preset, args.patient_pattern)
    size = _size(args.size)
    reals = real_samples(Path(args.real_images), Path(args.real_masks), preset)
    patients = sorted({s.patient for s in reals})
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in ("synthetic", "real", "synthetic+real")]
    if bad:
        raise SegmentError(f"--regimes: unknown {bad} (synthetic, real, synthetic+real)")
    needs_lopo = any(r != "synthetic" for r in regimes)
    if needs_lopo and len(patients) < 2:
        raise SegmentError(f"leave-one-patient-out needs at least 2 real patients, found {patients}")
    synth = synthetic_samples(Path(args.synthetic), args.use) if any("synthetic" in r for r in regimes) else []
    imagenet = find_imagenet(args.imagenet)
    variants = [False, True] if args.both_inits and imagenet else [imagenet is not None]
    notes = [] if imagenet else ["no local ImageNet VGG11 weights (--imagenet or torchvision's cache): "
                                 "every model trained from scratch"]
    notes.append("cross-entropy weighted by median frequency balancing over each model's training frames"
                 if args.class_balance == "median" else "plain cross-entropy (--class-balance none)")
    device = _device(args.device)
    out = Path(args.out)
    settings = _settings(args, preset, size, PROTOCOL_KEYS)
    settings["imagenet"] = str(imagenet) if imagenet else None
    _check_settings(out / "protocol.json", settings, "this protocol")
    (out / "folds").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    atomic_write_bytes(out / "protocol.json", (json.dumps(settings, indent=1) + "\n").encode())
    opts = _options(args, synth, preset, args.iterations, args.lr, log) if synth else None
    table, all_rows, overlay_model = {}, {}, None
    for regime in regimes:
        for use_imagenet in variants:
            name = ("ImageNet + " if use_imagenet else "") + regime
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            log(f"regime {name}")

            def fresh():
                torch.manual_seed(args.seed)
                return TernausNet11(imagenet=imagenet if use_imagenet else None).to(device)

            def fold(tag: str, train_fn, test: list[Sample]) -> list[dict]:
                """A fold's rows from the cache, else trained, evaluated and cached (model first)."""
                rows_path, model_path = out / "folds" / f"{slug}__{tag}.json", out / "models" / f"{slug}.pt"
                if rows_path.is_file():
                    log(f"  {tag}: done earlier ({rows_path.name})")
                    return json.loads(rows_path.read_text())
                model = train_fn()
                _save_model(model_path, model, regime=name, fold=tag)
                rows = evaluate(model, test, preset, size, device)
                atomic_write_bytes(rows_path, (json.dumps(rows, default=float) + "\n").encode())
                return rows

            if regime == "synthetic":
                rows = fold("all", lambda: train_model(fresh(), synth, preset, size, opts, device, log, name), reals)
            else:
                base_path = out / "models" / f"{slug}-base.pt"

                def base() -> dict | None:
                    if regime != "synthetic+real":
                        return None
                    if not base_path.is_file():
                        m = train_model(fresh(), synth, preset, size, opts, device, log, f"{name} (synthetic)")
                        _save_model(base_path, m, regime=name, fold="synthetic pre-training")
                    return torch.load(base_path, map_location="cpu", weights_only=True)["model"]

                rows = []
                for held in patients:
                    def train_fold(held=held):
                        model, pre = fresh(), base()
                        if pre is not None:
                            model.load_state_dict(pre)
                        train = [s for s in reals if s.patient != held]
                        t = _options(args, train, preset, args.finetune_iterations,
                                     args.lr * (0.1 if pre is not None else 1.0), log)
                        return train_model(model, train, preset, size, t, device, log, f"{name} without {held}")
                    rows += fold(held, train_fold, [s for s in reals if s.patient == held])
            all_rows[name] = rows
            table[name] = per_patient_median(rows, preset.classes)
            if overlay_model is None or regime == "synthetic":
                overlay_model = (name, out / "models" / f"{slug}.pt")
    model = _load_into(TernausNet11().to(device), overlay_model[1])
    return write_report(out, table, all_rows, preset, patients, notes, model_for_overlay=model, reals=reals,
                        size=size, device=device)


# ----------------------------------------------------------------------------- report

def write_report(out: Path, table: dict, rows: dict, preset: LabelPreset, patients: list[str], notes: list[str],
                 model_for_overlay, reals: list[Sample], size, device) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"preset": preset.name, "classes": preset.classes, "patients": patients, "notes": notes,
               "median_dice": table, "frames": rows}
    (out / "table.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    lines = [f"# Segmentation: per-patient median Dice ({preset.name})", ""]
    lines += [f"_{n}_" for n in notes] + ([""] if notes else [])
    for c in preset.classes:
        lines += [f"## {c}", "", "| regime | " + " | ".join(patients) + " | median | mean |",
                  "|---|" + "---|" * (len(patients) + 2)]
        for regime, per in table.items():
            vals = [per.get(p, {}).get(c, float("nan")) for p in patients]
            finite = [v for v in vals if not np.isnan(v)]
            med = float(np.median(finite)) if finite else float("nan")
            mean = float(np.mean(finite)) if finite else float("nan")
            lines.append(f"| {regime} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {med:.2f} | {mean:.2f} |")
        lines.append("")
    (out / "table.md").write_text("\n".join(lines))
    _bars(out, table, preset.classes, patients)
    _overlays(out, model_for_overlay, reals, size, device)
    return summary


def _bars(out: Path, table: dict, classes: list[str], patients: list[str]) -> None:
    from PIL import ImageDraw

    for c in classes:
        bar_w, gap, h = 14, 10, 220
        regimes = list(table)
        width = 40 + len(patients) * (len(regimes) * bar_w + gap)
        pic = Image.new("RGB", (max(width, 300), h + 60 + 14 * len(regimes)), (255, 255, 255))
        d = ImageDraw.Draw(pic)
        d.text((5, 5), f"median Dice per patient: {c}", fill=(0, 0, 0))
        colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
        for pi, p in enumerate(patients):
            x0 = 40 + pi * (len(regimes) * bar_w + gap)
            for ri, r in enumerate(regimes):
                v = table[r].get(p, {}).get(c, float("nan"))
                if not np.isnan(v):
                    d.rectangle([x0 + ri * bar_w, 30 + h * (1 - v), x0 + (ri + 1) * bar_w - 2, 30 + h],
                                fill=colors[ri % len(colors)])
            d.text((x0, 34 + h), p[:8], fill=(0, 0, 0))
        for ri, r in enumerate(regimes):
            d.rectangle([5, h + 52 + 14 * ri, 15, h + 62 + 14 * ri], fill=colors[ri % len(colors)])
            d.text((20, h + 50 + 14 * ri), r, fill=(0, 0, 0))
        pic.save(out / f"dice_{c}.png")


def _overlays(out: Path, model, reals: list[Sample], size, device, n: int = 6) -> None:
    from blender_addon.dataset import PALETTE

    pick = [reals[i] for i in np.linspace(0, len(reals) - 1, min(n, len(reals))).round().astype(int)]
    rows = []
    for s in pick:
        pred, img = predict(model, s, size, device)
        over = (img * 0.5 + PALETTE[pred.astype(np.uint8)] * 0.5).astype(np.uint8)
        thumb = lambda a: np.array(Image.fromarray(a).resize((320, round(320 * a.shape[0] / a.shape[1]))))  # noqa
        rows.append(np.concatenate([thumb(img), thumb(over)], 1))
    hmax = max(r.shape[0] for r in rows)
    rows = [np.pad(r, ((0, hmax - r.shape[0]), (0, 0), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, 0)).save(out / "predictions.png")


def _common(p: argparse.ArgumentParser, real_required: bool = True) -> None:
    p.add_argument("--real-images", required=real_required, help="real frames (file names carry the patient)")
    p.add_argument("--real-masks", required=real_required, help="masks with the same stems, PNG")
    p.add_argument("--preset", default="endoscapes", help=f"{', '.join(PRESETS)} or a JSON mapping file")
    p.add_argument("--patient-pattern", help="regex with a group 'patient' applied to file names")
    p.add_argument("--size", default="256x448", help="HxW network input (multiples of 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def _at_least(low, kind=int, strict=False):
    """An argparse type that names the bad value: counts below `low` (rates not above it) are refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > low if strict else value >= low) or value == float("inf"):  # nan fails the comparison
            raise argparse.ArgumentTypeError(f"{text}: must be {'>' if strict else '>='} {low}")
        return value
    return parse


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--synthetic", help="rendered (and translated) data set")
    p.add_argument("--use", default="translation", choices=("translation", "render", "both"),
                   help="which synthetic images to train on")
    p.add_argument("--imagenet", help="local VGG11 ImageNet state dict (default: torchvision's cache, if any)")
    p.add_argument("--iterations", type=_at_least(1), default=4000, help="synthetic training iterations")
    p.add_argument("--finetune-iterations", type=_at_least(1), default=2000, help="real training / fine-tuning iterations")
    p.add_argument("--batch", type=_at_least(1), default=8)
    p.add_argument("--lr", type=_at_least(0, float, strict=True), default=1e-4)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random crop, flip and colour jitter of training frames (off: flip only)")
    p.add_argument("--class-balance", default="none", choices=("none", "median"),
                   help="cross-entropy class weights: none (plain, as TernausNet), or median frequency "
                        "balancing over the training frames (rare classes such as the gallbladder and tool "
                        "tips count more; the liver, the paper's class, counts less)")
    p.add_argument("--workers", type=_at_least(0), default=2, help="data loading processes (0: in the main process)")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SegmentError(f"--size {text!r}: expected HxW, e.g. 256x448") from None
    if h % 32 or w % 32:
        raise SegmentError(f"--size {text}: height and width must be multiples of 32 (TernausNet)")
    return h, w


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except DeviceError as e:
        raise SegmentError(str(e)) from None


TRAIN_KEYS = ("regime", "seed", "synthetic", "use", "iterations", "finetune_iterations", "batch", "lr", "augment",
              "class_balance", "real_images", "real_masks")


def train_command(args, log) -> Path:
    """One model for one regime on all the given data (no cross-validation). Progress is saved every
    --checkpoint-every iterations to OUT.partial (atomically); rerunning the command continues from it."""
    preset = load_preset(args.preset, args.patient_pattern)
    size, device = _size(args.size), _device(args.device)
    imagenet = find_imagenet(args.imagenet) if not args.no_imagenet else None
    phases = []  # (name, samples, options)
    if "synthetic" in args.regime:
        if not args.synthetic:
            raise SegmentError("--synthetic is required for this regime")
        synth = synthetic_samples(Path(args.synthetic), args.use)
        phases.append(("synthetic", synth, _options(args, synth, preset, args.iterations, args.lr, log)))
    if "real" in args.regime:
        if not (args.real_images and args.real_masks):
            raise SegmentError("--real-images and --real-masks are required for this regime")
        lr = args.lr * (0.1 if "synthetic" in args.regime else 1.0)
        reals = real_samples(Path(args.real_images), Path(args.real_masks), preset)
        phases.append(("real", reals, _options(args, reals, preset, args.finetune_iterations, lr, log)))
    if imagenet is None:
        log("no local ImageNet VGG11 weights: training from scratch")
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    settings = _settings(args, preset, size, TRAIN_KEYS)
    settings["imagenet"] = str(imagenet) if imagenet else None
    if out.is_file():
        try:
            done = torch.load(out, map_location="cpu", weights_only=True).get("settings")
        except Exception:  # noqa: BLE001 - not ours: never overwrite it silently
            done = None
        if done == settings:
            log(f"{out}: already trained with these settings (delete it to train again)")
            return out
        raise SegmentError(f"--out {out}: exists and was not trained with these settings; "
                           f"choose another --out or delete it")
    torch.manual_seed(args.seed)
    model = TernausNet11(imagenet=imagenet).to(device)
    state = None
    if partial.is_file():
        state = torch.load(partial, map_location="cpu", weights_only=True)
        if state.get("settings") != settings:
            diff = _differing(state.get("settings") or {}, settings)
            raise SegmentError(f"{partial}: an unfinished run with other settings ({', '.join(diff)} differ); "
                               f"delete it or choose another --out")
        model.load_state_dict(state["model"])
        log(f"resuming from {partial} ({state['phase']} phase, iteration {state['iteration']})")
    for pi, (phase, samples, opts) in enumerate(phases):
        if state is not None and phases.index(next(ph for ph in phases if ph[0] == state["phase"])) > pi:
            continue  # finished before the interruption
        resume = state if state is not None and state["phase"] == phase else None

        def checkpoint(it, m, opt, phase=phase):
            _save_model(partial, m, settings=settings, phase=phase, iteration=it, optimizer=opt.state_dict())

        model = train_model(model, samples, preset, size, opts, device, log, phase, resume=resume,
                            on_checkpoint=checkpoint, every=args.checkpoint_every)
        state = None
        if pi + 1 < len(phases):  # the next phase starts from here even if killed right away
            _save_model(partial, model, settings=settings, phase=phases[pi + 1][0], iteration=0,
                        optimizer=torch.optim.Adam(model.parameters(), lr=phases[pi + 1][2].lr).state_dict())
    _save_model(out, model, size=list(size), regime=args.regime, imagenet=model.imagenet,
                classes=[c[1] for c in CLASSES], settings=settings)
    partial.unlink(missing_ok=True)
    return out


def eval_command(args, log) -> dict:
    preset = load_preset(args.preset, args.patient_pattern)
    device = _device(args.device)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise SegmentError(f"--checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = TernausNet11()
        model.load_state_dict(state["model"])
    except Exception as e:  # noqa: BLE001 - any unusable file: one clear line
        what = ("not a PyTorch file" if isinstance(e, (pickle.UnpicklingError, RuntimeError, EOFError))
                else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
        raise SegmentError(f"--checkpoint {path}: not a model written by `backend.segment train` ({what})") from None
    size = tuple(state["size"]) if not args.size else _size(args.size)
    model.to(device)
    reals = real_samples(Path(args.real_images), Path(args.real_masks), preset)
    rows = evaluate(model, reals, preset, size, device)
    name = state.get("regime", "model")
    table = {name: per_patient_median(rows, preset.classes)}
    notes = [] if state.get("imagenet") else ["model trained without ImageNet weights"]
    return write_report(Path(args.out), table, {name: rows}, preset, sorted({s.patient for s in reals}), notes,
                        model_for_overlay=model, reals=reals, size=size, device=device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("protocol", help="all regimes with leave-one-patient-out; writes the Table 1 report")
    _common(pr)
    _training_args(pr)
    pr.add_argument("--regimes", default="synthetic,real,synthetic+real")
    pr.add_argument("--both-inits", action="store_true", help="run each regime with and without ImageNet weights")
    pr.add_argument("--out", required=True, help="report folder")
    tr = sub.add_parser("train", help="train one model on all the given data")
    _common(tr, real_required=False)
    _training_args(tr)
    tr.add_argument("--regime", required=True, choices=("synthetic", "real", "synthetic+real"))
    tr.add_argument("--no-imagenet", action="store_true", help="ignore ImageNet weights even if present")
    tr.add_argument("--out", required=True, help="model file (.pt)")
    tr.add_argument("--checkpoint-every", type=_at_least(1), default=500,
                    help="save progress to OUT.partial every N iterations; a rerun continues from it")
    ev = sub.add_parser("eval", help="evaluate a trained model on real frames; writes a report")
    _common(ev)
    ev.set_defaults(size=None)
    ev.add_argument("--checkpoint", required=True, help="a model written by `train`")
    ev.add_argument("--out", required=True, help="report folder")
    args = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "protocol":
            if "synthetic" in args.regimes and not args.synthetic:
                raise SegmentError("--synthetic is required for the synthetic regimes")
            run_protocol(args, log=log)
            log(f"report: {args.out}/table.md")
        elif args.command == "train":
            log(f"model: {train_command(args, log)}")
        else:
            eval_command(args, log)
            log(f"report: {args.out}/table.md")
    except SegmentError as e:
        print(f"python -m backend.segment: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
