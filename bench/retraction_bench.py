"""How far can the gallbladder's fundus be retracted towards the head without entering the rigid liver?

    python bench/retraction_bench.py                       # patients 01-06 of meshes/
    python bench/retraction_bench.py --patients patient01 --json out.json

In the operation a grasper pushes the fundus towards the head, over the liver's lower edge, and the
(soft) liver lifts with it. Our organs are rigid, so blender_addon/views.py turns the gallbladder
rigidly about its neck, away from its bed, among the turns that stay outside the liver and inside the
wall (`retraction_candidates`). This bench measures what a deformable gallbladder alone would add: a
bend of the part beyond a point of the long axis (the axis from s0 to s1 becomes an arc of the
bend angle, the rest follows straight, cross-sections stay perpendicular to the arc, so the map is
one-to-one while the arc's radius exceeds the gallbladder's half-width on the inner side) towards
every anterior-cranial direction of a 162-point sphere, tested with views.collides (the same test as
the rigid turns). Prints per patient: the rigid candidates and the best cranial fundus displacement
among them, and the same for the collision-free bends (mm along HEAD; > 0 is towards the head).
An experiment, not used by the renderer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon.core.geometry import Mesh, icosphere, normalize  # noqa: E402
from blender_addon.core.ply import read_ply  # noqa: E402
from blender_addon.sampling import HEAD, Anatomy  # noqa: E402
from blender_addon.views import GallbladderAxis, collides, gallbladder_axis, retraction_candidates  # noqa: E402

ANTERIOR = np.array([0.0, 0.0, 1.0])  # the abdominal wall's side (sampling.py: trocars where wall normals have z > 0)


def bend(points: np.ndarray, ax: GallbladderAxis, s0: float, s1: float, goal: np.ndarray,
         angle: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Points bent towards `goal` by `angle` (radians) between axis positions s0 and s1; also the arc's
    radius and each point's offset towards the bend (one-to-one where offset < radius)."""
    e1 = ax.axis
    e2 = normalize(goal - (goal @ e1) * e1)
    origin = ax.neck + s0 * ax.length * e1
    d = points - origin
    u, w = d @ e1, d @ e2
    rest = d - u[:, None] * e1 - w[:, None] * e2
    arc = (s1 - s0) * ax.length
    radius = arc / angle
    phi = np.clip(u, 0.0, arc) / radius
    beyond = np.maximum(u - arc, 0.0)
    x = np.where(u <= 0, u, (radius - w) * np.sin(phi) + beyond * np.cos(phi))
    y = np.where(u <= 0, w, radius - (radius - w) * np.cos(phi) + beyond * np.sin(phi))
    return origin + x[:, None] * e1 + y[:, None] * e2 + rest, radius, w


def patient_figures(anatomy: Anatomy) -> dict:
    gb = anatomy.meshes["gallbladder"]
    ax = gallbladder_axis(gb)
    rigid = retraction_candidates(anatomy)
    rigid_lift = [float((r.fundus - ax.fundus) @ HEAD) for r in rigid]
    bends = []
    s = ax.position(gb.vertices)
    for goal in icosphere(2).vertices:
        if goal @ HEAD < 0.2 or goal @ ANTERIOR < -0.1 or abs(goal @ ax.axis) > 0.95:
            continue
        for s0 in (0.2, 0.35, 0.5):
            for span in (0.5, 1.0):
                s1 = s0 + (1 - s0) * span
                for degrees in (40, 70, 100, 130):
                    moved, radius, offset = bend(gb.vertices, ax, s0, s1, goal, np.radians(degrees))
                    if offset[s > s0].max() > 0.8 * radius:
                        continue  # the inner side would fold onto itself
                    if collides(Mesh(moved, gb.faces), anatomy) is None:
                        fundus = bend(ax.fundus[None], ax, s0, s1, goal, np.radians(degrees))[0][0]
                        bends.append({"cranial_mm": round(float((fundus - ax.fundus) @ HEAD), 1),
                                      "anterior_mm": round(float((fundus - ax.fundus) @ ANTERIOR), 1),
                                      "degrees": degrees, "s0": s0, "s1": round(s1, 2),
                                      "goal": np.round(goal, 2).tolist()})
    bends.sort(key=lambda b: -b["cranial_mm"])
    return {"rigid_candidates": len(rigid), "rigid_best_cranial_mm": round(max(rigid_lift), 1) if rigid else None,
            "bends_allowed": len(bends), "bend_best": bends[0] if bends else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", type=Path, default=ROOT / "meshes")
    p.add_argument("--patients", nargs="+", default=[f"patient0{i}" for i in range(1, 7)])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = {}
    for patient in args.patients:
        folder = args.meshes / patient
        if not folder.is_dir():
            print(f"error: {folder} is not a folder of patient meshes", file=sys.stderr)
            return 2
        t = time.perf_counter()
        out[patient] = patient_figures(Anatomy({q.stem: read_ply(q) for q in folder.glob("*.ply")}))
        print(json.dumps({"patient": patient, **out[patient], "s": round(time.perf_counter() - t, 1)}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
