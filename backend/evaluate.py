"""Translation quality: `python -m backend.evaluate --data data/A [--set NAME] [--real DIR] [--inception PATH] --out DIR`.

(Segmentation is evaluated by `python -m backend.segment`; this command measures the translator.)

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

import sys
from pathlib import Path

from blender_addon.core.files import check_output_dir

from .common.cli import error_exit, log, parser
from .common.devices import resolve_device
from .translator.quality import (
    QualityError,
    load_inception,
    realism,
    realism_inputs,
    structure_and_diversity,
    write_quality_report,
)

PROG = "python -m backend.evaluate"


def build_parser():
    p = parser(PROG, __doc__)
    p.add_argument("--data", required=True, type=Path, help="a translated data set")
    p.add_argument("--set", default="translation", help="translation set to measure: translation (the default), "
                                                          "cut, fda, colour, or any --name given to backend.translate")
    p.add_argument("--real", help="real frames for FID/KID")
    p.add_argument("--inception", type=Path, help="local torchvision inception_v3 state dict")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cpu")
    return p


def evaluate(args) -> int:
    check_output_dir(args.out, "--out")
    device = resolve_device(args.device)
    if args.inception and not args.inception.is_file():
        raise QualityError(f"--inception {args.inception}: file not found")
    if args.inception and not args.real:
        raise QualityError("--inception needs --real (the real frames to compare with)")
    inception = load_inception(args.inception) if args.inception else None
    try:
        # checked before the structure pass, which takes minutes on a large set
        inputs = realism_inputs(args.data, args.real, args.set) if inception is not None else None
        report = structure_and_diversity(args.data, args.set)
    except QualityError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line for any unreadable data set
        raise QualityError(str(e)) from None
    if inception is not None:
        report.update(realism(inputs, inception, device))
    else:
        report["realism"] = "skipped: FID/KID need --real and local Inception-v3 weights (--inception PATH)"
    log("\n".join(write_quality_report(args.out, args.data, report)))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return error_exit(PROG, lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
