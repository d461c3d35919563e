"""The three segmentation commands: `protocol` (every regime, leave-one-patient-out over the real
patients, the Table 1 report), `train` (one model on all the given data) and `eval` (a trained model
on real frames), with what they share: the training options of a phase and the settings a result
depends on. A rerun with the same settings continues where an interrupted run stopped; output made
with other settings is refused (blender_addon.core.settings).

`args` is the command line of `python -m backend.segment`, with `args.size` the network input
(height, width) already parsed. Imports torch, blender_addon.core, backend.common and the other
segmenter modules.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from blender_addon.core.classes import LABEL_CLASSES, LABEL_NAMES
from blender_addon.core.files import atomic_write_bytes, atomic_write_json, sweep_temporaries
from blender_addon.core.settings import refuse_other_settings, settings_conflicts

from ..common.devices import resolve_device
from ..common.precision import bf16_autocast
from .data import Sample, class_frequencies, median_frequency_weights, real_samples, samples_digest, synthetic_samples
from .labels import LabelPreset, SegmentError, load_preset
from .metrics import per_patient_median
from .model import TernausNet11, find_imagenet, load_into, load_trained, read_model_file, save_model
from .recipe import make_optimizer
from .report import write_report
from .training import TrainOptions, evaluate, recipe_options, train_model

REGIMES = ("synthetic", "real", "synthetic+real")
RECIPE_KEYS = ("loss", "schedule", "warmup", "rare_share", "optimizer", "amp")
TRAIN_KEYS = ("regime", "seed", "synthetic", "use", "iterations", "finetune_iterations", "batch", "lr", "augment",
              "class_balance", "real_images", "real_masks", *RECIPE_KEYS)
PROTOCOL_KEYS = ("seed", "synthetic", "use", "imagenet", "iterations", "finetune_iterations", "batch", "lr",
                 "augment", "class_balance", "real_images", "real_masks", "both_inits", *RECIPE_KEYS)
OTHER_OUT = "choose another --out or delete it"


# ----------------------------------------------------------------------------- shared

def phase_options(args, samples: list[Sample], preset: LabelPreset, iterations: int, lr: float, log) -> TrainOptions:
    """Training options for one phase; class weights from that phase's own training frames."""
    weights = None
    if args.class_balance == "median":
        freq = class_frequencies(samples, preset, seed=args.seed)
        weights = median_frequency_weights(freq)
        log("  class weights (median frequency): " + ", ".join(
            f"{LABEL_NAMES[i]} {w:.2f}" for i, w in enumerate(weights) if freq[i] > 0))
    return TrainOptions(iterations, args.batch, lr, args.seed, args.augment, args.workers, weights,
                        **recipe_options(args))


def precision_name(device: torch.device, amp: str) -> str:
    """bf16 or float32: what --amp means on this device (bf16 and float32 runs give other weights)."""
    return "bf16" if bf16_autocast(device, amp)[0] is not None else "float32"


def run_settings(args, preset: LabelPreset, keys: tuple[str, ...], imagenet: Path | None,
                 device: torch.device | None = None) -> dict:
    """What a result depends on: a rerun with the same settings continues, with others it is refused."""
    out = {"preset": {"name": preset.name, "values": {str(k): v for k, v in preset.values.items()},
                      "ignore": list(preset.ignore), "pattern": preset.pattern}, "size": list(args.size)}
    for k in keys:
        v = getattr(args, k, None)
        out[k] = str(Path(v).resolve()) if k in ("synthetic", "real_images", "real_masks") and v else v
    out["imagenet"] = str(imagenet) if imagenet else None
    if device is not None:
        out["precision"] = precision_name(device, args.amp)
    return out


def _refuse_unless_same(old: dict, new: dict, what: str, remedy: str = OTHER_OUT) -> None:
    refuse_other_settings(settings_conflicts(old, new), what, remedy, error=SegmentError)


# ----------------------------------------------------------------------------- protocol

@dataclass
class ProtocolRun:
    """What every model of one protocol run shares."""

    args: argparse.Namespace
    preset: LabelPreset
    size: tuple[int, int]
    device: torch.device
    out: Path
    log: Callable[[str], None]
    reals: list[Sample]
    patients: list[str]
    synth: list[Sample]
    synth_options: TrainOptions | None
    imagenet: Path | None


def parse_regimes(text: str) -> list[str]:
    regimes = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise SegmentError(f"--regimes: unknown {bad} ({', '.join(REGIMES)})")
    if not regimes:
        raise SegmentError(f"--regimes {text!r}: name at least one of {', '.join(REGIMES)}")
    return regimes


