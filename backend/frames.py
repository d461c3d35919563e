"""Extract real frames from a surgical video: `python -m backend.frames --video PATH --fps 5 --out DIR`.

Cholec80 is distributed as MP4 at 25 fps; the paper sampled 5 fps. Options: --crop-border crops
to the bounding box of the circular endoscope view (found on the first 5 sampled frames that are not
black, then fixed for the whole video so every frame has the same geometry); --skip-black drops frames
whose mean brightness (inside the view, once it is known) is under a threshold (out-of-body or lens
covered); --skip-duplicates drops a frame nearly identical to the last one kept (mean absolute
difference on a 64x36 thumbnail under a threshold).
Frames are PNGs named `<video stem>_<frame index in the video, 6 digits>.png`, written atomically;
`<video stem>.frames.json` beside them records the settings (written before the first frame) and, at
the end, what was kept. A re-run with the same settings skips frames already there; one with other
settings is refused (it would mix two kinds of frames under one video's names). A file that decodes
fewer frames than its duration announces is reported (cut short or damaged).
Frames are sampled by index at the video's frame rate, so frame i is at i / rate seconds. A
variable-frame-rate recording (a phone, a screen recorder: its header's average rate is more than 1
percent off its tbr) is first decoded to its average rate by time (ffmpeg's fps filter), which the log says and
the record keeps; otherwise ffmpeg would repeat its frames to tbr and they would be sampled at the
wrong times.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .common.cli import error_exit, log, parser
from .translator.video import extract

PROG = "python -m backend.frames"


def main(argv=None) -> int:
    p = parser(PROG, __doc__)
    p.add_argument("--video", required=True, type=Path)
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--crop-border", action="store_true", help="crop to the circular view's bounding box")
    p.add_argument("--skip-black", type=float, default=0.0, metavar="MEAN",
                   help="skip frames darker than this mean (0-255; e.g. 15)")
    p.add_argument("--skip-duplicates", type=float, default=0.0, metavar="DIFF",
                   help="skip frames differing from the last kept by less than this mean (0-255; e.g. 2)")
    args = p.parse_args(argv)

    def run() -> int:
        extract(args.video, args.out, args.fps, args.crop_border, args.skip_black, args.skip_duplicates, log=log)
        return 0

    return error_exit(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
