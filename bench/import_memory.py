"""Wall time, peak memory and output size of `backend.meshes import` on large synthetic CT livers.

    python bench/import_memory.py [--faces 1000000 2000000] [--formats stl ply] [--root CHECKOUT]

Each liver is a CT-like staircase surface (the boundary of a voxelised bumpy ellipsoid, about
210 x 150 x 110 mm) written as binary STL (unshared corners, as CT exports write it) or binary PLY.
Every import runs in a fresh process (its peak RSS, VmHWM); --root runs another checkout
(e.g. `git archive HEAD | tar -x -C /tmp/old`) with this interpreter, for before/after numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon.core.geometry import Mesh  # noqa: E402
from blender_addon.core.ply import read_ply, write_ply  # noqa: E402

# Peak RSS from /proc's VmHWM (Linux): getrusage's ru_maxrss in a child also counts the parent's RSS
# at the fork (Linux keeps it across exec), and this parent holds the mesh it generated.
CHILD = """import json, re, sys, time
from backend.meshes import main
t = time.monotonic(); rc = main(sys.argv[1:])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"rc": rc, "s": time.monotonic() - t, "peak_gb": hwm / 1e6}))"""


def voxel_liver(faces: int) -> Mesh:
    """About `faces` triangles: two per exposed voxel face (1.94 M at 0.32 mm voxels)."""
    h = 0.32 * np.sqrt(1.94e6 / faces)
    X, Y, Z = np.meshgrid(*[np.arange(-r, r, h) for r in (105, 75, 55)], indexing="ij", sparse=True)
    occ = (X / 100) ** 2 + (Y / 70) ** 2 + (Z / 50) ** 2 + 0.08 * np.sin(X / 9) * np.cos(Y / 7) * np.sin(Z / 11) < 1
    quads = []
    for a in range(3):
        b, c = [i for i in range(3) if i != a]
        pad = [(1, 1) if i == a else (0, 0) for i in range(3)]
        step = np.diff(np.pad(occ, pad).astype(np.int8), axis=a)  # -1: solid below the plane, +1: above
        for sign in (1, -1):
            idx = np.argwhere(step == -sign)
            corners = []
            for db, dc in ((0, 0), (1, 0), (1, 1), (0, 1)):
                q = idx.copy()
                q[:, b] += db
                q[:, c] += dc
                corners.append(q)
            q = np.stack(corners, 1)
            quads.append(q if (sign > 0) == ((c - b) % 3 == 1) else q[:, ::-1])
    q = np.concatenate(quads)
    n = np.array(occ.shape) + 1
    keys, index = np.unique((q[..., 0] * n[1] + q[..., 1]) * n[2] + q[..., 2], return_inverse=True)
    index = index.reshape(-1, 4)
    grid = np.stack([keys // (n[1] * n[2]), keys // n[2] % n[1], keys % n[2]], 1)
    return Mesh(grid * h + [45, 85, 65], np.concatenate([index[:, [0, 1, 2]], index[:, [0, 2, 3]]]))


def write_stl(path: Path, m: Mesh) -> None:
    rec = np.zeros(len(m.faces), [("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["v"] = m.vertices[m.faces]
    path.write_bytes(b"\0" * 80 + np.uint32(len(m.faces)).tobytes() + rec.tobytes())


def run(root: Path, src: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, "import", "--liver", str(src), "--name", "x",
                           "--out", str(out), "--overwrite"], cwd=root, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] == 0:
        result["faces"] = {p.stem: len(read_ply(p).faces) for p in sorted((out / "x").glob("*.ply"))}
    else:
        result["error"] = proc.stderr.strip().splitlines()[-1]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, nargs="+", default=[1_000_000, 2_000_000])
    p.add_argument("--formats", nargs="+", default=["stl", "ply"], choices=["stl", "ply"])
    p.add_argument("--root", type=Path, default=ROOT, help="checkout to run (default: this one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for faces in args.faces:
            liver = voxel_liver(faces)
            for fmt in args.formats:
                src = Path(tmp) / f"liver.{fmt}"
                write_stl(src, liver) if fmt == "stl" else write_ply(src, liver)
                t = time.monotonic()
                r = run(args.root.resolve(), src, Path(tmp) / "out")
                print(f"{len(liver.faces):>10,} faces {fmt}: {r['s']:6.1f} s (wall {time.monotonic() - t:.1f} s), "
                      f"peak {r['peak_gb']:.2f} GB, {r.get('faces') or r.get('error')}", flush=True)
                src.unlink()


if __name__ == "__main__":
    main()