def _protocol_notes(imagenet: Path | None, args, device: torch.device) -> list[str]:
    notes = [] if imagenet else ["no local ImageNet VGG11 weights (--imagenet or torchvision's cache): "
                                 "every model trained from scratch"]
    loss = "cross-entropy + soft Dice" if args.loss == "dice_ce" else "cross-entropy"
    notes.append(f"{loss}, the cross-entropy weighted by median frequency balancing over each model's training "
                 "frames" if args.class_balance == "median" else f"{loss}, unweighted (--class-balance none)")
    notes.append(f"recipe: {args.optimizer}, {args.schedule} learning rate (peak {args.lr:g}"
                 + (f", warm-up {args.warmup:g} of the iterations" if args.schedule == "cosine" else "")
                 + f"), rare-class share {args.rare_share:g}, {precision_name(device, args.amp)} (--amp {args.amp})")
    return notes


def _start_protocol(args, regimes: list[str], log) -> ProtocolRun:
    """Checks the input, refuses an --out made with other settings, then records this run's settings."""
    preset = load_preset(args.preset, args.patient_pattern)
    reals = real_samples(Path(args.real_images), Path(args.real_masks), preset)
    patients = sorted({s.patient for s in reals})
    if any(r != "synthetic" for r in regimes) and len(patients) < 2:
        raise SegmentError(f"leave-one-patient-out needs at least 2 real patients, found {patients}")
    synth = synthetic_samples(Path(args.synthetic), args.use) if any("synthetic" in r for r in regimes) else []
    imagenet = find_imagenet(args.imagenet)
    device = resolve_device(args.device)
    out = Path(args.out)
    settings = run_settings(args, preset, PROTOCOL_KEYS, imagenet, device)
    # the real frames' bytes (every regime reads them; a rerun may ask for fewer regimes, so the renders,
    # read by the synthetic ones only, are not part of this record)
    settings["data_sha256_16"] = samples_digest(reals)
    record = out / "protocol.json"
    if record.is_file():
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            raise SegmentError(f"{record}: not a protocol settings file (unreadable or not a JSON object); "
                               f"{OTHER_OUT}")
        settings = as_recorded(settings, recorded)
        _refuse_unless_same(recorded, settings, f"{record}: this protocol")
    elif out.is_dir() and any(not f.name.startswith(".tmp-") for f in out.iterdir()):
        raise SegmentError(f"--out {out}: folder is not empty and holds no protocol.json (not a protocol run's "
                           "folder: its files would be overwritten); pick a new or empty folder")
    sweep_temporaries([out], suffixes=(".pt", ".json", ".md", ".png"), say=log)  # kill -9 leftovers, an hour old
    (out / "folds").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    atomic_write_json(out / "protocol.json", settings, indent=1)
    opts = phase_options(args, synth, preset, args.iterations, args.lr, log) if synth else None
    return ProtocolRun(args, preset, args.size, device, out, log, reals, patients, synth, opts, imagenet)


def _fresh_model(run: ProtocolRun, use_imagenet: bool) -> TernausNet11:
    torch.manual_seed(run.args.seed)
    return TernausNet11(imagenet=run.imagenet if use_imagenet else None).to(run.device)


def _fold(run: ProtocolRun, name: str, slug: str, tag: str, train: Callable[[], nn.Module],
          test: list[Sample]) -> list[dict]:
    """A fold's Dice rows from the cache, else trained, evaluated and cached (model first)."""
    rows_path, model_path = run.out / "folds" / f"{slug}__{tag}.json", run.out / "models" / f"{slug}.pt"
    if rows_path.is_file():
        run.log(f"  {tag}: done earlier ({rows_path.name})")
        return json.loads(rows_path.read_text())
    model = train()
    save_model(model_path, model, regime=name, fold=tag)
    rows = evaluate(model, test, run.preset, run.size, run.device)
    atomic_write_bytes(rows_path, (json.dumps(rows, default=float) + "\n").encode())
    return rows


def _train_synthetic(run: ProtocolRun, use_imagenet: bool, desc: str) -> nn.Module:
    return train_model(_fresh_model(run, use_imagenet), run.synth, run.preset, run.size, run.synth_options,
                       run.device, run.log, desc)


def _base_state(run: ProtocolRun, name: str, slug: str, use_imagenet: bool) -> dict:
    """The synthetic pre-training of a synthetic+real regime (trained once, then read from its file)."""
    path = run.out / "models" / f"{slug}-base.pt"
    if not path.is_file():
        save_model(path, _train_synthetic(run, use_imagenet, f"{name} (synthetic)"), regime=name,
                   fold="synthetic pre-training")
    return read_model_file(path)["model"]


