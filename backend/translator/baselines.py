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

import functools
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

from ..common.images import load_rgb, read_render
from .sheet import contact_sheet
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

# Reinhard et al.'s RGB -> LMS matrix and the LMS (log) -> l-alpha-beta rotation
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS2LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
_EPS = 1.0 / 255  # log of black: clipped to the smallest non-zero 8-bit value
FIELD_OF_VIEW = 12  # real pixels darker than this (max over RGB) count as the border outside the view


def _spectrum(image: np.ndarray) -> np.ndarray:
    """Centred 2-D spectrum per channel (zero frequency at (H // 2, W // 2))."""
    return np.fft.fftshift(np.fft.fft2(image.astype(np.float64), axes=(0, 1)), axes=(0, 1))


def _band(h: int, w: int, beta: float) -> tuple[slice, slice]:
    b = int(np.floor(min(h, w) * beta))
    ch, cw = h // 2, w // 2  # the zero frequency after fftshift
    return slice(ch - b, ch + b + 1), slice(cw - b, cw + b + 1)


@functools.lru_cache(maxsize=16)
def _waves(n: int, b: int) -> np.ndarray:
    """(n, 2b+1) complex: exp(2 pi i k t / n) for the frequencies k = -b..b of a signal of length n."""
    return np.exp(2j * np.pi * np.outer(np.arange(n), np.arange(-b, b + 1)) / n)


def _narrow(h: int, w: int, beta: float) -> bool:
    """A band narrow enough to work on directly (no aliasing, and far cheaper than a full FFT)."""
    return 2 * int(np.floor(min(h, w) * beta)) + 1 <= min(h, w) // 2


def _band_spectrum(image: np.ndarray, beta: float) -> np.ndarray:
    """The centred spectrum's low band, (2b+1, 2b+1, C): the full FFT's values there, computed as two
    small matrix products (the render sizes, e.g. 452 = 4 x 113, make a full FFT slow)."""
    h, w = image.shape[:2]
    if not _narrow(h, w, beta):
        return _spectrum(image)[_band(h, w, beta)]
    b = int(np.floor(min(h, w) * beta))
    rows = _waves(h, b).conj().T @ image.astype(np.float64).reshape(h, -1)  # (2b+1, W*C)
    per_column = rows.reshape(2 * b + 1, w, -1).transpose(0, 2, 1) @ _waves(w, b).conj()  # (2b+1, C, 2b+1)
    return per_column.transpose(0, 2, 1)


def _fda_from_band(render: np.ndarray, render_band: np.ndarray, real_amplitude: np.ndarray,
                   beta: float) -> np.ndarray:
    """The render with its low band's amplitude replaced, its phase kept. Only the band changes, so the
    result is the render plus the inverse transform of the band's change."""
    h, w = render.shape[:2]
    change = real_amplitude * np.exp(1j * np.angle(render_band)) - render_band
    if _narrow(h, w, beta):
        b = int(np.floor(min(h, w) * beta))
        columns = (change.transpose(0, 2, 1) @ _waves(w, b).T).transpose(0, 2, 1)  # (2b+1, W, C)
        delta = (_waves(h, b) @ columns.reshape(2 * b + 1, -1)).real.reshape(render.shape) / (h * w)
    else:
        spectrum = np.zeros(render.shape, np.complex128)
        spectrum[_band(h, w, beta)] = change
        delta = np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(0, 1)), axes=(0, 1)).real
    return np.clip(np.rint(render + delta), 0, 255).astype(np.uint8)


def fda(render: np.ndarray, real: np.ndarray, beta: float) -> np.ndarray:
    """uint8 (H, W, 3) render with the low-frequency amplitude spectrum of `real` (same size)."""
    if render.shape != real.shape:
        raise ValueError(f"fda: render {render.shape} and real frame {real.shape} differ in size")
    return _fda_from_band(render, _band_spectrum(render, beta), np.abs(_band_spectrum(real, beta)), beta)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    lms = np.maximum(rgb.reshape(-1, 3).astype(np.float64) / 255.0 @ _RGB2LMS.T, _EPS)
    return np.log10(lms) @ _LMS2LAB.T


def _from_lab(lab: np.ndarray, shape) -> np.ndarray:
    lms = 10.0 ** (lab @ np.linalg.inv(_LMS2LAB).T)
    rgb = lms @ np.linalg.inv(_RGB2LMS).T * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(shape)


def _lab_statistics(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a real frame in l-alpha-beta, inside its field of view."""
    inside = real.reshape(-1, 3).max(axis=1) >= FIELD_OF_VIEW
    target = _to_lab(real)[inside] if inside.sum() >= 16 else _to_lab(real)
    return target.mean(axis=0), target.std(axis=0)


def _colour_from_lab(lab: np.ndarray, shape, target: tuple[np.ndarray, np.ndarray],
                     inside: np.ndarray | None = None) -> np.ndarray:
    """`inside` (H, W): the render's own statistics come from these pixels only (its field of view)."""
    own = lab if inside is None else lab[inside.ravel()]
    mean, std = own.mean(axis=0), own.std(axis=0)
    return _from_lab((lab - mean) / np.maximum(std, 1e-6) * target[1] + target[0], shape)


def colour_transfer(render: np.ndarray, real: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) render whose l-alpha-beta mean and standard deviation are the real frame's
    (measured inside its field of view). The two images may differ in size."""
    return _colour_from_lab(_to_lab(render), render.shape, _lab_statistics(real))


@functools.lru_cache(maxsize=64)  # bounded memory at any render size; real frames are drawn at random anyway
def _real_frame(path: Path, width: int, height: int) -> np.ndarray:
    """A real frame resized to the render's size (bilinear), read once."""
    from PIL import Image

    return np.asarray(load_rgb(path).resize((width, height), Image.BILINEAR))


@functools.lru_cache(maxsize=4096)  # a few numbers per real frame: every frame of a style set stays cached
def _real_style(method: str, path: Path, width: int, height: int, beta: float) -> np.ndarray | tuple:
    """What a method takes from a real frame: FDA its low-band amplitude, colour transfer its Lab statistics."""
    real = _real_frame(path, width, height)
    if method == "fda":
        return np.abs(_band_spectrum(real, beta))
    return _lab_statistics(real)


def baseline_outputs(method: str, render: np.ndarray, reals: list[Path], seed: int, patient: str, frame: int,
                     styles: int, beta: float, outside: np.ndarray | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """The K outputs of one render and their records (seed and real frame of each). The render's
    low band (or Lab image) is computed once for its K outputs, each real frame's part once per run.
    `outside` (H, W), for renders with a circular field: those pixels stay black in every output, and
    colour transfer measures the render inside the field only, as it measures the real frame."""
    h, w = render.shape[:2]
    own = _band_spectrum(render, beta) if method == "fda" else _to_lab(render)
    outs, records = [], []
    for k in range(styles):
        s = translation_seed(seed, patient, frame, k)
        source = reals[int(np.random.default_rng(s).integers(len(reals)))]
        style = _real_style(method, source, w, h, beta)
        out = (_fda_from_band(render, own, style, beta) if method == "fda"
               else _colour_from_lab(own, render.shape, style, None if outside is None else ~outside))
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
