"""Write realistic versions of every render next to its labels.

    python -m backend.translate --checkpoint runs/NAME/checkpoints/ckpt_00375000.pt --data data/A \\
        [--styles 5] [--style-from REAL_DIR] [--seed S] [--shard I/N] [--noise on|off]
    torchrun --nproc-per-node=K -m backend.translate ...      (each process takes a disjoint part)

For every frame: its content is encoded once and decoded with K styles in one batch, each style
drawn from N(0, I) or encoded from a real frame picked from --style-from. The whole frame is
translated at label resolution (never cropped or resized), so labels stay pixel-aligned. Outputs:
`<patient>/translation/<frame>_<k>.png` and `<patient>/translation/<frame>.json` (style vectors,
style sources, seeds: enough to re-create any output exactly), written atomically, the JSON last;
then the frame enters `translation_index/*.jsonl`. Re-running skips finished frames.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from blender_addon import png
from blender_addon.dataset import (
    TRANSLATION_FOLDER, DatasetError, atomic_write_bytes, atomic_write_json, parse_shard, read_index,
)

from . import checkpoint as ckpt
from .config import ConfigError, config_from_dict
from .data import DataError, check_images, load_rgb, real_images
from .devices import DeviceError, resolve_device
from .networks import GeneratorA, GeneratorB

INDEX_DIR = "translation_index"
MANIFEST = "translation.json"
FORMAT = 1


class TranslateError(ValueError):
    pass


# ----------------------------------------------------------------------------- model

def load_translator(path: Path, device: torch.device) -> tuple[GeneratorA, GeneratorB, dict]:
    """Both generators of a training checkpoint, checked against the config stored in it."""
    if not path.is_file():
        raise TranslateError(f"--checkpoint {path}: file not found")
    try:
        state = ckpt.load(path, map_location="cpu")
    except Exception as e:  # not a torch file, truncated, or pickled objects
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TranslateError(f"--checkpoint {path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not {"config", "gen_a", "gen_b"} <= set(state):
        raise TranslateError(f"--checkpoint {path}: not a backend.train checkpoint (needs config, gen_a, gen_b)")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:
        raise TranslateError(f"--checkpoint {path}: its config is invalid here ({e})") from None
    gen_a, gen_b = GeneratorA(cfg.gen, cfg.noise_std), GeneratorB(cfg.gen, cfg.noise_std)
    for name, net in (("gen_a", gen_a), ("gen_b", gen_b)):
        try:
            net.load_state_dict(state[name])
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise TranslateError(f"--checkpoint {path}: {name} does not match the configuration stored with it "
                                 f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    for net in (gen_a, gen_b):
        net.to(device).eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return gen_a, gen_b, {"path": str(path.resolve()), "sha256_16": digest, "iteration": int(state["iteration"]),
                          "style_dim": cfg.gen.style_dim, "noise_std": cfg.noise_std,
                          "multiple": 2 ** cfg.gen.n_downsample}


# ----------------------------------------------------------------------------- determinism

def output_seed(seed: int, patient: str, frame: int, k: int) -> int:
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(zlib.crc32(patient.encode()), int(frame), int(k)))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, (h, w)


def _noise_like(x: torch.Tensor, seed: int, std: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(x.shape, generator=g) * std).to(x.device, x.dtype)


def image_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_image(t: torch.Tensor) -> np.ndarray:
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


class Translator:
    """Translate frames with K styles each, deterministically per (seed, patient, frame, k)."""

    def __init__(self, gen_a, gen_b, info: dict, device: torch.device, styles: int, seed: int, noise: bool,
                 style_images: list[Path] | None = None, amp: bool = True, amp_on_cpu: bool = False):
        self.gen_a, self.gen_b, self.info, self.device = gen_a, gen_b, info, device
        self.k, self.seed, self.noise = styles, seed, noise
        self.style_images = style_images or []
        # bf16 on CUDA; amp_on_cpu lets tests run the same casts through CPU autocast
        self.amp = amp and (device.type == "cuda" or (amp_on_cpu and device.type == "cpu"))

    def autocast(self):
        import contextlib

        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def styles_for(self, patient: str, frame: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[dict]]:
        vecs, records = [], []
        for k in range(self.k):
            s = output_seed(self.seed, patient, frame, k)
            rng = np.random.default_rng(s)
            rec = {"k": k, "seed": s}
            if self.style_images:
                src = self.style_images[int(rng.integers(len(self.style_images)))]
                img = load_rgb(src).resize((size[1], size[0]))
                x = image_tensor(np.asarray(img))[None].to(self.device)
                if self.noise:
                    x = x + _noise_like(x, s + 1, self.info["noise_std"])
                with torch.no_grad(), self.autocast():
                    v = self.gen_b(x, mode="style", noise=False)[0].float()
                rec["source"] = str(src)
            else:
                v = torch.from_numpy(rng.standard_normal(self.info["style_dim"]).astype(np.float32)).to(self.device)
            rec["style"] = [float(f) for f in v.cpu()]
            vecs.append(v)
            records.append(rec)
        return torch.stack(vecs), records

    @torch.no_grad()
    def translate(self, images: torch.Tensor, keys: list[tuple[str, int]]) -> tuple[torch.Tensor, list[list[dict]]]:
        """images (B, 3, H, W) in [-1, 1] -> (B, K, 3, H, W) and the per-output records."""
        b = images.shape[0]
        x = images.to(self.device)
        if self.noise:  # per-frame noise, independent of batching
            x = x + torch.cat([_noise_like(x[i:i + 1], output_seed(self.seed, p, f, 10_000),
                                           self.info["noise_std"]) for i, (p, f) in enumerate(keys)])
        x, (h, w) = _pad_to(x, self.info["multiple"])
        styles, records = zip(*[self.styles_for(p, f, (h, w)) for p, f in keys])
        style = torch.cat(styles)  # (B*K, style_dim)
        with self.autocast():
            content = self.gen_a(x, mode="encode", noise=False)  # once per frame
            content = content.repeat_interleave(self.k, dim=0)
            out = self.gen_b(content=content, style=style.to(content.dtype), mode="decode")
        out = out[..., :h, :w].float()
        return out.view(b, self.k, 3, h, w), list(records)


# ----------------------------------------------------------------------------- data set side

def frame_output_paths(root: Path, patient: str, frame: int, k: int) -> tuple[list[Path], Path]:
    folder = root / patient / TRANSLATION_FOLDER
    return [folder / f"{frame:06d}_{i}.png" for i in range(k)], folder / f"{frame:06d}.json"


def finished(root: Path, entry: dict, k: int) -> bool:
    pngs, meta = frame_output_paths(root, entry["patient"], int(entry["frame"]), k)
    return meta.is_file() and all(p.is_file() for p in pngs)


def prepare(root: Path, manifest: dict, overwrite: bool) -> None:
    path = root / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diffs = [f"{k}: {old.get(k)!r} on disk, {manifest[k]!r} asked" for k in manifest if old.get(k) != manifest[k]]
        if diffs and not overwrite:
            raise TranslateError(f"{root} already holds translations made otherwise ({'; '.join(diffs)}); "
                                 f"pass --overwrite to replace them")
        if diffs:
            import shutil

            for p in {e["patient"] for e in read_index(root)}:
                shutil.rmtree(root / p / TRANSLATION_FOLDER, ignore_errors=True)
            shutil.rmtree(root / INDEX_DIR, ignore_errors=True)
    atomic_write_json(path, manifest)


def read_translation_index(root: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for path in sorted((Path(root) / INDEX_DIR).glob("*.jsonl")):
        for line in path.read_bytes().split(b"\n"):
            try:
                e = json.loads(line)
                out[(e["patient"], int(e["frame"]))] = e
            except (ValueError, KeyError, TypeError):
                continue
    return out


def run(args) -> int:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    root: Path = args.data
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        raise TranslateError(str(e)) from None
    try:
        entries = read_index(root)
    except DatasetError as e:
        raise TranslateError(f"--data: {e}") from None
    if not entries:
        raise TranslateError(f"--data {root}: the index lists no finished frames")
    if args.styles < 1:
        raise TranslateError(f"--styles {args.styles}: must be >= 1")
    if args.batch_frames < 1:
        raise TranslateError(f"--batch-frames {args.batch_frames}: must be >= 1")
    if args.workers < 1:
        raise TranslateError(f"--workers {args.workers}: must be >= 1")
    if not 0 <= args.png_level <= 9:
        raise TranslateError(f"--png-level {args.png_level}: must be 0 to 9")
    try:
        shard = parse_shard(args.shard)
    except DatasetError as e:
        raise TranslateError(str(e)) from None
    gen_a, gen_b, info = load_translator(args.checkpoint, device)
    style_images = None
    if args.style_from:
        try:
            style_images = check_images(real_images([args.style_from]), 8, 8, None, "style")
        except DataError as e:
            raise TranslateError(f"--style-from: {e}") from None
    manifest = {"format": FORMAT, "checkpoint_sha256_16": info["sha256_16"], "checkpoint_iteration": info["iteration"],
                "styles": args.styles, "seed": args.seed, "noise": args.noise == "on", "batch_frames": args.batch_frames,
                "style_from": str(Path(args.style_from).resolve()) if args.style_from else None}
    if rank == 0:
        prepare(root, manifest, args.overwrite)
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        dist.barrier()  # the manifest exists before anyone writes
    # Batches are fixed groups of consecutive frames (numerics depend on the batch, so a frame is
    # always computed in the same company); whole groups go to shards and to torchrun processes:
    # disjoint, deterministic, no padding, and the union is exactly the full run.
    part_i, part_n = shard[0] * world + rank, shard[1] * world
    groups = [entries[i:i + args.batch_frames] for i in range(0, len(entries), args.batch_frames)]
    mine = [g for gi, g in enumerate(groups) if gi % part_n == part_i]
    todo = [g for g in mine if not all(finished(root, e, args.styles) for e in g)]
    n_frames = sum(len(g) for g in mine)
    n_todo = sum(1 for g in todo for e in g if not finished(root, e, args.styles))
    say(f"{n_frames} frames in this part, {n_frames - n_todo} done, {n_todo} to translate "
        f"x {args.styles} styles on {device}")
    translator = Translator(gen_a, gen_b, info, device, args.styles, args.seed, args.noise == "on", style_images)
    index_path = root / INDEX_DIR / f"shard-{part_i:04d}-of-{part_n:04d}.jsonl"
    index_path.parent.mkdir(exist_ok=True)
    stats = {"read_s": 0.0, "gpu_s": 0.0, "png_s": 0.0, "images": 0}
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.workers)) as pool, open(index_path, "ab") as index:
        def encode_and_write(path: Path, arr: np.ndarray) -> float:
            t = time.perf_counter()
            atomic_write_bytes(path, png.encode(arr, level=args.png_level))
            return time.perf_counter() - t

        pending = []
        for gi, batch in enumerate(todo):
            t = time.perf_counter()
            images = torch.stack([image_tensor(png.decode((root / e["image"]).read_bytes())) for e in batch])
            stats["read_s"] += time.perf_counter() - t
            t = time.perf_counter()
            out, records = translator.translate(images, [(e["patient"], int(e["frame"])) for e in batch])
            arrays = [[tensor_image(out[i, k]) for k in range(args.styles)] for i in range(len(batch))]
            stats["gpu_s"] += time.perf_counter() - t
            for e, arrs, recs in zip(batch, arrays, records):
                if finished(root, e, args.styles):
                    continue  # done before an interruption; computed only to keep the batch identical
                pngs, meta = frame_output_paths(root, e["patient"], int(e["frame"]), args.styles)
                pngs[0].parent.mkdir(parents=True, exist_ok=True)
                futures = [pool.submit(encode_and_write, p, a) for p, a in zip(pngs, arrs)]
                pending.append((e, pngs, meta, recs, futures))
            # Finish frames whose PNGs are written, keeping at most a few batches in flight.
            while pending and (len(pending) > 2 * args.batch_frames or all(f.done() for f in pending[0][4])):
                _finish(root, pending.pop(0), index, manifest, stats)
            if rank == 0 and ((gi + 1) % 4 == 0 or gi + 1 == len(todo)):
                el = time.perf_counter() - t_start
                say(f"batches {gi + 1}/{len(todo)}  {(stats['images'] + len(pending) * args.styles) / el:.1f} images/s")
        while pending:
            _finish(root, pending.pop(0), index, manifest, stats)
    elapsed = time.perf_counter() - t_start
    if rank == 0 and args.sheet > 0:
        from .sheet import contact_sheet

        contact_sheet(root, args.styles, args.sheet)
    say(f"done: {stats['images']} images in {elapsed:.1f} s ({stats['images'] / max(elapsed, 1e-9):.1f} images/s; "
        f"PNG encoding {stats['png_s']:.1f} s of worker time)")
    if distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _finish(root: Path, item, index, manifest: dict, stats: dict) -> None:
    e, pngs, meta, recs, futures = item
    stats["png_s"] += sum(f.result() for f in futures)
    stats["images"] += len(pngs)
    record = {"patient": e["patient"], "frame": int(e["frame"]), "render": e["image"],
              "translation": manifest, "outputs": [{**r, "image": str(p.relative_to(root))} for r, p in zip(recs, pngs)]}
    atomic_write_bytes(meta, (json.dumps(record, indent=1) + "\n").encode())
    line = {"patient": e["patient"], "frame": int(e["frame"]), "meta": str(meta.relative_to(root)),
            "translations": [str(p.relative_to(root)) for p in pngs]}
    index.write((json.dumps(line, sort_keys=True) + "\n").encode())
    index.flush()
    os.fsync(index.fileno())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend.translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="a backend.train checkpoint")
    p.add_argument("--data", required=True, type=Path, help="rendered data set (read through its index)")
    p.add_argument("--styles", type=int, default=5, help="translations per frame (the paper: 5)")
    p.add_argument("--style-from", help="folder/list of real frames to encode styles from (default: N(0, I))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1", help="translate only part I of N (0-based)")
    p.add_argument("--noise", choices=("on", "off"), default="on", help="encoder input noise, as in training")
    p.add_argument("--batch-frames", type=int, default=8,
                   help="frames per batch, each decoded with K styles; part of the settings (outputs depend on it)")
    p.add_argument("--workers", type=int, default=4, help="threads encoding PNGs")
    p.add_argument("--png-level", type=int, default=1, help="zlib level of the PNGs (1: fast, 9: small)")
    p.add_argument("--device", default="auto")
    p.add_argument("--sheet", type=int, default=6, help="frames in translation_sheet.png (0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace translations made with other settings")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except TranslateError as e:
        print(f"python -m backend.translate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
