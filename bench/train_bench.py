"""Translator training benchmark at the paper's configuration (batch 1).

    python bench/train_bench.py                              # CPU: 256x256 and 256x448 crops
    python bench/train_bench.py --device cuda --crops 256x256 --amp none bf16 --compile off on \
        --channels-last off on --reference /path/to/MUNIT    # side by side with NVlabs/MUNIT
    python bench/train_bench.py --config configs/cpu.yaml --crops 128x224       # any config's networks
    python bench/train_bench.py --config configs/cpu.yaml --crops 128x224 --models munit cut   # both models
    python bench/train_bench.py --crops 256x256 --dis-fakes reuse fresh --reference /path/to/MUNIT --rounds 2 --flops
    python bench/train_bench.py --crops 256x256 --cpu-amp none bf16 --reference /path/to/MUNIT   # CPU fp32 and bf16

Prints, per crop size and setting, seconds and iterations per second of one training step
(discriminator update + generator update, timed apart), the data-loading time of one iteration
(decode + augment of one render and one real frame; training does this in worker processes,
alongside the step), and peak memory (GPU: max allocated; CPU: peak resident set of the process).

--reference PATH times the NVlabs/MUNIT trainer from a checkout at PATH (run from there, never
copied into this project: its licence forbids it) at the same widths, crop and batch, in fp32 (it
has no mixed precision), in this process; every row then shows its speed relative to it.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.common.devices import resolve_device  # noqa: E402
from backend.common.precision import CPU_AMPS, bf16_summary  # noqa: E402
from backend.translator.config import MODELS, ConfigError, TrainConfig, load_config  # noqa: E402
from backend.translator.data import DomainImages  # noqa: E402
from backend.translator.models import make_trainer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_time(cfg: TrainConfig, real: list[Path], renders: list[Path], n: int = 10) -> float:
    if not real or not renders:
        return float("nan")
    a = DomainImages(renders, "render", cfg.crop_image_height, cfg.crop_image_width, cfg.aug, 0)
    b = DomainImages(real, "real", cfg.crop_image_height, cfg.crop_image_width, cfg.aug, 0)
    t = time.perf_counter()
    for i in range(n):
        a[i], b[i]
    return (time.perf_counter() - t) / n


def time_steps(dis_step, gen_step, x_a, x_b, device, iters: int, warmup: int, gen_first: bool = False) -> dict:
    """Median seconds of each update. gen_first: our default order (dis_fakes reuse), where the
    discriminator update takes the generator update's translations."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"dis": [], "gen": []}
    order = (("gen", gen_step), ("dis", dis_step)) if gen_first else (("dis", dis_step), ("gen", gen_step))
    for i in range(warmup + iters):
        for name, fn in order:
            sync(device)
            t0 = time.perf_counter()
            fn(x_a, x_b)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return {"dis_s": float(np.median(times["dis"])), "gen_s": float(np.median(times["gen"])), "peak_gib": peak}


