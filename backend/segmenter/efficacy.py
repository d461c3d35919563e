"""The efficacy table: does a data source teach a segmenter the real thing?

One cell = one data source x one seed: TernausNet-11 trained with identical settings (iterations,
batch, learning rate, size, augmentation, the recipe of recipe.py) on that source, then evaluated on the real *val* frames;
the score of a cell is, per class, the median over val videos of each video's median Dice. Sources:
`render` (plain renders), `augmented` (plain renders with strong photometric augmentation, no model
involved), every translation set of the data set by name (`fda`, `colour`, `translation`, ...), and
`real` (the real *train* frames: the upper bound; train and val are different videos, so it is a
held-out-video score like the others). `a+b` (e.g. `render+fda`) trains on the union of synthetic
sources, each part drawn equally often whatever its size. `augmented@X` trains on the synthetic source X
(a set or a mix) with the strong photometric augmentation of `augmented` (which is `augmented@render`
under its old name): does a translator add anything on top of a wide spread of looks?

Each finished cell is one JSON file in OUT/cells (written atomically, after its evaluation); a
cell in progress checkpoints to OUT/cells/<cell>.partial.pt. A rerun skips finished cells,
resumes the unfinished one and refuses a folder made with other settings; a failing cell never
touches a finished one. Imports torch, blender_addon.core, backend.common and the segmenter modules.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from blender_addon.core.classes import overlay_picture
from blender_addon.core.dataset import translation_sets
from blender_addon.core.files import atomic_write_json, atomic_write_text
from blender_addon.core.settings import refuse_other_settings, settings_conflicts

from ..common.images import read_mask
from .data import Sample, real_samples, samples_digest, synthetic_samples
from .labels import EVAL_TO_TRAIN_ID, LabelPreset, SegmentError, natural_order
from .metrics import frame_dice, per_patient_median
from .model import TernausNet11, read_model_file, save_model
from .report import REGIME_COLOURS, _save_png, _thumb
from .training import TrainOptions, evaluate, predict, train_model

FIXED_SOURCES = ("render", "augmented", "real")
SETTINGS_FILE = "efficacy.json"
AUGMENTED = "augmented@"  # prefix: the strong photometric augmentation on any synthetic source


def is_augmented(source: str) -> bool:
    return source == "augmented" or source.startswith(AUGMENTED)


def synthetic_parts(source: str) -> list[str]:
    """The data behind a source: render / translation sets (a mix's parts), or ["real"]."""
    if source == "augmented":
        return ["render"]
    return source.removeprefix(AUGMENTED).split("+")


@dataclass
class EfficacyRun:
    out: Path
    synthetic: Path
    preset: LabelPreset
    train: list[Sample]  # real train frames (the upper bound's data, the baselines' style sources)
    val: list[Sample]  # real val frames: every score
    sources: list[str]
    seeds: list[int]
    size: tuple[int, int]
    batch: int
    lr: float
    workers: int
    device: torch.device
    classes: list[str]
    settings: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)  # TrainOptions' recipe fields (recipe.py), the same for every cell
    imagenet: Path | None = None  # VGG11 ImageNet weights for every cell's encoder; None: from scratch
    design: bool = False  # `val` is half of the real train videos (design_split); the real val frames are never scored

    @property
    def scored_on(self) -> str:
        return "design videos (half of the real train videos; val unused)" if self.design else "real val videos"


def fresh_model(run: EfficacyRun) -> TernausNet11:
    """A cell's untrained network: every cell starts alike (ImageNet encoder or none, as recorded)."""
    return TernausNet11(imagenet=run.imagenet).to(run.device)


