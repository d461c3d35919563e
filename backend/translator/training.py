"""The translator's training run: data, resume, the iteration loop, logs, checkpoints, DDP.

`train(options)` is what `python -m backend.train` runs. A run folder holds checkpoints/ (one
atomic file per snapshot; a run resumes exactly from the newest that loads), tb/ (TensorBoard), log.jsonl,
images/ and config.yaml. Under torchrun each process trains its own replica (DDP); rank 0 writes.
"""
from __future__ import annotations

import inspect
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from blender_addon.core.files import atomic_write_bytes, check_output_dir
from blender_addon.core.progress import Reporter
from blender_addon.core.settings import files_digest, lines_digest, refuse_other_settings, settings_conflicts

from ..common.cli import log
from ..common.devices import resolve_device
from ..common.images import DataError, check_images, real_images
from ..common.signals import Stopper
from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, load_config, saved_config
from .data import DomainImages, make_loader, render_images
from .models import make_trainer
from .trainer import Trainer

# Keys that may change when a run is resumed; anything else must match the checkpoint's config.
# cpu_amp may change: a run moved between machines resolves `auto` anew (master weights stay float32);
# gen.upsample too: the same function and weights computed another way (float rounding only).
RESUMABLE_CHANGES = {"max_iter", "log_iter", "image_save_iter", "snapshot_save_iter", "keep_last", "keep_every",
                     "num_workers", "compile", "cuda_graphs", "nan_patience", "cpu_amp", "gen.upsample"}


@dataclass
class TrainOptions:
    config: Path | None
    renders: Path
    real: list[str]
    out: Path
    iterations: int | None = None
    resume: bool = False
    set: list[str] = field(default_factory=list)
    device: str = "auto"
    check_replicas: bool = False


@dataclass
class Process:
    """This process's place in the job (one process without torchrun)."""
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.lead:
            print(message, file=sys.stderr, flush=True)