def inputs(cfg: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x_a = torch.rand(cfg.batch_size, 3, cfg.crop_image_height, cfg.crop_image_width, device=device) * 2 - 1
    return x_a, torch.rand_like(x_a) * 2 - 1


def count_flops(step, x_a, x_b) -> float:
    """GFLOP of one call of step(x_a, x_b), forward and backward, as torch's FlopCounterMode counts them
    (matrix products and convolutions; the arithmetic that bounds a step on the CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(x_a, x_b)
    return counter.get_total_flops() / 1e9


def bench(cfg: TrainConfig, device: torch.device, iters: int, warmup: int, flops: bool = False) -> dict:
    x_a, x_b = inputs(cfg, device)
    trainer = make_trainer(cfg, device)
    for m in trainer.nets.values():
        m.train()
    reuse = cfg.dis_fakes == "reuse"  # as Trainer.step: the discriminator learns from the generator's translations
    r = time_steps(lambda a, b: trainer.dis_update(a, b, fakes=trainer.fakes if reuse else None),
                   trainer.gen_update, x_a, x_b, device, iters, warmup, gen_first=reuse)
    if trainer.graphs:  # captured, or why not (the updates then ran eagerly)
        r["graphs_state"] = {k: g.failed or ("captured" if g.graph is not None else "not captured")
                             for k, g in trainer.graphs.items()}
    elif trainer.graph_note:
        r["graphs_state"] = trainer.graph_note
    if flops:
        r["gflop"] = round(count_flops(trainer.step, x_a, x_b), 1)
    return {**r, "precision": trainer.precision.split(" (")[0]}


def reference_hyperparameters(cfg: TrainConfig) -> dict:
    """The NVlabs/MUNIT config dict for our widths and losses (no VGG loss, as in the method)."""
    g, d = cfg.gen, cfg.dis
    return {"lr": cfg.lr, "beta1": cfg.beta1, "beta2": cfg.beta2, "weight_decay": cfg.weight_decay,
            "init": cfg.init, "lr_policy": cfg.lr_policy, "step_size": cfg.step_size, "gamma": cfg.gamma,
            "gan_w": cfg.gan_w, "recon_x_w": cfg.recon_x_w, "recon_s_w": cfg.recon_s_w, "recon_c_w": cfg.recon_c_w,
            "recon_x_cyc_w": cfg.recon_x_cyc_w, "vgg_w": 0, "input_dim_a": 3, "input_dim_b": 3, "display_size": 1,
            "gen": {"dim": g.dim, "mlp_dim": g.mlp_dim, "style_dim": g.style_dim, "activ": g.activ,
                    "n_downsample": g.n_downsample, "n_res": g.n_res, "pad_type": g.pad_type},
            "dis": {"dim": d.dim, "norm": d.norm, "activ": d.activ, "n_layer": d.n_layer, "gan_type": d.gan_type,
                    "num_scales": d.num_scales, "pad_type": d.pad_type}}


def reference_trainer(path: Path, cfg: TrainConfig, device: torch.device):
    """NVlabs/MUNIT's MUNIT_Trainer from its checkout, imported as its own train.py does."""
    import types

    if not (path / "trainer.py").is_file():
        raise SystemExit(f"--reference {path}: no trainer.py there (expected an NVlabs/MUNIT checkout)")
    # its utils.py imports torch.utils.serialization (removed from torch in 1.0) for a VGG loader we do not use
    sys.modules.setdefault("torch.utils.serialization", types.SimpleNamespace(load_lua=None))
    if device.type != "cuda":  # it calls .cuda() for its noise tensors; on the CPU let those stay put
        torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(path))
    from trainer import MUNIT_Trainer  # noqa: E402  (the reference's module, from its checkout)

    hp = reference_hyperparameters(cfg)
    torch.manual_seed(0)
    trainer = MUNIT_Trainer(hp).to(device)
    trainer.train()
    return trainer, hp


