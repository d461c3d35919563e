"""The maths of the training-free baselines, free of the data set and of torch: Fourier domain
adaptation (a render keeps its phase and takes a real frame's low-frequency amplitude) and Reinhard
colour transfer in l-alpha-beta, plus the real frames they read (resized to the render, cached).
Used by baselines.py (the fda and colour sets) and by translation.py (cut's styles from real exemplars).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..common.images import load_rgb

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


def band_spectrum(image: np.ndarray, beta: float) -> np.ndarray:
    """The centred spectrum's low band, (2b+1, 2b+1, C): the full FFT's values there, computed as two
    small matrix products (the render sizes, e.g. 452 = 4 x 113, make a full FFT slow)."""
    h, w = image.shape[:2]
    if not _narrow(h, w, beta):
        return _spectrum(image)[_band(h, w, beta)]
    b = int(np.floor(min(h, w) * beta))
    rows = _waves(h, b).conj().T @ image.astype(np.float64).reshape(h, -1)  # (2b+1, W*C)
    per_column = rows.reshape(2 * b + 1, w, -1).transpose(0, 2, 1) @ _waves(w, b).conj()  # (2b+1, C, 2b+1)
    return per_column.transpose(0, 2, 1)


def fda_from_band(render: np.ndarray, render_band: np.ndarray, real_amplitude: np.ndarray,
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
    return fda_from_band(render, band_spectrum(render, beta), np.abs(band_spectrum(real, beta)), beta)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    lms = np.maximum(rgb.reshape(-1, 3).astype(np.float64) / 255.0 @ _RGB2LMS.T, _EPS)
    return np.log10(lms) @ _LMS2LAB.T


def from_lab(lab: np.ndarray, shape) -> np.ndarray:
    lms = 10.0 ** (lab @ np.linalg.inv(_LMS2LAB).T)
    rgb = lms @ np.linalg.inv(_RGB2LMS).T * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(shape)


def lab_statistics(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a real frame in l-alpha-beta, inside its field of view."""
    inside = real.reshape(-1, 3).max(axis=1) >= FIELD_OF_VIEW
    target = to_lab(real)[inside] if inside.sum() >= 16 else to_lab(real)
    return target.mean(axis=0), target.std(axis=0)


def colour_from_lab(lab: np.ndarray, shape, target: tuple[np.ndarray, np.ndarray],
                     inside: np.ndarray | None = None) -> np.ndarray:
    """`inside` (H, W): the render's own statistics come from these pixels only (its field of view)."""
    own = lab if inside is None else lab[inside.ravel()]
    mean, std = own.mean(axis=0), own.std(axis=0)
    return from_lab((lab - mean) / np.maximum(std, 1e-6) * target[1] + target[0], shape)


def colour_transfer(render: np.ndarray, real: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) render whose l-alpha-beta mean and standard deviation are the real frame's
    (measured inside its field of view). The two images may differ in size."""
    return colour_from_lab(to_lab(render), render.shape, lab_statistics(real))


@functools.lru_cache(maxsize=64)  # bounded memory at any render size; real frames are drawn at random anyway
def real_frame(path: Path, width: int, height: int) -> np.ndarray:
    """A real frame resized to the render's size (bilinear), read once."""
    from PIL import Image

    return np.asarray(load_rgb(path).resize((width, height), Image.BILINEAR))


@functools.lru_cache(maxsize=4096)  # a few numbers per real frame: every frame of a style set stays cached
def real_style(method: str, path: Path, width: int, height: int, beta: float) -> np.ndarray | tuple:
    """What a method takes from a real frame: FDA its low-band amplitude, colour transfer its Lab statistics."""
    real = real_frame(path, width, height)
    if method == "fda":
        return np.abs(band_spectrum(real, beta))
    return lab_statistics(real)