def start_process(device_name: str, world: int) -> Process:
    device = resolve_device(device_name)  # before the process group: a missing GPU is one clear line
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        proc = Process(device, dist.get_rank(), dist.get_world_size())
    else:
        proc = Process(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return proc


def resume_state(ckpt_dir: Path, cfg: TrainConfig, device, required: bool, say=log,
                 lead: bool = True, world: int = 1) -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads (newer unloadable ones are set aside with a warning), refused
    when it was trained with another config or another number of processes. The lead process first
    removes temporaries of checkpoint writes that a kill interrupted."""
    if lead:
        ckpt.remove_temporaries(ckpt_dir, say)
    had_any = bool(ckpt.checkpoints(ckpt_dir))
    state, path = ckpt.load_newest(ckpt_dir, map_location=device, say=say, rename=lead)
    if path is None:
        if required:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}" + (" loads" if had_any else ""))
        if had_any:
            say(f"warning: no checkpoint in {ckpt_dir} loads: starting afresh at iteration 0")
        return None, None
    # a key added since the checkpoint was written had, in effect, its default value or LATER_KEYS' then
    try:
        saved = saved_config(state["config"]).to_dict()
    except ConfigError as e:
        raise ConfigError(f"{path}: its config is invalid here ({e})") from None
    conflicts = settings_conflicts(saved, cfg.to_dict(), RESUMABLE_CHANGES, "in the checkpoint", "now")
    refuse_other_settings(conflicts, str(path), "use a new --out or the same settings")
    # Each rank resumes its own RNG stream and sample numbers (iteration * world + rank), and the effective
    # batch is batch_size x world: another world size would not continue the same training.
    trained = ckpt.world_size(state)
    if trained != world:
        raise ConfigError(f"{path} was trained with {trained} process(es), this run has {world}: resume with "
                          f"torchrun --nproc-per-node={trained} (in all {trained}) or use a new --out")
    return state, path


def training_images(opts: TrainOptions, cfg: TrainConfig, proc: Process) -> tuple[list[Path], list[Path]]:
    """Renders and real frames, every file decoded once; unusable ones are listed in bad_images.jsonl."""
    report = opts.out / "bad_images.jsonl" if proc.lead else None
    if report is not None and report.exists():
        report.unlink()
    h, w = cfg.crop_image_height, cfg.crop_image_width
    try:
        renders = check_images(render_images(opts.renders), h, w, report, "render")
        reals = check_images(real_images(opts.real), h, w, report, "real")
    except DataError as e:
        if report is not None and report.exists():  # the refusal names the first; the report has them all
            raise DataError(f"{e}; every unusable image is listed in {report}") from None
        raise
    if report is not None and report.exists():
        proc.say(f"skipped {sum(1 for _ in open(report))} unusable images (listed in {report})")
    return renders, reals


def ddp_wrapper(device: torch.device):
    ids = [device.index] if device.type == "cuda" else None
    # No buffer sync in forward (each network runs several times a step); torch 2.14 renamed the switch.
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return lambda m: DistributedDataParallel(m, device_ids=ids, **no_sync)


def image_grid(trainer: Trainer, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """The trainer's display rows (MUNIT: A | A->B random style | A->B real style | A recon || B | B->A |
    B recon; cut: A | A->B | A->B, other noise || B | B->B), one image per row and sample."""
    nets = list(trainer.nets.values())
    for m in nets:
        m.eval()
    with torch.no_grad():
        rows = trainer.display_rows(x_a, x_b)
    for m in nets:
        m.train()
    n = x_a.shape[0]
    return make_grid(torch.cat([r.float().cpu() for r in rows]), nrow=n * -(-len(rows) // 2) if n == 1 else n,
                     normalize=True, value_range=(-1, 1))


def _log_from(path: Path, start: int) -> Path:
    """log.jsonl as a run resumed at `start` continues it: lines of later iterations (written after the
    checkpoint it resumes from, by a run killed before the next) and a torn last line go, as TensorBoard's
    purge_step drops its events past `start`."""
    if path.is_file():
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                if int(json.loads(line)["iteration"]) <= start:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass
        atomic_write_bytes(path, "".join(kept).encode())
    return path


class RunLog:
    """What the lead process writes while training: TensorBoard, log.jsonl, image grids, the tqdm bar
    (on a terminal) and progress lines (core/progress.py, for the Blender panel and log files)."""

    def __init__(self, out: Path, cfg: TrainConfig, start: int, device: torch.device):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        self.out, self.cfg, self.device = out, cfg, device
        # events of iterations after the checkpoint go (a kill lost them); those up to it stay, as in log.jsonl
        self.writer = SummaryWriter(str(out / "tb"), purge_step=start + 1)
        self.file = open(_log_from(out / "log.jsonl", start), "a")
        self.bar = tqdm(total=cfg.max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True,
                        disable=None, file=sys.stderr)
        say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        self.progress = Reporter("train", cfg.max_iter, "it", say, every=10.0, done=start)
        self.t_last, self.it_last, self.data_time = time.perf_counter(), start, 0.0

    def step(self, iteration: int, log: dict) -> None:
        self.bar.update(1)
        if self.bar.disable:  # no terminal: plain progress lines instead of the bar
            self.progress.update(iteration)
        if iteration % self.cfg.log_iter == 0 or iteration == self.cfg.max_iter:
            now = time.perf_counter()
            log["it_per_s"] = (iteration - self.it_last) / (now - self.t_last)
            log["data_s_per_it"] = self.data_time / max(iteration - self.it_last, 1)
            self.t_last, self.it_last, self.data_time = now, iteration, 0.0
            if self.device.type == "cuda":
                log["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
            for k, v in log.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, iteration)
            self.file.write(json.dumps({"iteration": iteration, **log}) + "\n")
            self.file.flush()
            self.bar.set_postfix(gen=f"{log['gen/total']:.3f}", dis=f"{log['dis/total']:.3f}")

    def images(self, iteration: int, grid: torch.Tensor) -> None:
        self.writer.add_image("translations", grid, iteration)
        (self.out / "images").mkdir(exist_ok=True)
        buf = io.BytesIO()
        save_image(grid, buf, format="png")
        atomic_write_bytes(self.out / "images" / f"iter_{iteration:08d}.png", buf.getvalue())

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.file.close()


def data_record(renders: list[Path], reals: list[Path]) -> dict:
    """Which images a run trains on: counts, a hash of their resolved paths in order, and one of their
    contents. The sample order is a function of the lists, and what is learnt of the bytes, so a run
    resumed on other images, or on frames replaced under the same names, would not continue the same
    training."""
    def digest(paths):
        return lines_digest(str(Path(p).resolve()) for p in paths)
    return {"renders": len(renders), "renders_sha256_16": digest(renders),
            "renders_content_sha256_16": files_digest(renders, DataError),
            "real": len(reals), "real_sha256_16": digest(reals), "real_content_sha256_16": files_digest(reals, DataError)}


def check_same_data(state: dict, data: dict, path: Path | None) -> None:
    """Refuse to resume on other images. Checkpoints from before the record resume as they did, and those
    from before the content hashes without that check (they compare what they recorded)."""
    saved = state.get("data")
    if saved is None:
        return
    conflicts = settings_conflicts(saved, {k: v for k, v in data.items() if k in saved}, (), "in the checkpoint",
                                   "now")
    refuse_other_settings(conflicts, f"{path} (its training images: renders and real frames)",
                          "resume with the same --renders and --real, or use a new --out")


def save_checkpoint(proc: Process, trainer: Trainer, cfg: TrainConfig, ckpt_dir: Path, iteration: int,
                    data: dict | None = None) -> None:
    rng = ckpt.rng_state()
    if proc.distributed:  # every rank's RNG, so each replica resumes its own noise stream
        rng_all = [None] * proc.world
        dist.all_gather_object(rng_all, rng)
    else:
        rng_all = [rng]
    if proc.lead:
        payload = {"iteration": iteration, "config": cfg.to_dict(), "world": proc.world, "rng": rng_all,
                   **({"data": data} if data is not None else {}), **trainer.state_dict()}
        path = ckpt.save(ckpt_dir, iteration, payload)
        ckpt.prune(ckpt_dir, cfg.keep_last, cfg.keep_every)
        proc.say(f"checkpoint {path}")


def stop_requested(proc: Process, stopper: Stopper) -> bool:
    """A signal on any rank stops every rank at the same iteration."""
    if not proc.distributed:
        return stopper.requested
    flag = torch.tensor([1.0 if stopper.requested else 0.0], device=proc.device)
    dist.all_reduce(flag)
    return flag.item() > 0


def train(opts: TrainOptions, world: int = 1) -> int:
    if opts.iterations is not None and opts.iterations < 1:
        raise ConfigError(f"--iterations {opts.iterations}: must be >= 1")
    check_output_dir(opts.out, "--out")
    proc = start_process(opts.device, world)
    overrides = list(opts.set) + ([f"max_iter={opts.iterations}"] if opts.iterations is not None else [])
    cfg = load_config(opts.config, overrides)
    ckpt_dir = opts.out / "checkpoints"
    state, resume_from = resume_state(ckpt_dir, cfg, proc.device, opts.resume, proc.say, proc.lead, proc.world)
    renders, reals = training_images(opts, cfg, proc)
    data = data_record(renders, reals)
    if state is not None:
        check_same_data(state, data, resume_from)
    torch.manual_seed(cfg.seed + proc.rank)
    trainer = make_trainer(cfg, proc.device, ddp_wrapper(proc.device) if proc.distributed else None)
    start = 0
    if state is not None:
        trainer.load_state_dict(state)
        ckpt.set_rng_state(state["rng"][proc.rank])  # resume_state checked the world size
        start = int(state["iteration"])
        proc.say(f"resuming {resume_from} at iteration {start}")
    if start >= cfg.max_iter:
        proc.say(f"already at iteration {start} >= max_iter {cfg.max_iter}: nothing to do")
        return 0
    loaders = [make_loader(DomainImages(paths, domain, cfg.crop_image_height, cfg.crop_image_width, cfg.aug,
                                        cfg.seed), start, cfg.max_iter, cfg.batch_size, proc.rank, proc.world,
                           cfg.num_workers, proc.device.type == "cuda")
               for paths, domain in ((renders, "render"), (reals, "real"))]
    proc.say(f"{len(renders)} renders, {len(reals)} real frames; {cfg.crop_image_height}x{cfg.crop_image_width} "
             f"crops, batch {cfg.batch_size} x {proc.world} process(es) on {proc.device}, {trainer.precision}; "
             f"iterations {start} -> {cfg.max_iter}")
    if trainer.graph_note:
        proc.say(trainer.graph_note)
    iteration = run_loop(proc, trainer, cfg, loaders, start, ckpt_dir,
                         RunLog(opts.out, cfg, start, proc.device) if proc.lead else None, data)
    if iteration is None:
        return 0
    if opts.check_replicas and proc.distributed:
        check_replicas(trainer, proc.say)
    proc.say(f"done: iteration {iteration}, {trainer.skipped_total} steps skipped for non-finite values")
    return 0


def run_loop(proc: Process, trainer: Trainer, cfg: TrainConfig, loaders, start: int, ckpt_dir: Path,
             run_log: RunLog | None, data: dict | None = None) -> int | None:
    """Iterations start+1 .. max_iter; returns the last one, or None when stopped by a signal."""
    stopper = Stopper()
    # The grids show the first batch a fresh run trains on (samples 0.. of each domain, at most 4), the same
    # images in a resumed run; drawn by sample number, so no loader and no RNG state is touched.
    display = None if run_log is None else tuple(
        torch.stack([ld.dataset[i] for i in range(min(4, cfg.batch_size))]).to(proc.device) for ld in loaders)
    iteration = start
    try:
        t_data = time.perf_counter()
        for iteration, (x_a, x_b) in enumerate(zip(*loaders), start=start + 1):
            x_a = x_a.to(proc.device, non_blocking=True)
            x_b = x_b.to(proc.device, non_blocking=True)
            if run_log is not None:
                run_log.data_time += time.perf_counter() - t_data
            log = trainer.step(x_a, x_b)
            if run_log is not None:
                run_log.step(iteration, log)
                if iteration % cfg.image_save_iter == 0:
                    run_log.images(iteration, image_grid(trainer, *display))
            if stop_requested(proc, stopper):
                save_checkpoint(proc, trainer, cfg, ckpt_dir, iteration, data)
                proc.say(f"stopped at iteration {iteration}; run the same command to resume")
                return None
            if iteration % cfg.snapshot_save_iter == 0 or iteration == cfg.max_iter:
                save_checkpoint(proc, trainer, cfg, ckpt_dir, iteration, data)
            t_data = time.perf_counter()
    finally:
        stopper.restore()
        if run_log is not None:
            run_log.close()
    return iteration


def check_replicas(trainer: Trainer, say) -> None:
    for name, net in trainer.nets.items():
        flat = torch.cat([p.detach().float().flatten() for p in net.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        worst = max((g - gathered[0]).abs().max().item() for g in gathered)
        if worst != 0.0:
            raise RuntimeError(f"replicas of {name} differ by up to {worst:g}")
    say(f"replicas identical across {dist.get_world_size()} processes")
