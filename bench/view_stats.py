"""View statistics from the ray-cast coverage estimate (no rendering): per view preset, the share of
frames where the gallbladder and tools are in view and their median image share, over the bundled
patients, for frames drawn exactly as render.py draws them.

    python bench/view_stats.py --frames 20 --views liver cholecystectomy

The estimate casts a 40x24 grid of rays, so shares are coarse (1/960); rendered sets are measured
exactly by `python -m backend.stats`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def view_statistics(view: str, patients: list[str], frames: int, seed: int = 0, meshes: Path = ROOT / "meshes",
                    resolution: str = "452x256", retraction: str = "lift") -> dict:
    from blender_addon.config import RenderSettings
    from blender_addon.core.seeds import frame_seed
    from blender_addon.pipeline import draw_frame
    from blender_addon.scene import PatientScene

    s = RenderSettings(meshes=str(meshes), out="unused", view=view, resolution=resolution, seed=seed,
                       retraction=retraction).validate()
    rows = []
    for p in patients:
        scene = PatientScene(meshes / p, s.max_tools)
        if view == "cholecystectomy" and not scene.has_gallbladder:
            continue
        for k in range(frames):
            d = draw_frame(np.random.default_rng(frame_seed(seed, p, k)), scene, s)
            rows.append({**d.view["estimate"], "patient": p, "accepted": d.view["accepted"],
                         "retracted": d.retraction is not None, "tools_drawn": len(d.tools),
                         "fundus_cranial_mm": fundus_cranial_mm(scene, d.retraction)})
    gb = np.array([r["gallbladder"] for r in rows])
    tools = np.array([r["tools"] for r in rows])
    return {"view": view, "frames": len(rows), "gallbladder_visible": float((gb > 0).mean()),
            "gallbladder_median": float(np.median(gb)), "tool_visible": float((tools > 0).mean()),
            "tool_median": float(np.median(tools)), "accepted": float(np.mean([r["accepted"] for r in rows])),
            "retracted": float(np.mean([r["retracted"] for r in rows])),
            "fundus_cranial_mm": float(np.median([r["fundus_cranial_mm"] for r in rows if r["retracted"]] or [np.nan])),
            "rows": rows}


def fundus_cranial_mm(scene, retraction) -> float:
    """How far a retraction moved the fundus towards the head (mm; 0 at rest)."""
    from blender_addon.sampling import HEAD
    from blender_addon.views import gallbladder_axis

    if retraction is None:
        return 0.0
    return float((retraction.fundus - gallbladder_axis(scene.anatomy.meshes["gallbladder"]).fundus) @ HEAD)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="frames per patient")
    ap.add_argument("--views", nargs="+", default=["liver", "cholecystectomy", "mixed"])
    ap.add_argument("--patients", default="patient01,patient02,patient03,patient04,patient05,patient06,"
                                          "patient07,patient08,patient09,patient10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retraction", nargs="+", default=["lift"], choices=["lift", "turn"],
                    help="render.py's --retraction, each in turn (cholecystectomy and mixed views)")
    args = ap.parse_args()
    print("view             retraction  frames  gb visible  gb median  tool visible  tool median  accepted  "
          "retracted  fundus to head, mm  s")
    for v in args.views:
        for mode in args.retraction:
            t = time.time()
            r = view_statistics(v, args.patients.split(","), args.frames, args.seed, retraction=mode)
            print(f"{v:16s} {mode:10s} {r['frames']:6d}  {r['gallbladder_visible']:10.0%}  {r['gallbladder_median']:9.3f}  "
                  f"{r['tool_visible']:12.0%}  {r['tool_median']:11.3f}  {r['accepted']:8.0%}  {r['retracted']:9.0%}"
                  f"  {r['fundus_cranial_mm']:18.1f}  {time.time() - t:.0f}", flush=True)


if __name__ == "__main__":
    main()
