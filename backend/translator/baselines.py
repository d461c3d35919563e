"""Training-free ways to make renders look real: the baselines a learned translator must beat.

- FDA, Fourier domain adaptation (Yang & Soatto, CVPR 2020): the render keeps its phase (where edges
  are) and takes the low-frequency amplitude (overall colour, brightness, vignetting) of a real
  frame. `beta` is the half-width of the swapped band as a fraction of min(H, W); the FDA paper used
  0.01, 0.05 and 0.09. Our default is 0.01: at 0.05 the real frames' black border (the laparoscope's
  circular view) puts strong low frequencies into the band and the outputs show blotches and
  ringing across the organs (seen on the bundled renders with Endoscapes frames); at 0.01 they get
  the real frames' colour and vignetting and keep their texture.
- Colour transfer (Reinhard et al., 2001): the render's per-channel mean and spread in the
  decorrelated l-alpha-beta space are replaced by a real frame's, measured inside its field of view
  (the black border around a laparoscope's circular view is left out of the statistics).

On renders with a circular field of view (`--fov-mask circle`) both keep the pixels outside it black,
as real frames are (`--outside-fov black`, the default): the swapped spectrum and the colour shift
would tint them; and colour transfer measures the render inside its field only, as it measures the
real frame (with the border counted, log-black moved the render's l mean by about 0.5).

Both are written into the data set exactly like learned translations (`backend.translate --method fda
|colour`): their own translation set (`<patient>/fda/...`, `fda_index/`, `fda.json`), the same index
and frame JSON, labels untouched. Output k of a frame draws its real frame from the seed
translation_seed(seed, patient, frame, k); the JSON records that seed and the real frame's path, so
any output can be re-created exactly.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from blender_addon.core.dataset import (
    TRANSLATION_FORMAT,
    IndexWriter,
    finished_translations,
    prepare_translations,
    set_index_dir,
)
from blender_addon.core.progress import Reporter
from blender_addon.core.seeds import translation_seed

from ..common.images import read_render
from .sheet import contact_sheet
from .transfer import band_spectrum, colour_from_lab, fda_from_band, real_style, to_lab
from .translation import (
    FrameWriter,
    dataset_has_fov_mask,
    frames_to_translate,
    keep_render_masks,
    keep_render_pixels,
    key,
    outside_fov_masks,
    plan,
    style_frames,
)


def baseline_outputs(method: str, render: np.ndarray, reals: list[Path], seed: int, patient: str, frame: int,
                     styles: int, beta: float, outside: np.ndarray | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """The K outputs of one render and their records (seed and real frame of each). The render's
    low band (or Lab image) is computed once for its K outputs, each real frame's part once per run.
    `outside` (H, W), for renders with a circular field: those pixels stay black in every output, and
    colour transfer measures the render inside the field only, as it measures the real frame."""
    h, w = render.shape[:2]
    own = band_spectrum(render, beta) if method == "fda" else to_lab(render)
    outs, records = [], []
    for k in range(styles):
        s = translation_seed(seed, patient, frame, k)
        source = reals[int(np.random.default_rng(s).integers(len(reals)))]
        style = real_style(method, source, w, h, beta)
        out = (fda_from_band(render, own, style, beta) if method == "fda"
               else colour_from_lab(own, render.shape, style, None if outside is None else ~outside))
        if outside is not None:  # the swapped spectrum or colour shift tints the black border
            out[outside] = 0
        outs.append(out)
        records.append({"k": k, "seed": s, "method": method, "source": str(source)})
    return outs, records


def run_baseline(opts, say: Callable[[str], None] = print) -> dict:
    """Write a baseline translation set for this shard of the data set; resumable like `translation.run`."""
    root = opts.data
    entries, shard = frames_to_translate(opts)
    reals = style_frames(opts.style_from)
    manifest = {"format": TRANSLATION_FORMAT, "method": opts.method, "styles": opts.styles, "seed": opts.seed,
                "style_from": str(Path(opts.style_from).resolve()), "real_frames": len(reals)}
    if opts.method == "fda":
        manifest["beta"] = opts.beta
    if opts.keep_render != "none":  # only where it changes outputs: older sets keep resuming
        manifest["keep_render"] = opts.keep_render
    black_outside = opts.outside_fov == "black" and dataset_has_fov_mask(root)
    if black_outside:  # as for learned translators; sets made before baselines masked resume with `translated`
        manifest["outside_fov"] = "black"
    prepare_translations(root, manifest, opts.overwrite, opts.name)
    mine = [e for group in plan(entries, 1, shard) for e in group]
    done = finished_translations(root, opts.styles, opts.name)
    todo = [e for e in mine if key(e) not in done]
    say(f"{len(mine)} frames in this part, {len(mine) - len(todo)} done, {len(todo)} to translate "
        f"x {opts.styles} with {opts.method} into the set {opts.name!r}")
    report = Reporter("translate", len(todo) * opts.styles, "images", say)
    t_start = time.perf_counter()
    with ThreadPoolExecutor(opts.workers) as pool, IndexWriter(root, shard, folder=set_index_dir(opts.name)) as index:
        writer = FrameWriter(root, index, manifest, opts, pool)

        def outputs(e):
            render = read_render(root / e["image"])
            outs, records = baseline_outputs(opts.method, render, reals, opts.seed, e["patient"], int(e["frame"]),
                                             opts.styles, opts.beta, outside_fov_masks(root, [e])[0] if black_outside else None)
            if opts.keep_render != "none":
                outs = np.stack(outs)[None]
                keep_render_pixels(outs, render[None], keep_render_masks(root, [e], opts.keep_render))
                outs = list(outs[0])
            return outs, records

        # numpy releases the GIL in its array loops, so frames are computed on threads as well: in order,
        # a bounded window ahead, so that the index and the files come out as from a plain loop
        with ThreadPoolExecutor(opts.workers) as compute:
            ahead: deque = deque()
            for i, e in enumerate(todo):
                ahead.append((e, compute.submit(outputs, e)))
                while ahead and (len(ahead) > 2 * opts.workers or i == len(todo) - 1):
                    done_e, future = ahead.popleft()
                    writer.submit(done_e, *future.result())
                    report.update(writer.stats["images"] + writer.in_flight_images())
        writer.drain()
    report.update(writer.stats["images"], force=True)
    elapsed = time.perf_counter() - t_start
    if opts.sheet > 0:
        contact_sheet(root, opts.styles, opts.sheet, name=opts.name)
    images = writer.stats["images"]
    say(f"done: {images} images in {elapsed:.1f} s ({images / max(elapsed, 1e-9):.1f} images/s)")
    return {"images": images, "seconds": elapsed, **writer.stats}