def parse_budget(text: str) -> tuple[str, float]:
    """'2000it' -> ("iterations", 2000); '90m', '600s', '1.5h' -> ("seconds", ...)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(it|s|m|min|h)\s*", text or "")
    if not m:
        raise SegmentError(f"--budget {text!r}: expected iterations per cell (e.g. 2000it) or a wall time for "
                           "the whole table (e.g. 90m, 600s, 1.5h)")
    value, unit = float(m[1]), m[2]
    if unit == "it":
        if value < 1 or not value.is_integer():
            raise SegmentError(f"--budget {text}: a whole number of iterations, at least 1")
        return "iterations", value
    seconds = value * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise SegmentError(f"--budget {text}: must be more than zero")
    return "seconds", seconds


def split_real(images: Path, masks: Path, split: Path, preset: LabelPreset) -> tuple[list[Sample], list[Sample]]:
    """Real frames with masks, split by a JSON file {frame stem: "train" | "val"} (Endoscapes' split.json)."""
    if not split.is_file():
        raise SegmentError(f"--split {split}: file not found (JSON: frame name without suffix -> train or val)")
    try:
        parts = json.loads(split.read_text())
        assert isinstance(parts, dict)
    except (ValueError, AssertionError):
        raise SegmentError(f"--split {split}: not a JSON object of frame name -> train or val") from None
    samples = real_samples(images, masks, preset)
    train = [s for s in samples if parts.get(s.image.stem) == "train"]
    val = [s for s in samples if parts.get(s.image.stem) == "val"]
    for name, part in (("train", train), ("val", val)):
        if not part:
            raise SegmentError(f"--split {split}: no {name} frame among the {len(samples)} real frames with masks")
    return train, val


def _video_order(video: str):
    return (0, int(video), "") if video.isdecimal() else (1, 0, video)


def design_split(train: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """`--design`: a train-side table for design decisions, so that val stays a report, never a target.
    The real train videos in sorted order alternate between the two halves (both then span the
    recordings, as far as their numbers follow them): the first half trains the upper bound and gives the
    baselines' styles, the second is scored."""
    videos = sorted({s.patient for s in train}, key=_video_order)
    if len(videos) < 2:
        raise SegmentError(f"--design: needs at least 2 real train videos to split (found {len(videos)}: "
                           f"{', '.join(videos)})")
    scored = set(videos[1::2])
    return [s for s in train if s.patient not in scored], [s for s in train if s.patient in scored]


def check_classes(preset: LabelPreset, classes: list[str]) -> None:
    missing = [c for c in classes if c not in preset.classes]
    if missing:
        raise SegmentError(f"--preset {preset.name}: maps no mask value to {', '.join(missing)} (it maps "
                           f"{', '.join(f'{v}->{c}' for v, c in preset.values.items())}); the table needs "
                           f"{', '.join(classes)}")


def check_sources(synthetic: Path, sources: list[str], coming: list[str] = ()) -> None:
    """Every requested source exists (or is in `coming`, the baselines made before training): fixed ones,
    or a translation set with outputs in the data set; a mix `a+b` names two or more different
    synthetic parts (plain renders or translation sets)."""
    sets = translation_sets(synthetic)
    for s in sources:
        parts = synthetic_parts(s)
        if s.startswith(AUGMENTED) and ({"augmented", "real", ""} & set(parts) or "@" in s[len(AUGMENTED):]):
            raise SegmentError(f"--sources {s}: augmented@ takes a synthetic source (render, a translation set "
                               "or a mix of them), e.g. augmented@fda or augmented@render+fda")
        if len(parts) > 1 and (len(set(parts)) < len(parts) or {"augmented", "real"} & set(parts) or "" in parts):
            raise SegmentError(f"--sources {s}: a mix joins different synthetic sources with '+' (render or "
                               "translation sets), e.g. render+fda; augmented and real are not mixed")
    missing = [p for s in sources for p in synthetic_parts(s) if p not in FIXED_SOURCES and p not in sets
               and p not in coming]
    if missing:
        raise SegmentError(f"--sources: {', '.join(missing)} not in {synthetic} (its translation sets: "
                           f"{', '.join(sets) or 'none'}; make one with backend.translate --method ...)")


def source_samples(run: EfficacyRun, source: str) -> list[Sample]:
    if source == "real":
        return run.train
    if source.startswith(AUGMENTED):  # the same samples; the augmentation is the cell's training option
        return source_samples(run, source[len(AUGMENTED):])
    if "+" in source:  # each part as often as the largest: 600 renders weigh as much as their 3000 translations
        parts = [source_samples(run, p) for p in source.split("+")]
        n = max(len(p) for p in parts)
        return [s for p in parts for s in p * max(1, round(n / len(p)))]
    return synthetic_samples(run.synthetic, "render" if source in ("render", "augmented") else source)


def read_json(path: Path, what: str):
    """A JSON file this program wrote; one line naming it when it cannot be read (truncated, not ours)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SegmentError(f"{path}: {what} that cannot be read ({type(e).__name__}); delete it or choose "
                           "another --out") from None


def cell_name(source: str, seed: int) -> str:
    return f"{source}-seed{seed}"


def cell_settings(run: EfficacyRun, source: str, seed: int, iterations: int) -> dict:
    return {**run.settings, "source": source, "seed": seed, "iterations": iterations}


def run_cell(run: EfficacyRun, source: str, seed: int, iterations: int, log, checkpoint_every: int = 200) -> dict:
    """Train and evaluate one cell, or return its finished result."""
    cells = run.out / "cells"
    path, partial = cells / f"{cell_name(source, seed)}.json", cells / f"{cell_name(source, seed)}.partial.pt"
    samples = source_samples(run, source)
    settings = cell_settings(run, source, seed, iterations)
    # the bytes of what it trains on: renders or translations made again under the same names (another
    # seed, another method) would otherwise count as done, or be resumed into, without a word
    settings["samples_sha256_16"] = samples_digest(samples)
    if path.is_file():
        done = read_json(path, "a finished cell")
        recorded = done.get("settings", {}) if isinstance(done, dict) else {}
        if "samples_sha256_16" not in recorded:  # cells finished before the key: compared as they were
            settings.pop("samples_sha256_16")
        refuse_other_settings(settings_conflicts(recorded, settings), f"{path}",
                              "choose another --out or delete the cell", error=SegmentError)
        log(f"{cell_name(source, seed)}: done before")
        partial.unlink(missing_ok=True)  # a kill between the result's write and this removal left it
        return done
    torch.manual_seed(seed)
    model = fresh_model(run)
    resume = None
    if partial.is_file():
        try:
            state = read_model_file(partial)
        except SegmentError as e:
            raise SegmentError(f"{e}; delete it to train the cell from the start") from None
        if state.get("settings") == settings:
            model.load_state_dict(state["model"])
            resume = {"iteration": state["iteration"], "optimizer": state["optimizer"]}
            log(f"{cell_name(source, seed)}: resuming at iteration {state['iteration']}")
    opts = TrainOptions(iterations, run.batch, run.lr, seed, True, run.workers, None, is_augmented(source),
                        **run.recipe)
    t0 = time.perf_counter()

    def save_partial(it, net, opt):
        save_model(partial, net, settings=settings, iteration=it, optimizer=opt.state_dict())

    model = train_model(model, samples, run.preset, run.size, opts, run.device, log, cell_name(source, seed),
                        resume=resume, on_checkpoint=save_partial, every=checkpoint_every)
    train_s = time.perf_counter() - t0
    rows = evaluate(model, run.val, run.preset, run.size, run.device)
    result = {"settings": settings, "train_frames": len(samples), "train_seconds": round(train_s, 1),
              "per_video": per_patient_median(rows, run.classes), "rows": rows}
    if seed == run.seeds[0]:
        _examples(cells / f"{cell_name(source, seed)}.examples.png", model, run)
    cells.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, indent=1)
    partial.unlink(missing_ok=True)
    log(f"{cell_name(source, seed)}: " + ", ".join(f"{c} {summary_of(result, c):.3f}" for c in run.classes))
    return result


def summary_of(result: dict, cls: str) -> float:
    """The cell's score for a class: median over videos of the per-video median Dice."""
    values = [v[cls] for v in result["per_video"].values() if not np.isnan(v[cls])]
    return float(np.median(values)) if values else float("nan")


def _examples(path: Path, model, run: EfficacyRun, n: int = 4) -> None:
    """A row of predictions on n fixed val frames (the same frames for every source)."""
    pick = [run.val[i] for i in np.linspace(0, len(run.val) - 1, min(n, len(run.val))).round().astype(int)]
    tiles = [_thumb(overlay_picture(img, pred.astype(np.uint8)), 240) for pred, img in
             (predict(model, s, run.size, run.device) for s in pick)]
    hmax = max(t.shape[0] for t in tiles)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_png(path, Image.fromarray(np.concatenate([np.pad(t, ((0, hmax - t.shape[0]), (0, 0), (0, 0)))
                                                    for t in tiles], 1)))


def table(run: EfficacyRun, results: dict[tuple[str, int], dict]) -> dict:
    """Per source and class: the score of each seed, their mean, spread (max - min) and standard deviation."""
    out = {}
    for source in run.sources:
        row = {}
        for c in run.classes:
            scores = [summary_of(results[(source, s)], c) for s in run.seeds if (source, s) in results]
            row[c] = {"seeds": scores, "mean": float(np.mean(scores)) if scores else float("nan"),
                      "spread": float(np.ptp(scores)) if scores else float("nan"),
                      "std": float(np.std(scores)) if scores else float("nan")}
        out[source] = row
    return out


def per_video_table(run: EfficacyRun, results: dict[tuple[str, int], dict]) -> dict:
    """Per source, video and class: the video's median Dice, mean over the seeds that finished and scored
    it (nan where none did: no frame of the video with the class in its mask or its prediction). This
    shows which videos a source wins or loses on (a look that suits some videos and not others). With one
    seed a cell's score is the median of these over videos; with several, the table's score is the mean of
    each seed's median, which can differ from the median of these means."""
    out = {}
    for source in run.sources:
        cells = [results[(source, s)]["per_video"] for s in run.seeds if (source, s) in results]
        out[source] = {}
        for v in sorted({v for c in cells for v in c}, key=natural_order):
            out[source][v] = {}
            for c in run.classes:
                vals = [cell[v][c] for cell in cells if v in cell and not np.isnan(cell[v][c])]
                out[source][v][c] = float(np.mean(vals)) if vals else float("nan")
    return out


def constant_floor_per_video(run: EfficacyRun) -> dict[str, dict[str, float]]:
    """Per video and class, the median Dice of a "model" that marks every pixel as that class."""
    rows = []
    for s in run.val:
        target = run.preset.to_train_ids(read_mask(s.mask))
        row = {"patient": s.patient}
        for c in run.classes:
            row[c] = frame_dice(np.full(target.shape, EVAL_TO_TRAIN_ID[c]), target, [c])[c]
        rows.append(row)
    return per_patient_median(rows, run.classes)


def constant_floor(run: EfficacyRun, per_video: dict | None = None) -> dict[str, float]:
    """Per class, the score of a "model" that marks every pixel as that class, scored like a cell: what a
    cell must beat to show it learnt anything (a class that fills much of most frames, as the gallbladder
    does in Endoscapes, scores well above 0 this way)."""
    per_video = constant_floor_per_video(run) if per_video is None else per_video
    return {c: summary_of({"per_video": per_video}, c) for c in run.classes}


def write_report(run: EfficacyRun, results: dict, iterations: int) -> dict:
    t = table(run, results)
    floor_videos = constant_floor_per_video(run)
    floor = constant_floor(run, floor_videos)
    per_video = per_video_table(run, results)
    videos = sorted({s.patient for s in run.val})
    report = {"sources": run.sources, "classes": run.classes, "seeds": run.seeds, "iterations": iterations,
              "scored_on": run.scored_on, "val_videos": videos, "val_frames": len(run.val), "settings": run.settings,
              "table": t,
              "floor_every_pixel_one_class": floor,
              "per_video": per_video,  # source -> video -> class: the video's median Dice, mean over seeds
              "floor_per_video": floor_videos}
    atomic_write_json(run.out / "efficacy_table.json", report, indent=1)
    lines = [f"# Efficacy: segmenter trained on each source, tested on {run.scored_on}", "",
             f"Score: median over {len(videos)} {'design' if run.design else 'val'} videos of the per-video median "
             "Dice; mean over seeds "
             f"{run.seeds} (spread = max - min). {iterations} iterations of {run.batch} at "
             f"{run.size[1]}x{run.size[0]} per cell, identical settings for every source.",
             "Recipe: " + ", ".join(f"{k} {v}" for k, v in run.recipe.items())
             + f" (peak lr {run.lr:g}; {run.settings.get('precision', 'float32')}).", "",
             "| source | " + " | ".join(f"{c} mean | {c} spread" for c in run.classes) + " |",
             "|---|" + "---|---|" * len(run.classes)]
    for source, row in t.items():
        lines.append(f"| {source} | " + " | ".join(f"{row[c]['mean']:.3f} | {row[c]['spread']:.3f}"
                                                    for c in run.classes) + " |")
    lines.append("| *floor: every pixel that class, no training* | "
                 + " | ".join(f"{floor[c]:.3f} | -" for c in run.classes) + " |")
    lines += _per_video_markdown(per_video, floor_videos, run.classes, sorted(videos, key=natural_order))
    atomic_write_text(run.out / "efficacy_table.md", "\n".join(lines) + "\n")
    _bars(run.out / "efficacy.png", t, run.classes, floor, run.scored_on)
    _video_grid(run.out / "efficacy_videos.png", per_video, floor_videos, run.classes,
                sorted(videos, key=natural_order), run.scored_on)
    rows = [np.asarray(Image.open(p).convert("RGB")) for p in
            (run.out / "cells" / f"{cell_name(s, run.seeds[0])}.examples.png" for s in run.sources) if p.is_file()]
    if rows:
        w = max(r.shape[1] for r in rows)
        _save_png(run.out / "examples.png",
                  Image.fromarray(np.concatenate([np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in rows])))
    return report


def _bars(path: Path, t: dict, classes: list[str], floor: dict[str, float] | None = None,
          scored_on: str = "real val videos") -> None:
    """One group of bars per class, a bar per source (mean over seeds) with its min-max whisker, and the
    every-pixel-one-class floor as a dashed line across the group."""
    sources, bar_w, h = list(t), 22, 220
    width = 60 + len(classes) * (len(sources) * bar_w + 40)
    pic = Image.new("RGB", (max(width, 360), h + 70 + 14 * len(sources)), (255, 255, 255))
    d = ImageDraw.Draw(pic)
    d.text((5, 5), f"Dice on {scored_on} (median over videos; mean and range over seeds)", fill=(0, 0, 0))
    for ci, c in enumerate(classes):
        x0 = 50 + ci * (len(sources) * bar_w + 40)
        for si, s in enumerate(sources):
            row = t[s][c]
            if not np.isnan(row["mean"]):
                colour = REGIME_COLOURS[si % len(REGIME_COLOURS)]
                d.rectangle([x0 + si * bar_w, 30 + h * (1 - row["mean"]), x0 + (si + 1) * bar_w - 3, 30 + h],
                            fill=colour)
                lo, hi = min(row["seeds"]), max(row["seeds"])
                xm = x0 + si * bar_w + bar_w // 2 - 1
                d.line([xm, 30 + h * (1 - hi), xm, 30 + h * (1 - lo)], fill=(0, 0, 0))
        if floor and not np.isnan(floor.get(c, float("nan"))):
            y = 30 + h * (1 - floor[c])
            for x in range(x0 - 4, x0 + len(sources) * bar_w, 8):
                d.line([x, y, x + 4, y], fill=(90, 90, 90), width=2)
            d.text((x0 + len(sources) * bar_w - 28, y - 12), "floor", fill=(90, 90, 90))
        d.text((x0, 36 + h), c, fill=(0, 0, 0))
    for si, s in enumerate(sources):
        d.rectangle([5, h + 56 + 14 * si, 15, h + 66 + 14 * si], fill=REGIME_COLOURS[si % len(REGIME_COLOURS)])
        d.text((20, h + 54 + 14 * si), s, fill=(0, 0, 0))
    _save_png(path, pic)


def _per_video_markdown(per_video: dict, floor: dict, classes: list[str], videos: list[str]) -> list[str]:
    """Per class, a table of each video's median Dice per source (mean over seeds) and its floor."""
    sources = list(per_video)
    lines = ["", "## Per video", "",
             "Each video's median Dice, mean over the seeds that finished. With one seed the score above is "
             "the median of each column; with several it is the mean of each seed's median, which can differ. "
             "*floor*: every pixel that class."]
    fmt = lambda v: "-" if v is None or np.isnan(v) else f"{v:.3f}"  # noqa: E731
    for c in classes:
        lines += ["", f"### {c}", "", "| video | " + " | ".join(sources) + " | *floor* |",
                  "|---|" + "---|" * (len(sources) + 1)]
        for v in videos:
            lines.append(f"| {v} | " + " | ".join(fmt(per_video[s].get(v, {}).get(c)) for s in sources)
                         + f" | {fmt(floor.get(v, {}).get(c))} |")
    return lines


def _dice_colour(v: float) -> tuple[int, int, int]:
    """Red (0) through yellow (0.5) to green (1); grey where there is no score."""
    if v is None or np.isnan(v):
        return (200, 200, 200)
    v = float(np.clip(v, 0.0, 1.0))
    return (230, int(60 + 340 * v), 70) if v < 0.5 else (int(230 - 300 * (v - 0.5)), 230, 70)


def _video_grid(path: Path, per_video: dict, floor: dict, classes: list[str], videos: list[str],
                scored_on: str) -> None:
    """Per class, a grid of videos (rows) by sources (columns, numbered; the floor last), each cell coloured
    by that video's Dice and labelled with it: where a source's median hides a video it fails on."""
    sources = list(per_video)
    subtitle = "each video's median Dice, mean over seeds; columns: the sources below"
    cw, rh, top = 46, 16, 66
    left = 20 + 6 * max([len(str(v)) for v in videos] + [4])  # the default font is about 6 px a character
    cols = len(sources) + 1
    grid_w = cols * cw + 30
    title = f"Dice per video on {scored_on}"
    width = max(left + len(classes) * grid_w, 6 * max(len(title), len(subtitle)) + 20)
    pic = Image.new("RGB", (width, top + (len(videos) + 1) * rh + 16 * len(sources) + 10), (255, 255, 255))
    d = ImageDraw.Draw(pic)
    d.text((5, 5), title, fill=(0, 0, 0))
    d.text((5, 19), subtitle, fill=(0, 0, 0))
    for ci, c in enumerate(classes):
        x0 = left + ci * grid_w
        d.text((x0, 38), c, fill=(0, 0, 0))
        for j in range(cols):
            d.text((x0 + j * cw + 4, top - 14), str(j + 1) if j < len(sources) else "floor", fill=(0, 0, 0))
        for i, v in enumerate(videos):
            y = top + i * rh
            if ci == 0:
                d.text((5, y + 2), str(v), fill=(0, 0, 0))
            values = [per_video[s].get(v, {}).get(c) for s in sources] + [floor.get(v, {}).get(c)]
            for j, val in enumerate(values):
                missing = val is None or np.isnan(val)
                d.rectangle([x0 + j * cw, y, x0 + (j + 1) * cw - 2, y + rh - 2], fill=_dice_colour(val))
                d.text((x0 + j * cw + 4, y + 2), "-" if missing else f"{val:.2f}", fill=(0, 0, 0))
    y = top + (len(videos) + 1) * rh
    for j, s in enumerate(sources):
        d.text((5, y + 16 * j), f"{j + 1}: {s}", fill=(0, 0, 0))
    _save_png(path, pic)


def probe_seconds(run: EfficacyRun, log) -> tuple[float, float, float]:
    """Seconds per training iteration, per evaluated val frame and of a cell's start-up, measured on
    plain renders exactly as a cell trains (same data-loading workers), to turn a wall-time budget into
    the iterations every cell gets. The rate is the difference of two runs of different lengths, so
    start-up (worker processes, first batches) is not taken for slow iterations: on a GPU it is most of
    a short run."""
    samples = synthetic_samples(run.synthetic, "render")
    model = fresh_model(run)

    def timed(iterations: int) -> float:
        opts = TrainOptions(iterations, run.batch, run.lr, 0, True, run.workers, **run.recipe)
        t0 = time.perf_counter()
        train_model(model, samples, run.preset, run.size, opts, run.device, lambda m: None, "probe")
        return time.perf_counter() - t0

    timed(2)  # warm-up: kernels, autotuning, file caches
    n_short, short = 4, timed(4)
    for n_long in (16, 64):  # long enough that the difference is not noise
        long = timed(n_long)
        if long - short >= 2.0:
            break
    per_it = max((long - short) / (n_long - n_short), 1e-6)
    per_cell = max(0.0, short - n_short * per_it)
    evaluate(model, run.val[:1], run.preset, run.size, run.device)  # warm-up
    frames = run.val[:8]
    t0 = time.perf_counter()
    evaluate(model, frames, run.preset, run.size, run.device)
    per_frame = (time.perf_counter() - t0) / len(frames)
    log(f"probe: {per_it:.3f} s per iteration of {run.batch}, {per_cell:.1f} s to start a cell, "
        f"{per_frame:.3f} s per val frame")
    return per_it, per_frame, per_cell


def resolve_iterations(run: EfficacyRun, budget: str, log) -> int:
    """Iterations per cell: given (2000it), recorded by an earlier run of this folder, or from a wall-time
    budget for the whole table (probed once and recorded, so a resumed table keeps every cell equal)."""
    kind, value = parse_budget(budget)
    recorded = run.out / SETTINGS_FILE
    if recorded.is_file():
        old = read_json(recorded, "this table's settings")
        if not isinstance(old, dict):
            raise SegmentError(f"{recorded}: not this program's settings record; delete it or choose another --out")
        refuse_other_settings(settings_conflicts(old.get("settings", {}), run.settings), str(recorded),
                              "choose another --out or delete it", error=SegmentError)
        if old.get("budget") == budget:
            return int(old["iterations"])
        cells = run.out / "cells"
        if cells.is_dir() and any(f.suffix == ".json" or f.name.endswith(".partial.pt") for f in cells.iterdir()):
            # re-resolving would overwrite the record the finished cells were trained under
            raise SegmentError(f"--budget {budget}: {run.out} holds cells of --budget {old.get('budget')} "
                               f"({old.get('iterations')} iterations each); run it with that budget, or choose "
                               f"another --out")
    if kind == "iterations":
        iterations = int(value)
    else:
        per_it, per_frame, per_cell = probe_seconds(run, log)
        cells = len(run.sources) * len(run.seeds)
        left = value - cells * (per_cell + per_frame * len(run.val))
        iterations = int(left / (cells * per_it)) if left > 0 else 0
        if iterations < 1:
            raise SegmentError(f"--budget {budget}: too small for one iteration per cell ({cells} cells at "
                               f"{per_it:.2f} s per iteration, {per_frame * len(run.val):.0f} s of evaluation each)")
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(recorded, {"settings": run.settings, "budget": budget, "iterations": iterations}, indent=1)
    return iterations
