"""What the GPU run (bench/gpu_run.sh) carries, and its summary table.

    python bench/gpu_data.py pack --renders runs/gpuA --munit /path/to/MUNIT    # here, with bpy
    python3 bench/gpu_data.py unpack --to /tmp/gpu                              # there (bench/gpu_run.sh)
    python3 bench/gpu_data.py summary OUT                                       # the table printed last

The GPU machine cannot run Blender and a call carries at most 64 MiB, so `pack` writes into the
git-ignored folder .gpu/: the rendered set with its images as JPEG (quality 95, no chroma
subsampling; about a fifth of the PNG size) and its labels, index and manifest unchanged (depth
and normals stay behind: nothing on the GPU reads them); the Endoscapes frames and masks split
into train and val and downscaled to the render height (456x256; masks nearest-neighbour); the
real frames and the tiny rendered set the backend tests need; the wheels the GPU image lacks; and
the files of an NVlabs/MUNIT checkout that bench/train_bench.py --reference imports (never
committed: its licence forbids it). `unpack` turns the JPEGs back into PNGs at the paths the
index names, so every program reads a normal data set (whose images went through JPEG once:
plain and translated renders alike).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon.core import png  # noqa: E402
from blender_addon.core.dataset import read_index  # noqa: E402

CARRY = ROOT / ".gpu"
SHARED = ROOT.parent / "shared" / "data" / "real"
REAL_SIZE = (456, 256)  # Endoscapes 854x480 at the renders' height, aspect kept
WHEELS = ["pytorch-msssim==1.0.0", "trimesh==4.5.3"]
MUNIT_FILES = ["trainer.py", "networks.py", "utils.py", "data.py", "LICENSE.md"]
TINY_ARGS = ["--patients", "patient01,patient07", "--frames-per-scene", "4", "--seed", "7",
             "--resolution", "96x64", "--samples", "2", "--preview-frames", "3"]  # tests/conftest.py's tiny set


def _image_module():
    from PIL import Image

    return Image


def pack_renders(src: Path, dst: Path) -> int:
    Image = _image_module()
    entries = read_index(src)
    if dst.exists():
        shutil.rmtree(dst)
    for e in entries:
        for kind in ("segmentation", "meta"):
            (dst / e[kind]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / e[kind], dst / e[kind])
        jpg = (dst / e["image"]).with_suffix(".jpg")
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.open(src / e["image"]).convert("RGB").save(jpg, quality=95, subsampling=0)
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    shutil.copytree(src / "index", dst / "index")
    return len(entries)


def pack_real(endo: Path, dst: Path) -> dict:
    """The Endoscapes train and val frames in one folder with their split (as backend.efficacy reads them)."""
    Image = _image_module()
    split = json.loads((endo / "split.json").read_text())
    kept: dict[str, str] = {}
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for img in sorted((endo / "images").glob("*.jpg")):
        part = split.get(img.stem)
        if part not in ("train", "val"):
            continue
        Image.open(img).convert("RGB").resize(REAL_SIZE, Image.BILINEAR).save(dst / "images" / img.name, quality=92)
        Image.open(endo / "masks" / f"{img.stem}.png").resize(REAL_SIZE, Image.NEAREST).save(
            dst / "masks" / f"{img.stem}.png")
        kept[img.stem] = part
    (dst / "split.json").write_text(json.dumps(kept, indent=0, sort_keys=True))
    return {part: sum(v == part for v in kept.values()) for part in ("train", "val")}


def split_real(endo: Path) -> None:
    """endo/train and endo/val as folders of links, for the programs that take a folder per part."""
    split = json.loads((endo / "split.json").read_text())
    for stem, part in split.items():
        for sub, name in (("images", f"{stem}.jpg"), ("masks", f"{stem}.png")):
            link = endo / part / sub / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(endo / sub / name)


def pack_test_data(dst: Path) -> None:
    """The real frames the backend tests read from ../shared (full size, as the tests expect)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(SHARED / "cholec80_vid03", dst / "cholec80_vid03")
    endo = SHARED / "endoscapes"
    patients: list[str] = []
    for img in sorted((endo / "images").glob("*.jpg")):
        p = img.name.split("_")[0]
        if p not in patients:
            if len(patients) == 3:
                break
            patients.append(p)
        for sub, name in (("images", img.name), ("masks", f"{img.stem}.png")):
            (dst / "endoscapes" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(endo / sub / name, dst / "endoscapes" / sub / name)
    shutil.copy(endo / "split.json", dst / "endoscapes" / "split.json")


def pack(args) -> int:
    CARRY.mkdir(exist_ok=True)
    n = pack_renders(args.renders, CARRY / "A")
    print(f"renders: {n} frames -> {CARRY / 'A'}")
    real = CARRY / "endo"
    if real.exists():
        shutil.rmtree(real)
    print(f"Endoscapes at {REAL_SIZE[0]}x{REAL_SIZE[1]}: {pack_real(SHARED / 'endoscapes', real)}")
    pack_test_data(CARRY / "shared")
    tiny = CARRY / "tiny_A"
    if tiny.exists():  # rendered anew: the data-set format may have changed since
        shutil.rmtree(tiny)
    subprocess.run([sys.executable, str(ROOT / "blender_addon" / "render.py"), "--meshes", str(ROOT / "meshes"),
                    "--out", str(tiny), *TINY_ARGS], check=True, cwd=ROOT)
    whl = CARRY / "whl"
    if whl.exists():
        shutil.rmtree(whl)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "-d", str(whl), *WHEELS], check=True)
    if args.munit:
        dst = CARRY / "munit"
        dst.mkdir(exist_ok=True)
        for f in MUNIT_FILES:
            shutil.copy(args.munit / f, dst / f)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {size / 2 ** 20:.1f} MiB to carry (with the tracked files: at most 64 MiB)")
    return 0