def _train_without(run: ProtocolRun, regime: str, name: str, slug: str, use_imagenet: bool, held: str) -> nn.Module:
    """A model of a real regime trained on every real patient but `held` (fine-tuned from the synthetic
    pre-training, at a tenth of the learning rate, for synthetic+real)."""
    model = _fresh_model(run, use_imagenet)
    pre = _base_state(run, name, slug, use_imagenet) if regime == "synthetic+real" else None
    if pre is not None:
        model.load_state_dict(pre)
    train = [s for s in run.reals if s.patient != held]
    opts = phase_options(run.args, train, run.preset, run.args.finetune_iterations,
                         run.args.lr * (0.1 if pre is not None else 1.0), run.log)
    return train_model(model, train, run.preset, run.size, opts, run.device, run.log, f"{name} without {held}")


def _regime_rows(run: ProtocolRun, regime: str, name: str, slug: str, use_imagenet: bool) -> list[dict]:
    if regime == "synthetic":
        return _fold(run, name, slug, "all", partial(_train_synthetic, run, use_imagenet, name), run.reals)
    rows = []
    for held in run.patients:
        rows += _fold(run, name, slug, held, partial(_train_without, run, regime, name, slug, use_imagenet, held),
                      [s for s in run.reals if s.patient == held])
    return rows


def run_protocol(args, log=print) -> dict:
    """Every regime; leave-one-patient-out folds for the real ones. Each finished fold's Dice rows (and the
    models the report needs) are saved atomically in --out, so an interrupted protocol resumes where it was."""
    regimes = parse_regimes(args.regimes)
    if any("synthetic" in r for r in regimes) and not args.synthetic:
        raise SegmentError("--synthetic is required for the synthetic regimes")
    run = _start_protocol(args, regimes, log)
    variants = [False, True] if args.both_inits and run.imagenet else [run.imagenet is not None]
    table, all_rows, overlay_model = {}, {}, None
    for regime in regimes:
        for use_imagenet in variants:
            name = ("ImageNet + " if use_imagenet else "") + regime
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            log(f"regime {name}")
            all_rows[name] = _regime_rows(run, regime, name, slug, use_imagenet)
            table[name] = per_patient_median(all_rows[name], run.preset.classes)
            if overlay_model is None or regime == "synthetic":
                overlay_model = run.out / "models" / f"{slug}.pt"
    model = load_into(TernausNet11().to(run.device), overlay_model)
    notes = _protocol_notes(run.imagenet, args, run.device)
    return write_report(run.out, table, all_rows, run.preset, run.patients, notes, model_for_overlay=model,
                        reals=run.reals, size=run.size, device=run.device)


# ----------------------------------------------------------------------------- train

def _train_phases(args, preset: LabelPreset, log) -> list[tuple[str, list[Sample], TrainOptions]]:
    """(name, samples, options) of each phase of the regime: synthetic, then real (fine-tuning)."""
    phases = []
    if "synthetic" in args.regime:
        if not args.synthetic:
            raise SegmentError("--synthetic is required for this regime")
        synth = synthetic_samples(Path(args.synthetic), args.use)
        phases.append(("synthetic", synth, phase_options(args, synth, preset, args.iterations, args.lr, log)))
    if "real" in args.regime:
        if not (args.real_images and args.real_masks):
            raise SegmentError("--real-images and --real-masks are required for this regime")
        lr = args.lr * (0.1 if "synthetic" in args.regime else 1.0)
        reals = real_samples(Path(args.real_images), Path(args.real_masks), preset)
        phases.append(("real", reals, phase_options(args, reals, preset, args.finetune_iterations, lr, log)))
    return phases


# Settings keys added later: a file recorded before one existed is compared without it.
LATER_KEYS = ("data_sha256_16",)


def as_recorded(settings: dict, recorded) -> dict:
    """`settings` as a file recorded without a later key would have them."""
    if not isinstance(recorded, dict):
        return settings
    return {k: v for k, v in settings.items() if k not in LATER_KEYS or k in recorded}


def _already_trained(out: Path, settings: dict, log) -> bool:
    """True for a finished model of these settings; any other existing file is refused."""
    if not out.is_file():
        return False
    try:
        done = read_model_file(out).get("settings")
    except Exception:  # noqa: BLE001 - not ours: never overwrite it silently
        done = None
    settings = as_recorded(settings, done)
    if done == settings:
        log(f"{out}: already trained with these settings (delete it to train again)")
        return True
    differ = f" ({'; '.join(settings_conflicts(done, settings))})" if isinstance(done, dict) else ""
    raise SegmentError(f"--out {out}: exists and was not trained with these settings{differ}; {OTHER_OUT}")


