"""Compare the bundled livers with the real 3D-IRCADb livers in ../shared/data/meshes/ircad01.

    python bench/anatomy_compare.py [--picture anatomy_compare.png]

Prints extents (sorted, mm), volume (mL), surface area (cm^2) and surface-to-volume ratio (1/mm)
for every liver, and the means of both groups; renders every liver from the front (anterior view,
head up) into one picture: bundled livers in the top row, IRCAD livers below, imported through
`backend.meshes import` (LPS axes) so both are in scene axes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.patients.folders import import_patient  # noqa: E402
from blender_addon.core.geometry import Mesh  # noqa: E402
from blender_addon.core.ply import read_ply  # noqa: E402


def stats(m: Mesh) -> dict:
    vol = m.volume()
    area = m.area()
    return {"extent": sorted(np.ptp(m.vertices, axis=0).round(0).tolist(), reverse=True),
            "volume_ml": vol / 1e3, "area_cm2": area / 1e2, "s_over_v": area / vol}


def render_row(meshes: list[Mesh], size: int = 180) -> np.ndarray:
    import bpy

    from blender_addon.engine import quiet_stdout
    from blender_addon.exr import read_exr
    from blender_addon.labels import linear_to_srgb8, passes_from_exr

    tiles = []
    for m in meshes:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        sc = bpy.context.scene
        sc.render.engine = "CYCLES"
        sc.cycles.samples = 16
        sc.render.resolution_x = sc.render.resolution_y = size
        c = m.vertices.mean(0)
        me = bpy.data.meshes.new("liver")
        me.from_pydata(((m.vertices - c) * 0.001).tolist(), [], m.faces.tolist())
        me.shade_smooth()
        ob = bpy.data.objects.new("liver", me)
        sc.collection.objects.link(ob)
        mat = bpy.data.materials.new("liver")
        mat.use_nodes = True
        mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.45, 0.08, 0.05, 1)
        me.materials.append(mat)
        cam = bpy.data.cameras.new("cam")
        cam.type = "ORTHO"
        cam.ortho_scale = 0.3
        co = bpy.data.objects.new("cam", cam)
        co.location = (0, 0, 1.0)  # anterior, looking back (-Z), image up = +Y (head)
        sc.collection.objects.link(co)
        sc.camera = co
        sun = bpy.data.lights.new("sun", "SUN")
        sun.energy = 3.0
        so = bpy.data.objects.new("sun", sun)
        so.rotation_euler = (0.4, -0.3, 0)
        sc.collection.objects.link(so)
        world = bpy.data.worlds.new("w")
        world.use_nodes = True
        world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.05, 0.06, 1)
        sc.world = world
        sc.view_layers[0].use_pass_z = sc.view_layers[0].use_pass_normal = sc.view_layers[0].use_pass_object_index = True
        from blender_addon.engine import use_multilayer_exr

        use_multilayer_exr(sc.render.image_settings)
        path = tempfile.mktemp(suffix=".exr")
        sc.render.filepath = path
        with quiet_stdout():
            bpy.ops.render.render(write_still=True)
        tiles.append(linear_to_srgb8(passes_from_exr(read_exr(path))["rgb"]))
        Path(path).unlink()
    return np.concatenate(tiles, axis=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "meshes" / "ircad01")
    p.add_argument("--picture", type=Path, default=Path("anatomy_compare.png"))
    args = p.parse_args()
    ours = {d.name: read_ply(d / "liver.ply") for d in sorted((ROOT / "meshes").iterdir()) if (d / "liver.ply").exists()}
    real = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, 11):
            src = args.shared / f"liver{i}.ply"
            if not src.exists():
                print(f"missing {src}; pass --shared", file=sys.stderr)
                return 2
            folder = import_patient(str(src), f"ircad{i}", Path(tmp), log=lambda m: None)
            real[f"ircad{i}"] = read_ply(folder / "liver.ply")
    print(f"{'liver':<11} {'extent (mm, sorted)':<22} {'volume mL':>9} {'area cm2':>9} {'S/V 1/mm':>9}")
    for group, livers in (("bundled", ours), ("IRCAD", real)):
        rows = {k: stats(m) for k, m in livers.items()}
        for k, s in rows.items():
            print(f"{k:<11} {str([int(x) for x in s['extent']]):<22} {s['volume_ml']:9.0f} {s['area_cm2']:9.0f} {s['s_over_v']:9.4f}")
        ext = np.mean([s["extent"] for s in rows.values()], axis=0)
        print(f"{'mean ' + group:<11} {str([int(x) for x in ext]):<22} "
              f"{np.mean([s['volume_ml'] for s in rows.values()]):9.0f} "
              f"{np.mean([s['area_cm2'] for s in rows.values()]):9.0f} "
              f"{np.mean([s['s_over_v'] for s in rows.values()]):9.4f}\n")
    from blender_addon.core import png

    picture = np.concatenate([render_row(list(ours.values())), render_row(list(real.values()))], axis=0)
    args.picture.write_bytes(png.encode(picture))
    print(f"picture: {args.picture} (top: bundled patient01..10, bottom: IRCAD liver1..10; anterior view, head up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
