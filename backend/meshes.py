"""Patients for the renderer: `python -m backend.meshes generate` writes the default anatomy.

(Importing real CT meshes comes with the anatomy issue.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blender_addon.geometry import edge_manifold_report, write_ply

from .anatomy import default_patients, generate_patient


def generate(out: Path, names: list[str] | None = None) -> list[str]:
    written = []
    for spec in default_patients():
        if names and spec.name not in names:
            continue
        meshes = generate_patient(spec)
        folder = out / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        for organ, mesh in meshes.items():
            report = edge_manifold_report(mesh)
            if not all(report.values()):
                raise RuntimeError(f"{spec.name}/{organ}: generated mesh failed its checks {report}")
            write_ply(folder / f"{organ}.ply", mesh, comment=f"lapsynth default anatomy {spec.name} seed {spec.seed}")
        info = {"name": spec.name, "source": "generated", "seed": spec.seed, "units": "mm",
                "gallbladder": spec.gallbladder, "axes": "+X patient left, +Y cranial (head), +Z anterior"}
        (folder / "patient.json").write_text(json.dumps(info, indent=2) + "\n")
        written.append(spec.name)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.meshes", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the default patients (deterministic)")
    g.add_argument("--out", type=Path, default=Path("meshes"))
    g.add_argument("--patients", default="", help="comma-separated subset, e.g. patient01,patient07")
    args = p.parse_args(argv)
    if args.command == "generate":
        names = [n for n in args.patients.split(",") if n]
        for name in generate(args.out, names or None):
            print(f"wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