def _resume_state(partial_path: Path, settings: dict, model: nn.Module, log) -> dict | None:
    """The unfinished run in OUT.partial (its weights loaded into model), or None."""
    if not partial_path.is_file():
        return None
    state = read_model_file(partial_path)
    recorded = state.get("settings") or {}
    _refuse_unless_same(recorded, as_recorded(settings, recorded), f"{partial_path}: an unfinished run",
                        "delete it or choose another --out")
    model.load_state_dict(state["model"])
    log(f"resuming from {partial_path} ({state['phase']} phase, iteration {state['iteration']})")
    return state


def _save_partial(path: Path, settings: dict, phase: str, iteration: int, model: nn.Module, optimizer) -> None:
    save_model(path, model, settings=settings, phase=phase, iteration=iteration, optimizer=optimizer.state_dict())


def _train_phases_from(model: nn.Module, phases: list, state: dict | None, partial_path: Path, settings: dict,
                       args, preset: LabelPreset, device, log) -> nn.Module:
    """Runs the phases in order, skipping those finished before an interruption; progress is saved to
    partial_path every --checkpoint-every iterations and at the start of each following phase."""
    names = [name for name, _, _ in phases]
    for pi, (phase, samples, opts) in enumerate(phases):
        if state is not None and names.index(state["phase"]) > pi:
            continue  # finished before the interruption
        resume = state if state is not None and state["phase"] == phase else None
        model = train_model(model, samples, preset, args.size, opts, device, log, phase, resume=resume,
                            on_checkpoint=partial(_save_partial, partial_path, settings, phase),
                            every=args.checkpoint_every)
        state = None
        if pi + 1 < len(phases):  # the next phase starts from here even if killed right away
            nxt = phases[pi + 1][2]  # its own optimiser kind: an Adam state would load into AdamW without decay
            _save_partial(partial_path, settings, names[pi + 1], 0, model,
                          make_optimizer(nxt.optimizer, model.parameters(), nxt.lr))
    return model


def train_command(args, log) -> Path:
    """One model for one regime on all the given data (no cross-validation). Progress is saved every
    --checkpoint-every iterations to OUT.partial (atomically); rerunning the command continues from it."""
    preset = load_preset(args.preset, args.patient_pattern)
    device = resolve_device(args.device)
    imagenet = find_imagenet(args.imagenet) if not args.no_imagenet else None
    phases = _train_phases(args, preset, log)
    if imagenet is None:
        log("no local ImageNet VGG11 weights: training from scratch")
    out = Path(args.out)
    partial_path = out.with_name(out.name + ".partial")
    # temporaries of this command's own writes (the model, OUT.partial) that a kill -9 left beside --out;
    # only an hour old and with those suffixes: the folder may hold other runs' files
    sweep_temporaries([out.parent], suffixes=(out.suffix or ".partial", ".partial"), recursive=False, say=log)
    settings = run_settings(args, preset, TRAIN_KEYS, imagenet, device)
    # the bytes too: frames re-rendered or replaced under the same names would mix two trainings
    settings["data_sha256_16"] = samples_digest([s for _, samples, _ in phases for s in samples])
    if _already_trained(out, settings, log):
        return out
    torch.manual_seed(args.seed)
    model = TernausNet11(imagenet=imagenet).to(device)
    state = _resume_state(partial_path, settings, model, log)
    model = _train_phases_from(model, phases, state, partial_path, settings, args, preset, device, log)
    save_model(out, model, size=list(args.size), regime=args.regime, imagenet=model.imagenet,
               classes=[c[1] for c in LABEL_CLASSES], settings=settings)
    partial_path.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- eval

def eval_command(args, log) -> dict:
    """A trained model on real frames, at --resolution or else the size it was trained at; writes a report."""
    preset = load_preset(args.preset, args.patient_pattern)
    device = resolve_device(args.device)
    model, state = load_trained(Path(args.checkpoint))
    if args.size is None and not isinstance(state.get("size"), (list, tuple)):
        raise SegmentError(f"--checkpoint {args.checkpoint}: records no training size (a protocol fold's model, or "
                           "one saved before sizes were recorded); pass --resolution WxH")
    size = tuple(state["size"]) if args.size is None else args.size
    model.to(device)
    reals = real_samples(Path(args.real_images), Path(args.real_masks), preset)
    rows = evaluate(model, reals, preset, size, device)
    name = state.get("regime", "model")
    table = {name: per_patient_median(rows, preset.classes)}
    notes = [] if state.get("imagenet") else ["model trained without ImageNet weights"]
    return write_report(Path(args.out), table, {name: rows}, preset, sorted({s.patient for s in reals}), notes,
                        model_for_overlay=model, reals=reals, size=size, device=device)
