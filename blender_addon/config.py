"""Render settings: defined once, validated once, shared by render.py and the Blender panel.

Each field's metadata (help text, choices, bounds) drives both the argparse CLI and, later, the
add-on's PropertyGroup, so the panel and the command line cannot disagree.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from .core.dataset import parse_shard
from .core.errors import ConfigError, DatasetError
from .core.settings import parse_resolution

__all__ = ["ConfigError", "RenderSettings", "build_parser", "parse_resolution", "settings_from_args",
           "settings_from_panel"]


def _f(default, help, **meta):
    return field(default=default, metadata={"help": help, **meta})


# Counts beyond this are mistakes that would only fail later (Blender's int properties); the seed may be any size.
MAX_INT = 10 ** 9


@dataclass
class RenderSettings:
    meshes: str = _f(None, "folder with one sub-folder per patient (liver.ply, gallbladder.ply, ...)", required=True)
    out: str = _f(None, "output data set folder", required=True)
    patients: str = _f("", "comma-separated patient folders to render (default: all in --meshes)")
    frames_per_scene: int = _f(100, "frames per patient", min=1, max=10 ** 6)
    resolution: str = _f("452x256", "image size WxH in pixels")
    seed: int = _f(0, "data set seed: frame k of patient p depends only on (seed, p, k)", min=0)
    shard: str = _f("0/1", "render only shard I of N (0-based), e.g. $SLURM_ARRAY_TASK_ID/N")
    device: str = _f("cpu", "Cycles device; gpu uses OptiX or CUDA and fails if none is usable", choices=("cpu", "gpu"))
    samples: int = _f(1, "Cycles samples per pixel (1 + the fast denoiser: 41-46 dB PSNR against 128 samples, "
                         "about 1 frame/s at 452x256 on 2 CPU cores; bench/render_bench.py --quality); data sets "
                         "made before this default used 2, the first ones 8", min=1)
    denoise: bool = _f(True, "denoise the image (OpenImageDenoise on the CPU, OptiX on the GPU)")
    denoise_quality: str = _f("fast", "OpenImageDenoise quality; data sets made before this setting used high",
                              choices=("fast", "balanced", "high"))
    max_tools: int = _f(3, "tools per frame are drawn from 0..max_tools", min=0, max=3)
    min_liver: float = _f(0.15, "resample views where the liver covers less than this fraction", min=0.0, max=1.0,
                          digits=3)
    max_tool: float = _f(0.5, "resample views where tools cover more than this fraction", min=0.0, max=1.0, digits=3)
    max_retries: int = _f(30, "view resampling attempts per frame before taking the best one", min=1)
    view: str = _f("liver", "what the laparoscope looks at: liver (the paper's liver views), cholecystectomy "
                   "(gallbladder neck and body from close up, gallbladder retracted by a grasper; patients "
                   "without a gallbladder are left out) or mixed (half and half; liver views only for patients "
                   "without a gallbladder)", choices=("liver", "cholecystectomy", "mixed"))
    retraction: str = _f("lift", "cholecystectomy views: how the grasper holds the gallbladder up: lift (fundus "
                         "pushed towards the head, the liver edge lifted with it by a smooth warp of the organs) or "
                         "turn (the gallbladder turned rigidly about its neck away from its bed, as in data sets "
                         "made before this setting)", choices=("lift", "turn"))
    min_gallbladder: float = _f(0.05, "cholecystectomy views: resample views where the gallbladder covers less "
                                "than this fraction", min=0.0, max=1.0, digits=3)
    sequence_length: int = _f(1, "frames per video clip: >1 renders clips with smooth camera and tool motion "
                               "and writes optical flow (flow/NNNNNN.npy)", min=1)
    fps: float = _f(25.0, "frame rate of the clips (sets how far things move between frames)", above=0.0, digits=3)
    flow: str = _f("vector", "clips: where the optical flow comes from: vector (Cycles' motion-vector pass of "
                   "the render) or geometry (rebuilt from the depth label and the known camera and tool "
                   "motion, as in data sets made before this setting)", choices=("vector", "geometry"))
    fov_mask: str = _f("none", "circle: black outside a circular field of view drawn like real laparoscopes' "
                       "(label 8 outside, depth NaN, normals 0; data set format 2)", choices=("none", "circle"))
    tissue_look: str = _f("measured", "tissue colours: measured (a pink-white gallbladder, its colour taken from "
                          "real cholecystectomy frames) or classic (the pale yellow-green gallbladder of data sets "
                          "made before this setting)", choices=("measured", "classic"))
    tool_look: str = _f("measured", "instrument colours: measured (grey metal shafts and jaws, their brightness "
                        "taken from real cholecystectomy frames) or bright (near-white jaws and black shafts, as in "
                        "data sets made before this setting)", choices=("measured", "bright"))
    exposure_target: float = _f(0.45, "auto exposure: the scene-linear luminance the brightest 3 percent of "
                                "each frame is scaled to (lower is darker; 0.45 puts the renders' brightness "
                                "at real cholecystectomy frames'); data sets made before this setting used 0.7",
                                above=0.0, max=1.0, digits=3)
    threads: int = _f(0, "CPU render threads (0: all cores)", min=0)
    preview_frames: int = _f(6, "frames shown in preview.png", min=0)
    overwrite: bool = _f(False, "delete a data set with other settings in --out instead of refusing")

    # Settings that change what a frame looks like: a data set on disk must match them to be resumed.
    CONTENT_KEYS = ("resolution", "seed", "samples", "denoise", "max_tools", "min_liver", "max_tool", "max_retries")
    # Content settings added later, with the value every data set made before them had: recorded only when
    # they differ from it, so those data sets resume as before (and a differing request is refused).
    LATER_CONTENT_KEYS = {"view": "liver", "min_gallbladder": 0.05, "fov_mask": "none", "sequence_length": 1,
                          "fps": 25.0, "denoise_quality": "high", "tissue_look": "classic", "flow": "geometry",
                          "tool_look": "bright", "exposure_target": 0.7, "retraction": "turn"}

    @property
    def size(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    def content(self) -> dict:
        d = asdict(self)
        if d["sequence_length"] == 1:
            d["flow"] = self.LATER_CONTENT_KEYS["flow"]  # single frames have no flow: the setting changes nothing
        if d["view"] == "liver":
            d["retraction"] = self.LATER_CONTENT_KEYS["retraction"]  # liver views retract nothing
        return {**{k: d[k] for k in self.CONTENT_KEYS},
                **{k: d[k] for k, before in self.LATER_CONTENT_KEYS.items() if d[k] != before}}

    def validate(self) -> "RenderSettings":
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if meta.get("required") and value in (None, ""):
                raise ConfigError(f"--{f.name.replace('_', '-')} is required")
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: choose one of {', '.join(meta['choices'])}")
            if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: must be a finite number")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT and f.name != "seed":
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: must be at most {MAX_INT:.0e}")
            if "above" in meta and not value > meta["above"]:
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: must be > {meta['above']:g}")
            if "min" in meta and value < meta["min"]:
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: must be >= {meta['min']}")
            if "max" in meta and value > meta["max"]:
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: must be <= {meta['max']}")
        parse_resolution(self.resolution)
        try:
            parse_shard(self.shard)
        except DatasetError as e:
            raise ConfigError(str(e)) from None
        return self

    def to_args(self) -> list[str]:
        """The command-line arguments that reproduce these settings (for cluster jobs)."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.type in ("bool", bool):
                if value != f.default:
                    args.append(flag if value else "--no-" + f.name.replace("_", "-"))
            elif value != f.default or f.metadata.get("required"):
                args += [flag, str(value)]
        return args


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, as argparse does, without the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "render.py") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Render a Domain A data set: laparoscopic views of each patient with exact "
                    "segmentation, depth, normals and camera/tool poses.",
        epilog="Run as `python blender_addon/render.py ARGS` (bpy module) or "
               "`blender -b -P blender_addon/render.py -- ARGS`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(RenderSettings):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        kwargs = {"help": meta["help"], "dest": f.name}
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, **kwargs)
            continue
        typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        if meta.get("required"):
            p.add_argument(flag, type=typ, required=True, **kwargs)
        else:
            p.add_argument(flag, type=typ, default=f.default, choices=meta.get("choices"), **kwargs)
    return p


def settings_from_args(argv: list[str], prog: str = "render.py") -> RenderSettings:
    ns = build_parser(prog).parse_args(argv)
    return RenderSettings(**vars(ns)).validate()


def settings_from_panel(values: dict) -> RenderSettings:
    """Settings from the panel's properties. Blender stores a float property as a float32, so the 0.15 a
    user sees comes back as 0.15000000596046448; each float is rounded to the digits the panel shows
    (`digits`), which are the digits a user can type, so the panel's command and the data set it writes
    match a hand-written command with the same numbers."""
    values = dict(values)
    for f in fields(RenderSettings):
        if f.name in values and "digits" in f.metadata and isinstance(values[f.name], float):
            values[f.name] = round(values[f.name], f.metadata["digits"])
    return RenderSettings(**values)


assert all(f.default is not MISSING for f in fields(RenderSettings))
assert all(("digits" in f.metadata) == (f.type in ("float", float)) for f in fields(RenderSettings))
