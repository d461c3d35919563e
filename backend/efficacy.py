"""Does our data teach a segmenter the real thing? One fixed-budget table, every source side by side.

    python -m backend.efficacy --synthetic data/A --real-images IMG --real-masks MASKS \\
        --split split.json --out runs/efficacy [--budget 90m | --budget 2000it] [--seeds 0,1] \\
        [--sources render,augmented,fda,colour,translation,real] [--resolution 224x128]

For each source (plain renders; renders with strong photometric augmentation; each translation set
of the data set: the learned translator's `translation`, the FDA and colour-transfer baselines...;
the real train frames as the upper bound) and each seed, TernausNet-11 is trained with identical
settings and scored on the real val frames: per class, the median over val videos of each video's
median Dice. The FDA and colour-transfer sets are made first when the data set lacks them
(`backend.translate --method fda|colour`, styles drawn from the real *train* frames only).
Writes OUT/efficacy_table.md and .json (mean and spread over seeds), OUT/efficacy.png (bars) and
OUT/examples.png (predictions on the same val frames, one row per source). A run killed at any
moment continues where it stopped with the same command: finished cells are kept, the unfinished
one resumes from its last checkpoint. --budget 90m is for the whole table: a short probe turns it
into the iterations every cell gets, recorded in OUT/efficacy.json so a resumed run keeps them.

--design scores on half of the real *train* videos instead of val (the other half trains the upper
bound and gives the baselines' styles, as sets `design_fda` and `design_colour`), so that choices
between methods and settings are made without looking at val; val is then read once, for the report.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blender_addon.core.dataset import (
    DatasetError,
    finished_translations,
    read_index,
    read_translation_manifest,
    translation_sets,
)
from blender_addon.core.files import atomic_write_bytes, check_output_dir
from blender_addon.core.settings import lines_digest, parse_resolution

from .common.cli import at_least, error_exit, log, parser
from .common.devices import resolve_device
from .segmenter.data import samples_digest
from .segmenter.efficacy import (
    AUGMENTED,
    SETTINGS_FILE,
    EfficacyRun,
    check_classes,
    check_sources,
    design_split,
    parse_budget,
    resolve_iterations,
    run_cell,
    split_real,
    synthetic_parts,
    write_report,
)
from .segmenter.labels import SegmentError, load_preset
from .segmenter.model import find_imagenet
from .segmenter.protocol import precision_name
from .segmenter.recipe import DEFAULTS, add_recipe_arguments
from .segmenter.training import recipe_options
from .translator.baselines import run_baseline
from .translator.translation import TranslateOptions

PROG = "python -m backend.efficacy"
BASELINES = ("fda", "colour")
DESIGN_PREFIX = "design_"  # --design's baseline sets: styles from the unscored half of the train videos


def design_names(source: str) -> str:
    """--design: fda / colour (in a mix or augmented too) become design_fda / design_colour."""
    prefix = AUGMENTED if source.startswith(AUGMENTED) else ""
    parts = source.removeprefix(prefix).split("+")
    return prefix + "+".join(f"{DESIGN_PREFIX}{p}" if p in BASELINES else p for p in parts)


def baseline_method(source: str, design: bool) -> str | None:
    """The baseline a source names, if this run makes it: fda / colour, or design_fda / design_colour
    with --design (the prefix keeps the two kinds of style source apart in one data set)."""
    if design:
        if not source.startswith(DESIGN_PREFIX):
            return None
        source = source[len(DESIGN_PREFIX):]
    return source if source in BASELINES else None


def build_parser() -> argparse.ArgumentParser:
    p = parser(PROG, __doc__)
    p.add_argument("--synthetic", required=True, type=Path, help="a rendered data set (and its translation sets)")
    p.add_argument("--real-images", required=True, type=Path, help="real frames (file names carry the video)")
    p.add_argument("--real-masks", required=True, type=Path, help="their masks, PNG, same stems")
    p.add_argument("--split", required=True, type=Path, help="JSON: frame name (no suffix) -> train or val")
    p.add_argument("--preset", default="endoscapes", help="label mapping of the real masks (name or JSON file)")
    p.add_argument("--classes", default="gallbladder,tool", help="classes of the table")
    p.add_argument("--sources", help="comma-separated; default: render, augmented, fda, colour, every other "
                                     "translation set of the data set, real; a+b (e.g. render+fda) mixes synthetic "
                                     "sources, each part drawn equally often; augmented@X trains on X (a set or a "
                                     "mix) with augmented's strong photometric augmentation")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds; each source is trained once per seed")
    p.add_argument("--baseline-styles", type=at_least(1), default=5,
                   help="outputs per render when the FDA / colour sets are made here (as K for the translator)")
    p.add_argument("--budget", default="90m", help="iterations per cell (2000it) or wall time of the table (90m)")
    p.add_argument("--resolution", default="224x128", metavar="WxH", help="network input, multiples of 32")
    p.add_argument("--batch", type=at_least(1), default=8)
    p.add_argument("--lr", type=at_least(0, float, strict=True), default=DEFAULTS["lr"],
                   help="(peak) learning rate (default: %(default)g)")
    add_recipe_arguments(p)
    p.add_argument("--imagenet", help="local VGG11 ImageNet state dict for every cell's encoder (default: "
                                      "torchvision's cache, if any; never downloaded; recorded, so one table "
                                      "never mixes initialisations)")
    p.add_argument("--workers", type=at_least(0), default=2, help="data loading processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--design", action="store_true",
                   help="score on half of the real train videos (alternate videos), never on val: for design "
                        "decisions; baselines made as design_fda / design_colour from the other half")
    p.add_argument("--out", required=True, type=Path, help="report folder (kept between runs: resumable)")
    return p


def plan(args) -> tuple[EfficacyRun, list[str]]:
    """Everything checked before anything is written or trained; returns the run and the baselines to make."""
    preset = load_preset(args.preset)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise SegmentError(f"--classes {args.classes!r}: name at least one class, e.g. gallbladder,tool")
    check_classes(preset, classes)
    parse_budget(args.budget)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        seeds = []
    # a repeated seed would fake agreement; torch takes none past 64 bits
    if not seeds or min(seeds) < 0 or max(seeds) >= 2 ** 32 or len(set(seeds)) != len(seeds):
        raise SegmentError(f"--seeds {args.seeds!r}: comma-separated whole numbers 0 to 2**32 - 1, each once, "
                           "e.g. 0,1")
    w, h = parse_resolution(args.resolution, "--resolution", multiple=32)
    read_index(args.synthetic)  # a DatasetError names the problem
    sets = translation_sets(args.synthetic)
    made_here = [f"{DESIGN_PREFIX}{b}" if args.design else b for b in BASELINES]
    if args.sources:
        sources = [s.strip() for s in args.sources.split(",") if s.strip()]
        if not sources:
            raise SegmentError(f"--sources {args.sources!r}: name at least one source, e.g. render,real")
        if args.design:  # fda / colour of the full train split drew styles from the scored videos too
            sources = [design_names(s) for s in sources]
    else:
        others = [s for s in sets if s not in BASELINES and not s.startswith(DESIGN_PREFIX)]
        sources = ["render", "augmented", *made_here, *others, "real"]
    parts = [p for s in sources for p in synthetic_parts(s)]  # mixes (render+fda) need their parts
    train, val = split_real(args.real_images, args.real_masks, args.split, preset)
    if args.design:
        train, val = design_split(train)
    # A baseline set is made here unless a finished one exists (a partial one, of a run killed while making
    # it, is finished); one made from other real frames than this run's train frames is refused.
    baselines = list(dict.fromkeys(p for p in parts if baseline_method(p, args.design)))
    to_make = [b for b in baselines if b not in sets or not baseline_finished(args.synthetic, b, train)]
    check_sources(args.synthetic, sources, coming=to_make)
    check_output_dir(args.out, "--out")
    device = resolve_device(args.device)
    imagenet = find_imagenet(args.imagenet)
    recipe = recipe_options(args)
    settings = {"synthetic": str(args.synthetic.resolve()), "real_images": str(args.real_images.resolve()),
                "real_masks": str(args.real_masks.resolve()), "split": str(args.split.resolve()),
                "preset": preset.name, "size": [h, w], "batch": args.batch, "lr": args.lr, "classes": classes,
                **recipe, "precision": precision_name(device, args.amp)}
    if imagenet:  # only when used: folders made before the option compare equal
        settings["imagenet"] = str(imagenet.resolve())
    if args.design:  # likewise; a design folder is never continued as a val table, nor the other way round
        settings["design"] = True
    # The inputs' content, not only their paths: a split edited, real frames or renders added mid-table would
    # mix cells of other data. Folders made before this was recorded continue without it.
    recorded = args.out / SETTINGS_FILE
    try:
        old = json.loads(recorded.read_text()).get("settings", {}) if recorded.is_file() else None
    except (ValueError, AttributeError):
        old = None  # unreadable: resolve_iterations names it
    if old is None or "inputs" in old:
        entries = read_index(args.synthetic)
        settings["inputs"] = {
            "real_train": len(train), "real_val": len(val),
            "real_sha256_16": lines_digest([f"{role} {s.image.resolve()} {s.mask.resolve()}"
                                       for role, frames in (("train", train), ("val", val)) for s in frames]),
            "renders": len(entries), "renders_sha256_16": lines_digest([f"{e['patient']} {e['frame']}" for e in entries])}
        # and the real frames' bytes (the scored val frames among them); a cell's own training files are
        # pinned in its settings (samples_sha256_16). Folders recorded before this key continue without it.
        if old is None or "real_content_sha256_16" in (old.get("inputs") or {}):
            settings["inputs"]["real_content_sha256_16"] = samples_digest(train + val)
    run = EfficacyRun(args.out, args.synthetic, preset, train, val, sources, seeds, (h, w), args.batch, args.lr,
                      args.workers, device, classes, settings, recipe, imagenet, args.design)
    return run, to_make


def baseline_finished(root: Path, name: str, train) -> bool:
    """Whether baseline set `name` has every frame of the data set; refused (SegmentError) when its styles
    did not come from exactly these real train frames (the report says they do)."""
    try:
        manifest = read_translation_manifest(root, name) or {}
        done = finished_translations(root, int(manifest.get("styles", 0)), name)
    except (DatasetError, TypeError, ValueError) as e:
        raise SegmentError(f"the {name} set of {root}: {e}") from None
    remedy = (f"delete its {name}.json and {name}_index/ to have it made again from this run's train frames, or "
              "choose other sources")
    style_list = Path(str(manifest.get("style_from")))
    try:
        used = {ln.strip() for ln in style_list.read_text(errors="surrogateescape").splitlines() if ln.strip()}
    except (OSError, UnicodeDecodeError):
        raise SegmentError(f"the {name} set of {root}: its style frames' list {style_list} cannot be read, so "
                           f"whether they are only this run's train frames is not known; {remedy}") from None
    if used != {str(s.image.resolve()) for s in train}:
        raise SegmentError(f"the {name} set of {root} took its styles from other real frames ({style_list}: "
                           f"{len(used)} frames) than this run's {len(train)} train frames; {remedy}")
    return {(e["patient"], e["frame"]) for e in read_index(root)} <= done


def make_baselines(run: EfficacyRun, methods: list[str], styles_per_render: int) -> None:
    """The FDA / colour-transfer sets, styles from the real train frames only (listed in OUT)."""
    styles = run.out / "real_train_frames.txt"
    run.out.mkdir(parents=True, exist_ok=True)
    # the paths' own bytes (surrogateescape): read back as the same paths, UTF-8 or not
    atomic_write_bytes(styles, "".join(f"{s.image.resolve()}\n" for s in run.train).encode("utf-8", "surrogateescape"))
    for name in methods:
        method = baseline_method(name, run.design)
        log(f"making the {name} set of {run.synthetic} (styles from {len(run.train)} real train frames"
            f"{' of the unscored design half' if run.design else ''})")
        run_baseline(TranslateOptions(checkpoint=None, data=run.synthetic, method=method, name=name,
                                      styles=styles_per_render, style_from=str(styles), sheet=4), say=log)


def efficacy(args) -> int:
    run, to_make = plan(args)
    log(f"encoder: ImageNet VGG11 weights from {run.imagenet}" if run.imagenet else
        "encoder: from scratch (no --imagenet and no VGG11 weights in torchvision's cache)")
    iterations = resolve_iterations(run, args.budget, log)  # before the baselines: a too-small budget writes nothing
    for stale in (run.out / "cells").glob(".tmp-*"):  # a model file being written when a run was killed
        stale.unlink(missing_ok=True)
    make_baselines(run, to_make, args.baseline_styles)
    if run.design:
        learned = list(dict.fromkeys(p for s in run.sources for p in synthetic_parts(s)
                                     if p not in ("render", "augmented", "real") and not baseline_method(p, True)))
        if learned:
            log(f"note: {', '.join(learned)} may have seen the scored design videos' frames (as style sources or "
                "translator training data, never their masks): read their rows with that in mind")
    log(f"{len(run.sources)} sources x {len(run.seeds)} seeds, {iterations} iterations each, scored on "
        f"{run.scored_on}")
    results = {}
    for seed in run.seeds:  # every source once before any second seed: a cut-short table is balanced
        for source in run.sources:
            results[(source, seed)] = run_cell(run, source, seed, iterations, log)
    report = write_report(run, results, iterations)
    for source, row in report["table"].items():
        log(f"{source:>12}: " + "  ".join(f"{c} {row[c]['mean']:.3f} (+-{row[c]['spread'] / 2:.3f})"
                                         for c in run.classes))
    log(f"report: {args.out}/efficacy_table.md")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return error_exit(PROG, lambda: efficacy(args))


if __name__ == "__main__":
    sys.exit(main())