def bench_reference(path: Path, cfg: TrainConfig, device: torch.device, iters: int, warmup: int,
                    flops: bool = False) -> dict:
    x_a, x_b = inputs(cfg, device)
    trainer, hp = reference_trainer(path, cfg, device)

    def dis(a, b):
        trainer.dis_update(a, b, hp)

    def gen(a, b):
        trainer.gen_update(a, b, hp)
        trainer.update_learning_rate()

    r = time_steps(dis, gen, x_a, x_b, device, iters, warmup)
    if flops:
        r["gflop"] = round(count_flops(lambda a, b: (dis(a, b), gen(a, b)), x_a, x_b), 1)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", type=Path, help="YAML config for the networks (default: the paper's)")
    p.add_argument("--crops", nargs="+", default=["256x256", "256x448"], help="HxW")
    p.add_argument("--amp", nargs="+", default=["bf16"], help="bf16, fp16, none (CUDA only)")
    p.add_argument("--cpu-amp", nargs="+", choices=list(CPU_AMPS),
                   help="the config's cpu_amp, each timed side by side (CPU): none = float32, bf16 = bf16 autocast, "
                        "auto = bf16 where the CPU has amx_bf16 or avx512_bf16 (default: the config's)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--channels-last", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--settings", nargs="+", metavar="AMP[,compile][,channels_last][,graphs]",
                   help="explicit settings instead of every combination of --amp, --compile and --channels-last, "
                        "e.g. none bf16 bf16,channels_last bf16,compile bf16,graphs (graphs: cuda_graphs, CUDA)")
    p.add_argument("--models", nargs="+", default=["munit"], choices=MODELS,
                   help="the config's `model`: munit (the method) and/or cut (one-sided), timed at the same widths")
    p.add_argument("--dis-fakes", nargs="+", default=["reuse"], choices=["reuse", "fresh"],
                   help="the config's dis_fakes: reuse (ours: the discriminator learns from the generator update's "
                        "translations) and/or fresh (NVlabs/MUNIT: made anew), timed side by side")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every row")
    p.add_argument("--reference", type=Path, help="an NVlabs/MUNIT checkout to time side by side (never committed)")
    p.add_argument("--flops", action="store_true",
                   help="count the arithmetic of one more step per row (GFLOP, forward + backward; FlopCounterMode)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N steps of the last setting (torch.profiler; top operators)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every setting and model this often, alternating")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--renders", type=Path, help="a rendered data set, for the data-loading time")
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "real" / "endoscapes" / "images")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    try:  # bad --config, --set or --crops: one line naming them, before anything is timed
        load_config(args.config, args.set)
        for crop in args.crops:
            h, w = (int(v) for v in crop.lower().split("x"))
    except ConfigError as e:
        p.error(str(e))
    except ValueError:
        p.error(f"--crops {crop!r}: expected HxW, e.g. 256x256")
    for name in ("rounds", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: must be >= 1")
    device = resolve_device(args.device)
    real = sorted(args.real.glob("*.jpg"))[:20] + sorted(args.real.glob("*.png"))[:20] if args.real.is_dir() else []
    renders = []
    if args.renders:
        from backend.translator.data import render_images

        renders = render_images(args.renders)[:20]
    else:
        renders = sorted((ROOT / "data" / "A").glob("*/image/*.png"))[:20]
    rows = []
    if device.type == "cuda":  # both trainers with cuDNN autotuning: NVlabs/MUNIT's train.py turns it on too
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    if device.type == "cpu":
        print(f"CPU bf16 features: {bf16_summary()}", flush=True)

    def emit(row: dict, ref_s: float | None) -> None:
        if ref_s:
            row["speed_vs_reference"] = round(ref_s / row["step_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    cpu_amps = (args.cpu_amp if device.type == "cpu" else None) or [None]  # None: the config's cpu_amp
    settings = [(a, c, cl, "off") for a in args.amp for c in args.compile for cl in args.channels_last]
    if args.settings:
        settings = []
        for text in args.settings:
            amp, *flags = text.split(",")
            unknown = set(flags) - {"compile", "channels_last", "graphs"}
            if amp not in ("none", "bf16", "fp16") or unknown:
                p.error(f"--settings {text!r}: AMP (none, bf16, fp16), then optional ,compile ,channels_last ,graphs")
            settings.append(tuple([amp] + ["on" if f in flags else "off" for f in ("compile", "channels_last", "graphs")]))
    for crop in args.crops:
        h, w = (int(v) for v in crop.lower().split("x"))
        base = load_config(args.config, args.set)
        base.crop_image_height, base.crop_image_width = h, w
        base.validate()
        data_s = data_time(base, real, renders) if renders else float("nan")
        ref_s = None
        # rounds alternate the reference and our settings, so a load change on a shared machine hits all alike;
        # each of our rows is compared with the reference's time of the same round
        for rnd, model, fakes, (amp, comp, cl, graphs), cpu_amp in [(r, m, f, s, c) for r in range(args.rounds) for s in settings
                                                            for c in cpu_amps for m in args.models
                                                            for f in args.dis_fakes]:
            if args.reference and (model, fakes, (amp, comp, cl, graphs), cpu_amp) == (
                    args.models[0], args.dis_fakes[0], settings[0], cpu_amps[0]):
                r = bench_reference(args.reference, base, device, args.iters, args.warmup, args.flops and rnd == 0)
                ref_s = r["dis_s"] + r["gen_s"]
                emit({"crop": crop, "round": rnd, "trainer": "NVlabs/MUNIT", "amp": "none", "compile": "off",
                      "channels_last": "off", "graphs": "off", "step_s": round(ref_s, 4), "it_per_s": round(1 / ref_s, 2),
                      "dis_s": round(r["dis_s"], 4), "gen_s": round(r["gen_s"], 4), "data_s": round(data_s, 4),
                      "peak_gib": round(r["peak_gib"], 2), **({"gflop": r["gflop"]} if "gflop" in r else {})}, None)
            cfg = load_config(args.config, args.set)
            cfg.model, cfg.dis_fakes = model, fakes
            cfg.crop_image_height, cfg.crop_image_width = h, w
            cfg.amp, cfg.compile, cfg.channels_last, cfg.cuda_graphs = amp, comp == "on", cl == "on", graphs == "on"
            if cpu_amp is not None:
                cfg.cpu_amp = cpu_amp
            cfg.validate()
            try:
                r = bench(cfg, device, args.iters, args.warmup, args.flops and rnd == 0)
            except Exception as e:  # one failing setting (a compiler error, say) must not hide the others
                print(json.dumps({"crop": crop, "trainer": "ours", "model": model, "amp": amp, "compile": comp,
                                  "channels_last": cl, "graphs": graphs, "error": f"{type(e).__name__}: {e}"[:300]}), flush=True)
                continue
            step = r["dis_s"] + r["gen_s"]
            emit({"crop": crop, "round": rnd, "trainer": "ours", "model": model, "dis_fakes": cfg.dis_fakes,
                  "amp": amp if device.type == "cuda" else f"cpu_amp {cfg.cpu_amp}",
                  "compile": comp, "channels_last": cl, "graphs": graphs, "step_s": round(step, 4),
                  "it_per_s": round(1 / step, 2), "dis_s": round(r["dis_s"], 4),
                  "gen_s": round(r["gen_s"], 4), "data_s": round(data_s, 4),
                  "peak_gib": round(r["peak_gib"], 2), "precision": r["precision"],
                  **({"graphs_state": r["graphs_state"]} if "graphs_state" in r else {}),
                  **({"gflop": r["gflop"]} if "gflop" in r else {})}, ref_s)
    if args.reference:  # over all rounds: the reference's summed step time / ours, per kind of row
        ref_total = sum(r["step_s"] for r in rows if r["trainer"] == "NVlabs/MUNIT")
        kinds = {}
        for r in rows:
            if r["trainer"] == "ours":
                kinds.setdefault((r["crop"], r["model"], r["dis_fakes"], r["amp"], r["compile"], r["channels_last"],
                                  r["graphs"]),
                                 []).append(r["step_s"])
        for kind, steps in kinds.items():
            print(json.dumps({"summary": "speed vs reference over all rounds", "row": list(kind),
                              "speed_vs_reference": round(ref_total / sum(steps), 3), "rounds": len(steps)}))
    if args.profile and settings:
        profile(cfg, device, args.profile)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def profile(cfg: TrainConfig, device: torch.device, steps: int) -> None:
    """Where one training step's time goes: the operators with the most device time and host time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x_a, x_b = inputs(cfg, device)
    trainer = make_trainer(cfg, device)
    for _ in range(3):
        trainer.step(x_a, x_b)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(x_a, x_b)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {steps} steps (model={cfg.model}, amp={cfg.amp}, compile={cfg.compile}, channels_last={cfg.channels_last})")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=45))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=45))


if __name__ == "__main__":
    sys.exit(main())
