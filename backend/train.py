"""Train the render -> real translator (asymmetric MUNIT with encoder noise and MS-SSIM structure loss).

    python -m backend.train --config configs/default.yaml --renders data/A --real FRAMES_DIR \\
        --out runs/NAME [--iterations N] [--resume] [--set KEY=VALUE ...]
    torchrun --nproc-per-node=K -m backend.train ...        (several GPUs or machines)

Any config key can be overridden with --set, dotted for sections (--set gen.style_dim=4). A run
whose output folder holds checkpoints resumes from the newest one; Ctrl-C or SIGTERM writes a
checkpoint and exits cleanly. TensorBoard logs go to OUT/tb, a JSON-lines log to OUT/log.jsonl,
image grids to OUT/images, checkpoints to OUT/checkpoints.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import ConfigError, load_config
from .data import DataError, DomainImages, check_images, make_loader, real_images, render_images
from .devices import DeviceError, resolve_device
from .trainer import Trainer, TrainingDiverged

# Keys that may change when a run is resumed; anything else must match the checkpoint's config.
RESUMABLE_CHANGES = {"max_iter", "log_iter", "image_save_iter", "snapshot_save_iter", "keep_last", "keep_every",
                     "num_workers", "compile", "nan_patience"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "default.yaml",
                   help="YAML config with MUNIT's key names (default: configs/default.yaml)")
    p.add_argument("--renders", required=True, type=Path, help="rendered data set (domain A), read through its index")
    p.add_argument("--real", required=True, nargs="+", help="folders of real frames (recursive) and/or list files")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs, images)")
    p.add_argument("--iterations", type=int, help="train until this iteration (overrides max_iter)")
    p.add_argument("--resume", action="store_true", help="require a checkpoint in --out to continue from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--check-replicas", action="store_true",
                   help="at the end, verify that all DDP replicas hold identical weights")
    return p


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b and f"{prefix}{k}" not in RESUMABLE_CHANGES:
            diffs.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return diffs


class Stopper:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop after the current iteration."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _image_grid(trainer: Trainer, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """Rows: A | A->B random style | A->B real style | A recon || B | B->A | B recon."""
    from torchvision.utils import make_grid

    g_a, g_b = trainer.gen_a, trainer.gen_b
    for m in (g_a, g_b):
        m.eval()
    with torch.no_grad():
        c_a = g_a(x_a, mode="encode", noise=True)
        c_b, s_b = g_b(x_b, mode="encode", noise=True)
        s_rand = torch.randn_like(s_b)
        rows = [x_a, g_b(content=c_a, style=s_rand, mode="decode"), g_b(content=c_a, style=s_b, mode="decode"),
                g_a(content=c_a, mode="decode"), x_b, g_a(content=c_b, mode="decode"),
                g_b(content=c_b, style=s_b, mode="decode")]
    for m in (g_a, g_b):
        m.train()
    n = x_a.shape[0]
    grid = make_grid(torch.cat([r.float().cpu() for r in rows]), nrow=n * 4 if n == 1 else n, normalize=True,
                     value_range=(-1, 1))
    return grid


def train(args) -> int:
    device = resolve_device(args.device)  # before the process group: a missing GPU is one clear line
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    lead = rank == 0
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if lead else (lambda m: None)

    overrides = list(args.set) + ([f"max_iter={args.iterations}"] if args.iterations else [])
    cfg = load_config(args.config, overrides)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    out: Path = args.out
    ckpt_dir = out / "checkpoints"
    resume_from = ckpt.latest(ckpt_dir)
    if args.resume and resume_from is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
    state = None
    if resume_from is not None:
        state = ckpt.load(resume_from, map_location=device)
        diffs = _config_diff(state["config"], cfg.to_dict())
        if diffs:
            raise ConfigError(f"{resume_from} was trained with another config ({'; '.join(diffs)}); "
                              f"use a new --out or the same settings")

    report = out / "bad_images.jsonl" if lead else None
    if report is not None and report.exists():
        report.unlink()
    renders = check_images(render_images(args.renders), cfg.crop_image_height, cfg.crop_image_width, report,
                           "render")
    reals = check_images(real_images(args.real), cfg.crop_image_height, cfg.crop_image_width, report, "real")
    if report is not None and report.exists():
        say(f"skipped {sum(1 for _ in open(report))} unusable images (listed in {report})")

    torch.manual_seed(cfg.seed + rank)
    wrap = None
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # No buffer sync in forward (each network runs several times a step); torch 2.14 renamed the switch.
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else {"broadcast_buffers": False})
        wrap = lambda m: DDP(m, device_ids=ids, **no_sync)  # noqa: E731
    trainer = Trainer(cfg, device, wrap)
    start = 0
    if state is not None:
        trainer.load_state_dict(state)
        ckpt.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        start = int(state["iteration"])
        say(f"resuming {resume_from} at iteration {start}")
    if start >= cfg.max_iter:
        say(f"already at iteration {start} >= max_iter {cfg.max_iter}: nothing to do")
        return 0

    pin = device.type == "cuda"
    ds_a = DomainImages(renders, "render", cfg.crop_image_height, cfg.crop_image_width, cfg.aug, cfg.seed)
    ds_b = DomainImages(reals, "real", cfg.crop_image_height, cfg.crop_image_width, cfg.aug, cfg.seed)
    loader_a = make_loader(ds_a, start, cfg.max_iter, cfg.batch_size, rank, world, cfg.num_workers, pin)
    loader_b = make_loader(ds_b, start, cfg.max_iter, cfg.batch_size, rank, world, cfg.num_workers, pin)
    say(f"{len(renders)} renders, {len(reals)} real frames; {cfg.crop_image_height}x{cfg.crop_image_width} crops, "
        f"batch {cfg.batch_size} x {world} process(es) on {device}; iterations {start} -> {cfg.max_iter}")

    writer = log_file = bar = None
    if lead:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict(), sort_keys=False))
        writer = SummaryWriter(str(out / "tb"), purge_step=start)
        log_file = open(out / "log.jsonl", "a")
        bar = tqdm(total=cfg.max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True,
                   disable=None, file=sys.stderr)

    def save(iteration: int) -> None:
        rng = ckpt.rng_state()
        if distributed:  # every rank's RNG, so each replica resumes its own noise stream
            gathered = [None] * world
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        if lead:
            payload = {"iteration": iteration, "config": cfg.to_dict(), "rng": rng_all, **trainer.state_dict()}
            path = ckpt.save(ckpt_dir, iteration, payload)
            ckpt.prune(ckpt_dir, cfg.keep_last, cfg.keep_every)
            say(f"checkpoint {path}")

    stopper = Stopper()
    display = None
    t_last, it_last = time.perf_counter(), start
    data_time = 0.0
    iteration = start
    try:
        t_data = time.perf_counter()
        for iteration, (x_a, x_b) in enumerate(zip(loader_a, loader_b), start=start + 1):
            x_a = x_a.to(device, non_blocking=True)
            x_b = x_b.to(device, non_blocking=True)
            data_time += time.perf_counter() - t_data
            if display is None:
                display = (x_a[:4].clone(), x_b[:4].clone())
            log = trainer.step(x_a, x_b)
            if bar is not None:
                bar.update(1)
            if lead and (iteration % cfg.log_iter == 0 or iteration == cfg.max_iter):
                now = time.perf_counter()
                log["it_per_s"] = (iteration - it_last) / (now - t_last)
                log["data_s_per_it"] = data_time / max(iteration - it_last, 1)
                t_last, it_last, data_time = now, iteration, 0.0
                if device.type == "cuda":
                    log["gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                for k, v in log.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        writer.add_scalar(k, v, iteration)
                log_file.write(json.dumps({"iteration": iteration, **log}) + "\n")
                log_file.flush()
                bar.set_postfix(gen=f"{log['gen/total']:.3f}", dis=f"{log['dis/total']:.3f}")
            if lead and iteration % cfg.image_save_iter == 0:
                grid = _image_grid(trainer, *display)
                writer.add_image("translations", grid, iteration)
                from torchvision.utils import save_image

                (out / "images").mkdir(exist_ok=True)
                save_image(grid, out / "images" / f"iter_{iteration:08d}.png")
            stop = stopper.requested
            if distributed:
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                dist.all_reduce(flag)
                stop = flag.item() > 0
            if stop:
                save(iteration)
                say(f"stopped at iteration {iteration}; run the same command to resume")
                return 0
            if iteration % cfg.snapshot_save_iter == 0 or iteration == cfg.max_iter:
                save(iteration)
            t_data = time.perf_counter()
    finally:
        stopper.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
            log_file.close()
    if args.check_replicas and distributed:
        check_replicas(trainer, say)
    say(f"done: iteration {iteration}, {trainer.skipped_total} steps skipped for non-finite values")
    return 0


def check_replicas(trainer: Trainer, say) -> None:
    for name, net in trainer.nets.items():
        flat = torch.cat([p.detach().float().flatten() for p in net.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        worst = max((g - gathered[0]).abs().max().item() for g in gathered)
        if worst != 0.0:
            raise RuntimeError(f"replicas of {name} differ by up to {worst:g}")
    say(f"replicas identical across {dist.get_world_size()} processes")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = train(args)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another is still in a collective
        return code
    except (ConfigError, DataError, DeviceError) as e:
        print(f"python -m backend.train: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"python -m backend.train: error: {e}", file=sys.stderr)
        return 3
    finally:
        if dist.is_available() and dist.is_initialized():
            # The DDP wrappers hold the process group; left to the interpreter's shutdown, gloo's threads
            # were torn down after Python and aborted the process (SIGABRT, about 1 run in 25): free them now.
            gc.collect()
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