def unpack(args) -> int:
    """JPEG renders back to PNG at the index's paths; the rest copied as it is."""
    Image = _image_module()
    src, dst = CARRY / "A", args.to / "A"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.jpg"), dirs_exist_ok=True)
    n = 0
    for jpg in sorted(src.rglob("*.jpg")):
        out = dst / jpg.relative_to(src).with_suffix(".png")
        out.write_bytes(png.encode(np.asarray(Image.open(jpg).convert("RGB")), level=1))
        n += 1
    shutil.copytree(CARRY / "endo", args.to / "endo", dirs_exist_ok=True)
    split_real(args.to / "endo")
    print(f"unpacked {n} renders and the Endoscapes split into {args.to}")
    return 0


def _rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def summary(args) -> int:
    """The short table of a run's logs folder: training speed, translation speed, efficacy."""
    logs = args.logs
    lines = []
    setup = logs / "setup.log"
    if setup.is_file():
        lines += setup.read_text().splitlines()[:2]
    for row in (_rows(logs / "speed.log") + _rows(logs / "speed2.log") + _rows(logs / "compile_speed.log")
                + _rows(logs / "graphs_speed.log") + _rows(logs / "upsample_speed.log")):
        if "summary" in row:  # train_bench's ratio over all rounds
            lines.append(f"train over {row['rounds']} round(s) {' '.join(map(str, row['row']))}: "
                         f"x{row['speed_vs_reference']} vs reference")
        elif "error" in row:
            lines.append(f"train {row['trainer']} amp={row['amp']} compile={row['compile']} "
                         f"cl={row['channels_last']} graphs={row.get('graphs', 'off')}: ERROR {row['error'][:150]}")
        else:
            lines.append(f"train {row['crop']} {row['trainer']:<12} amp={row['amp']:<4} compile={row['compile']:<3} "
                         f"cl={row['channels_last']:<3} graphs={row.get('graphs', 'off'):<3} "
                         f"{row['step_s'] * 1000:7.1f} ms/it {row['it_per_s']:6.2f} it/s "
                         f"peak {row['peak_gib']:.2f} GiB  x{row.get('speed_vs_reference', 1.0)} vs reference"
                         + (f"  graphs: {row['graphs_state']}" if "graphs_state" in row else ""))
    for p in sorted(logs.glob("translate_bench_*.json")):
        results = json.loads(p.read_text())
        for r in results if isinstance(results, list) else [results]:  # a list: several --amp or --upsample
            lines.append(f"translate {r['resolution']} K={r['styles']} batch={r['batch_frames']} {r['images']} "
                         f"images, {r['precision']}, upsample {r.get('upsample', '?')}: "
                         f"{r['images_per_s_translation_loop']} images/s -> 100k in "
                         f"{r['projected_minutes_for_100k_images']} min")
    train_log = _rows(logs / "translator_log.jsonl")
    if train_log:
        last = train_log[-1]
        lines.append(f"translator: iteration {last['iteration']}, {last.get('it_per_s', float('nan')):.2f} it/s, "
                     f"data {last.get('data_s_per_it', float('nan')) * 1000:.1f} ms/it, "
                     f"GPU memory {last.get('gpu_mem_gib', float('nan')):.2f} GiB")
    translate = logs / "translate_all.log"
    if translate.is_file():
        lines += [f"translate: {ln}" for ln in translate.read_text().splitlines() if ln.startswith("done:")]
    quality = logs / "translation_quality.json"
    if quality.is_file():
        lines.append(f"translation quality: {json.dumps(json.loads(quality.read_text()).get('structure', {}))[:200]}")
    for p in sorted(logs.glob("eval_*.json")):
        t = json.loads(p.read_text())
        for patients in t["median_dice"].values():
            for cls in t["classes"]:
                v = [d[cls] for d in patients.values() if d.get(cls) is not None and np.isfinite(d[cls])]
                lines.append(f"{p.stem[5:]:<12} {cls:<12} per-video median Dice: median {_median(v):.3f}, "
                             f"mean {np.mean(v) if v else float('nan'):.3f} over {len(v)} videos")
    cells = sorted((logs / "efficacy").glob("*-seed*.json"))
    for p in cells:  # every finished efficacy cell, so that a table cut short still shows what it has
        c = json.loads(p.read_text())
        per_video = c["per_video"]
        scores = "  ".join(f"{cls} {_median([v[cls] for v in per_video.values() if v.get(cls) is not None]):.3f}"
                           for cls in c["settings"]["classes"])
        lines.append(f"efficacy {p.stem:<22} {scores}  ({c['settings']['iterations']} it, {c['train_seconds']} s)")
    status = logs / "stages.txt"
    if status.is_file():
        lines += status.read_text().strip().splitlines()
    print("\n".join(lines))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="fill .gpu/ here (needs bpy for the tiny test set)")
    pk.add_argument("--renders", type=Path, required=True, help="a rendered data set at 452x256")
    pk.add_argument("--munit", type=Path, help="an NVlabs/MUNIT checkout, for the reference timing")
    up = sub.add_parser("unpack", help="on the GPU machine: a normal data set and the real split under --to")
    up.add_argument("--to", type=Path, required=True)
    sm = sub.add_parser("summary", help="the short table of a GPU run's logs folder")
    sm.add_argument("logs", type=Path)
    args = p.parse_args()
    return {"pack": pack, "unpack": unpack, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
