"""Translation quality: `python -m backend.evaluate --data data/A [--real DIR] [--inception PATH] --out DIR`.

- Structure preservation: MS-SSIM between the brightness of each render and of each of its
  translations (mean, worst, and per style index k). 1 means every edge stayed in place.
- Diversity: mean over renders of 1 - MS-SSIM between pairs of its K translations (colour-aware:
  computed per RGB channel). 0 means all styles give the same image.
- Realism: FID and KID between translations and real frames, from Inception-v3 pool features,
  only when Inception weights are present locally (--inception PATH: a torchvision inception_v3
  state dict); never downloaded. Without them the realism metrics are skipped with a note.
Writes OUT/translation_quality.json and .md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim

from blender_addon import png
from blender_addon.dataset import read_index

from .devices import DeviceError, resolve_device
from .losses import msssim_window


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0


def _msssim(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(ms_ssim(x, y, data_range=1.0, win_size=msssim_window(min(x.shape[-2:]))))


def structure_and_diversity(root: Path) -> dict:
    from .translate import read_translation_index

    done = read_translation_index(root)
    if not done:
        raise ValueError(f"{root}: no translations (run backend.translate first)")
    per_k: dict[int, list[float]] = {}
    diversity = []
    for e in read_index(root):
        t = done.get((e["patient"], int(e["frame"])))
        if t is None:
            continue
        render = _t(png.decode((root / e["image"]).read_bytes()))
        outs = [_t(png.decode((root / p).read_bytes())) for p in t["translations"]]
        for k, o in enumerate(outs):
            per_k.setdefault(k, []).append(_msssim(render.mean(1, keepdim=True), o.mean(1, keepdim=True)))
        pairs = [1 - _msssim(a.transpose(0, 1), b.transpose(0, 1)) for a, b in itertools.combinations(outs, 2)]
        if pairs:
            diversity.append(float(np.mean(pairs)))
    allv = [v for vs in per_k.values() for v in vs]
    return {
        "frames": len(per_k.get(0, [])),
        "structure_ms_ssim": {"mean": float(np.mean(allv)), "worst": float(np.min(allv)),
                              "per_style": {str(k): float(np.mean(v)) for k, v in per_k.items()}},
        "diversity": float(np.mean(diversity)) if diversity else float("nan"),
    }


def load_inception(weights: Path) -> torch.nn.Module:
    """torchvision's Inception-v3 with the user's local weights, cut before the classifier (2048 features)."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any unusable file: one clear line
        raise ValueError(f"--inception {weights}: not a torchvision inception_v3 state dict "
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
            batch = [np.array(Image.open(p).convert("RGB").resize((299, 299), Image.BILINEAR)) for p in paths[i:i + 16]]
            x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255 - mean) / std
            feats.append(net(x.to(device)).cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="a translated data set")
    p.add_argument("--real", help="real frames for FID/KID")
    p.add_argument("--inception", type=Path, help="local torchvision inception_v3 state dict")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    def error(message: str) -> int:
        print(f"python -m backend.evaluate: error: {message}", file=sys.stderr)
        return 2

    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        return error(str(e))
    if args.inception and not args.inception.is_file():
        return error(f"--inception {args.inception}: file not found")
    if args.inception and not args.real:
        return error("--inception needs --real (the real frames to compare with)")
    inception = None
    if args.inception:
        try:
            inception = load_inception(args.inception)
        except ValueError as e:
            return error(str(e))
    try:
        report = structure_and_diversity(args.data)
    except Exception as e:  # noqa: BLE001 - one clear line for any unreadable data set
        return error(str(e))
    if inception is not None:
        from .data import real_images
        from .translate import read_translation_index

        fake = [args.data / q for t in read_translation_index(args.data).values() for q in t["translations"]]
        try:
            real = real_images([args.real])
        except Exception as e:  # noqa: BLE001
            return error(f"--real: {e}")
        fa = inception_features(fake, inception, device)
        fr = inception_features(real, inception, device)
        report["fid"], report["kid"] = fid(fa, fr), kid(fa, fr)
    else:
        report["realism"] = "skipped: FID/KID need --real and local Inception-v3 weights (--inception PATH)"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "translation_quality.json").write_text(json.dumps(report, indent=1) + "\n")
    s = report["structure_ms_ssim"]
    md = [f"# Translation quality: {args.data}", "",
          f"- frames: {report['frames']}",
          f"- structure (MS-SSIM of brightness, render vs translation): mean {s['mean']:.3f}, worst {s['worst']:.3f}",
          "- per style: " + ", ".join(f"k={k}: {v:.3f}" for k, v in s["per_style"].items()),
          f"- diversity (1 - MS-SSIM between styles): {report['diversity']:.3f}",
          f"- FID {report['fid']:.1f}, KID {report['kid']:.4f}" if "fid" in report else f"- {report['realism']}"]
    (args.out / "translation_quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
