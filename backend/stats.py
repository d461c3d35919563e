"""Class statistics: `python -m backend.stats --data A [--real-images IMG --real-masks MASKS] --out DIR`.

Per evaluation class (tool = shaft + tip), for the rendered frames of a data set and, side by side, for
a real labelled set: the share of frames where the class is visible, and the median and mean share of
the image it fills; the ratio of the two medians (the renderer aims for 1/1.5 .. 1.5 on the classes
real data labels); and each class's colour (mean sRGB, brightness percentiles, saturation, grey share),
also in the outputs of translation sets (`--translation NAME`, repeatable) and per real video
(`--per-video`). Writes OUT/class_stats.md, .json and a histogram figure class_stats.png.

    python -m backend.stats --data data/A --real-images ../shared/data/real/endoscapes/images \\
        --real-masks ../shared/data/real/endoscapes/masks --preset endoscapes --out runs/stats
"""
from __future__ import annotations

import sys
from pathlib import Path

from blender_addon.core.files import check_output_dir

from .common.cli import error_exit, log, parser
from .segmenter.data import real_samples
from .segmenter.labels import SegmentError, load_preset
from .segmenter.statistics import (
    check_translation_sets,
    compare,
    real_appearance,
    real_appearance_per_video,
    real_shares,
    rendered_appearance,
    rendered_shares,
    summarise,
    translated_appearance,
    write_statistics,
)

PROG = "python -m backend.stats"


def build_parser():
    p = parser(PROG, __doc__)
    p.add_argument("--data", required=True, type=Path, help="a rendered data set")
    p.add_argument("--real-images", type=Path, help="real frames (with --real-masks)")
    p.add_argument("--real-masks", type=Path, help="their masks, PNG, same stems")
    p.add_argument("--preset", default="endoscapes", help="label mapping of the real masks (name or JSON file)")
    p.add_argument("--out", required=True, type=Path, help="folder for class_stats.md/.json/.png")
    p.add_argument("--translation", action="append", default=[], metavar="NAME",
                   help="a translation set of --data: its outputs' class colours beside the renders' (repeatable)")
    p.add_argument("--colour-every", type=int, default=1, metavar="K",
                   help="class colours from every K-th frame of each set (0: no colour table)")
    p.add_argument("--per-video", action="store_true",
                   help="also the real frames' class colours video by video (needs the real set)")
    return p


def stats(args) -> int:
    if (args.real_images is None) != (args.real_masks is None):
        raise SegmentError("--real-images and --real-masks go together")
    check_output_dir(args.out, "--out")
    if args.colour_every < 0:
        raise SegmentError(f"--colour-every {args.colour_every}: must be >= 0")
    if args.translation and not args.colour_every:
        raise SegmentError("--translation: its colours need --colour-every >= 1")
    if args.per_video and (args.real_images is None or not args.colour_every):
        raise SegmentError("--per-video: needs --real-images/--real-masks and --colour-every >= 1")
    rendered = summarise(rendered_shares(args.data))
    check_translation_sets(args.data, args.translation)  # named before any colour is read
    real = samples = None
    if args.real_images is not None:
        preset = load_preset(args.preset)
        samples = real_samples(args.real_images, args.real_masks, preset)
        real = summarise(real_shares([s.mask for s in samples], preset))
    look = None
    if args.colour_every:
        look = {"rendered": rendered_appearance(args.data, args.colour_every),
                "real": real_appearance([(s.image, s.mask) for s in samples], preset, args.colour_every)
                if samples else None}
        if args.translation:
            look["translations"] = {n: translated_appearance(args.data, n, args.colour_every)
                                    for n in dict.fromkeys(args.translation)}
        if args.per_video:
            look["real_videos"] = real_appearance_per_video(samples, preset, args.colour_every)
    report = compare(rendered, real, look)
    log(write_statistics(args.out, report, str(args.data), str(args.real_images) if real else None))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return error_exit(PROG, lambda: stats(args))


if __name__ == "__main__":
    sys.exit(main())
