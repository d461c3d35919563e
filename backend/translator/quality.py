"""Translation quality of a translated data set: structure preservation, diversity, realism.

- Structure preservation: MS-SSIM between the brightness of each render and of each of its
  translations (mean, worst, and per style index k). 1 means every edge stayed in place.
- Diversity: mean over renders of 1 - MS-SSIM between pairs of its K translations (colour-aware:
  computed per RGB channel). 0 means all styles give the same image.
- Realism: FID and KID between translations and real frames, from Inception-v3 pool features,
  only when Inception weights are present locally (a torchvision inception_v3 state dict); never
  downloaded.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim
from scipy import linalg
from torchvision.models import inception_v3

from blender_addon.core.dataset import TRANSLATION_FOLDER, read_index, read_translation_index
from blender_addon.core.errors import InputError
from blender_addon.core.files import atomic_write_json, atomic_write_text

from ..common.images import image_to_tensor, read_image, read_render, real_images
from .losses import msssim_window


class QualityError(InputError):
    pass


def _t(a: np.ndarray) -> torch.Tensor:
    return image_to_tensor(a, signed=False)[None]


def _msssim(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(ms_ssim(x, y, data_range=1.0, win_size=msssim_window(min(x.shape[-2:]))))


def structure_and_diversity(root: Path, name: str = TRANSLATION_FOLDER) -> dict:
    """Over the translation set `name` of the data set at `root` (translation, cut, fda, ...)."""
    entries = read_index(root)  # the data set first: its manifest and index are checked
    done = read_translation_index(root, name)
    if not done:
        raise QualityError(f"{root}: no translations in set {name!r} (run backend.translate first)")
    per_k: dict[int, list[float]] = {}
    diversity = []
    for e in entries:
        t = done.get((e["patient"], int(e["frame"])))
        if t is None:
            continue
        render = _t(read_render(root / e["image"]))
        outs = [_t(read_render(root / p)) for p in t["translations"]]
        for k, o in enumerate(outs):
            per_k.setdefault(k, []).append(_msssim(render.mean(1, keepdim=True), o.mean(1, keepdim=True)))
        pairs = [1 - _msssim(a.transpose(0, 1), b.transpose(0, 1)) for a, b in itertools.combinations(outs, 2)]
        if pairs:
            diversity.append(float(np.mean(pairs)))
    allv = [v for vs in per_k.values() for v in vs]
    return {
        "set": name,
        "frames": len(per_k.get(0, [])),
        "structure_ms_ssim": {"mean": float(np.mean(allv)), "worst": float(np.min(allv)),
                              "per_style": {str(k): float(np.mean(v)) for k, v in per_k.items()}},
        # null (not NaN, which is not JSON) for a set of one style: nothing to compare
        "diversity": float(np.mean(diversity)) if diversity else None,
    }


def load_inception(weights: Path) -> torch.nn.Module:
    """torchvision's Inception-v3 with the user's local weights, cut before the classifier (2048 features)."""
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any unusable file: one clear line
        raise QualityError(f"--inception {weights}: not a torchvision inception_v3 state dict "
                         f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})") from None
    net.fc = torch.nn.Identity()
    return net.eval()


def inception_features(paths: list[Path], net: torch.nn.Module, device) -> np.ndarray:
    net.to(device)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for i in range(0, len(paths), 16):
            batch = [image_to_tensor(_resized(read_image(p), 299), signed=False) for p in paths[i:i + 16]]
            x = (torch.stack(batch) - mean) / std
            feats.append(net(x.to(device)).cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def _resized(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR))


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 10, size: int = 100, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets."""
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    m = min(size, len(a), len(b))
    vals = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals))




def realism_inputs(data: Path, real: str, name: str = TRANSLATION_FOLDER) -> tuple[list[Path], list[Path]]:
    """The translations of set `name` and the real frames FID and KID compare, checked before any work: both
    need two images at least (a covariance, KID's pairs)."""
    fake = [data / q for t in read_translation_index(data, name).values() for q in t["translations"]]
    try:
        reals = real_images([real])
    except InputError as e:
        raise QualityError(str(e)) from None
    for what, images in ((f"set {name} of {data}", fake), (f"--real {real}", reals)):
        if len(images) < 2:
            raise QualityError(f"{what}: {len(images)} image(s); FID and KID need at least 2 on each side "
                               "(their estimates are only meaningful with hundreds)")
    return fake, reals


def realism(inputs: tuple[list[Path], list[Path]], inception: torch.nn.Module, device) -> dict:
    """FID and KID between the translations and the real frames of `realism_inputs`."""
    fake, reals = inputs
    fa = inception_features(fake, inception, device)
    fr = inception_features(reals, inception, device)
    return {"fid": fid(fa, fr), "kid": kid(fa, fr)}


def write_quality_report(out: Path, data: Path, report: dict) -> list[str]:
    """OUT/translation_quality.json and .md; returns the Markdown lines."""
    atomic_write_json(out / "translation_quality.json", report, indent=1)
    s = report["structure_ms_ssim"]
    md = [f"# Translation quality: {data}, set {report.get('set', TRANSLATION_FOLDER)}", "",
          f"- frames: {report['frames']}",
          f"- structure (MS-SSIM of brightness, render vs translation): mean {s['mean']:.3f}, worst {s['worst']:.3f}",
          "- per style: " + ", ".join(f"k={k}: {v:.3f}" for k, v in s["per_style"].items()),
          f"- diversity (1 - MS-SSIM between styles): {report['diversity']:.3f}" if report["diversity"] is not None
          else "- diversity: none to measure (one style per frame)",
          f"- FID {report['fid']:.1f}, KID {report['kid']:.4f}" if "fid" in report else f"- {report['realism']}"]
    atomic_write_text(out / "translation_quality.md", "\n".join(md) + "\n")
    return md
