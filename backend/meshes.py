"""Patients for the renderer.

    python -m backend.meshes generate [--out meshes]          the bundled default patients
    python -m backend.meshes import --liver PATH [--gallbladder PATH] [--wall PATH] --name NAME

Import reads STL, PLY, OBJ and legacy VTK POLYDATA (3D-IRCADb's MESHES_VTK/*.vtk), then:
- units: by the liver's largest extent in file units: below 1 -> metres, 1 to 40 -> centimetres,
  40 to 1000 -> millimetres (override with --units); the liver must then measure 80 to 400 mm;
- axes: --axes names where the file's +x, +y, +z point (L/R, A/P, S/I); the default LPS is
  DICOM's patient frame. The scene's axes are +X left, +Y superior (head), +Z anterior;
- recentres every organ by one translation (the liver's box centre goes to where the bundled
  livers sit), so organs from one CT keep their relative placement;
- repairs: merges duplicate vertices, drops degenerate and duplicate faces and loose parts, cuts
  faces on non-manifold edges, closes holes, makes winding consistent and outward; says what it did;
- decimates (quadric): an organ above 4 x --max-faces right after reading, so the repairs run on a
  small mesh, then every organ to at most --max-faces (up to 4 rounds, each checked as above);
- generates fat, falciform ligament and abdominal wall when not given, as for the defaults (at a
  resolution within --max-faces).
Every organ written has at most --max-faces triangles. A file above 12 million faces is refused
with the reason (binary STL and PLY from their header, before reading; other formats after
reading): an import needs about 0.4 GB of memory per million faces. Long steps (reading a big
file, decimating) print progress on stderr.
A wall that does not enclose the liver (a tissue layer rather than a cavity) becomes the convex
hull of itself and the organs. Writes `<out>/<name>/` (*.ply + patient.json) atomically.
"""
from __future__ import annotations

import sys
from pathlib import Path

from blender_addon.core.files import check_output_dir

from .common.cli import error_exit, log, parser
from .patients.folders import UNIT_FACTORS, generate, import_patient

PROG = "python -m backend.meshes"


def main(argv=None) -> int:
    p = parser(PROG, __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the default patients (deterministic)")
    g.add_argument("--out", type=Path, default=Path("meshes"))
    g.add_argument("--patients", default="", help="comma-separated subset, e.g. patient01,patient07")
    i = sub.add_parser("import", help="make a patient folder from CT meshes")
    i.add_argument("--liver", required=True, help="liver surface (.stl, .ply, .obj, .vtk)")
    i.add_argument("--gallbladder", help="gallbladder surface from the same CT")
    i.add_argument("--wall", help="abdominal wall surface from the same CT")
    i.add_argument("--name", required=True, help="patient folder name")
    i.add_argument("--out", type=Path, default=Path("meshes"), help="folder of patients")
    i.add_argument("--axes", default="LPS", help="where the file's +x,+y,+z point (default LPS, DICOM)")
    i.add_argument("--units", choices=sorted(UNIT_FACTORS), help="file units (default: detected)")
    i.add_argument("--max-faces", type=int, default=30_000, help="at most this many triangles per organ (default 30000)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing patient folder")
    args = p.parse_args(argv)

    def run() -> int:
        check_output_dir(args.out, "--out")
        if args.command == "generate":
            names = [n for n in args.patients.split(",") if n]
            for name in generate(args.out, names or None):
                log(f"wrote {args.out / name}")
        else:
            import_patient(args.liver, args.name, args.out, args.gallbladder, args.wall, args.axes, args.units,
                           args.max_faces, args.overwrite, log)
        return 0

    return error_exit(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
