"""The laparoscopic scene in Blender: built once per patient, re-posed for every frame (bpy).

Data blocks are created only in `PatientScene.__init__`; frames change object matrices, tool and
(with a lift) organ vertex coordinates and material values, and the lifted organs' ray-casting trees
are kept for the newest LIFT_TREES lifts only, so memory stays flat over long runs.
The scene is modelled in metres (Blender's native unit); every pose we store is in mm.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Vector
from mathutils.bvhtree import BVHTree

from .core.classes import LABEL_IDS
from .core.dataset import ORGAN_FILES
from .core.geometry import CV_TO_BLENDER_CAMERA, Mesh, MeshError
from .core.ply import read_ply
from .engine import node_tree_of
from .instruments import tool_parts
from .sampling import TOOL_TYPES, Anatomy, CameraDraw, LightDraw, MaterialDraw, ToolDraw
from .views import Retraction, lifted_candidates, retraction_candidates

MM = 0.001  # millimetres -> Blender units (metres)
SCENE_TO_MM = 1000.0
REQUIRED = ("liver",)

# Tissue looks: two base colours (linear RGB) mixed by noise, detail colour, roughness, metallic,
# bump strength, noise scale (per metre).
TISSUE_LOOKS = {
    "liver": ((0.20, 0.035, 0.025), (0.38, 0.07, 0.045), (0.12, 0.02, 0.02), 0.35, 0.0, 0.25, 60.0),
    # Pink-white with red vessels: real gallbladders (Endoscapes masks, 140 frames) average sRGB (131, 88,
    # 95); this renders at about (170, 119, 119) under our light. The classic look below rendered at
    # (153, 155, 133), a hue no real frame shows, and no segmenter trained on it found a real gallbladder.
    "gallbladder": ((0.28, 0.12, 0.14), (0.50, 0.26, 0.28), (0.22, 0.04, 0.05), 0.30, 0.0, 0.15, 45.0),
    "fat": ((0.75, 0.52, 0.14), (0.90, 0.72, 0.32), (0.60, 0.30, 0.10), 0.45, 0.0, 0.45, 90.0),
    "ligament": ((0.55, 0.30, 0.25), (0.80, 0.55, 0.48), (0.50, 0.15, 0.12), 0.40, 0.0, 0.30, 70.0),
    "abdominal_wall": ((0.45, 0.10, 0.08), (0.70, 0.28, 0.22), (0.25, 0.02, 0.03), 0.40, 0.0, 0.35, 30.0),
}
# `--tissue-look classic`: the looks data sets had before `measured` (issue 20's GPU efficacy table).
CLASSIC_LOOKS = {**TISSUE_LOOKS,
                 "gallbladder": ((0.30, 0.36, 0.20), (0.55, 0.55, 0.42), (0.25, 0.30, 0.35), 0.30, 0.0, 0.15, 45.0)}
LOOKS = {"measured": TISSUE_LOOKS, "classic": CLASSIC_LOOKS}
# Instruments. `measured`: grey metal whose rendered brightness matches real tools (`python -m backend.stats`
# on the 419 Endoscapes masks: brightness percentiles 10/25/50/75/90 = 43/60/83/117/167 of 255; this look
# at the default exposure target 0.45: 37/59/84/116/153; docs/evaluation.md). `bright` is the look of data
# sets made before the setting: near-black shafts and near-white metallic jaws (tool median 143 at 0.7).
TOOL_LOOKS = {
    "measured": {
        "tool_shaft": ((0.06, 0.06, 0.065), (0.11, 0.11, 0.115), (0.03, 0.03, 0.03), 0.45, 0.6, 0.02, 200.0),
        "tool_tip": ((0.08, 0.08, 0.085), (0.14, 0.14, 0.145), (0.05, 0.05, 0.05), 0.45, 0.7, 0.05, 300.0),
    },
    "bright": {
        "tool_shaft": ((0.015, 0.015, 0.017), (0.03, 0.03, 0.035), (0.01, 0.01, 0.01), 0.30, 0.0, 0.02, 200.0),
        "tool_tip": ((0.45, 0.46, 0.48), (0.65, 0.66, 0.68), (0.30, 0.30, 0.32), 0.28, 0.55, 0.05, 300.0),
    },
}


def load_patient_meshes(patient_dir: str | Path) -> dict[str, Mesh]:
    """Read a patient folder (the layout of meshes/ and of backend.meshes imports)."""
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise MeshError(f"{patient_dir}: patient folder not found")
    meshes = {}
    for name in ORGAN_FILES:
        path = patient_dir / f"{name}.ply"
        if path.exists():
            meshes[name] = read_ply(path)
        elif name in REQUIRED:
            raise MeshError(f"{path}: missing (a patient needs at least liver.ply)")
    if "abdominal_wall" not in meshes:
        raise MeshError(f"{patient_dir / 'abdominal_wall.ply'}: missing (generate it with "
                        f"`python -m backend.meshes import`)")
    return meshes


def _matrix(m_mm: np.ndarray) -> Matrix:
    m = np.array(m_mm, dtype=np.float64)
    m[:3, 3] *= MM
    return Matrix(m.tolist())


MOTION_FRAME = 1  # the frame every render is made at; frames 0 and 2 carry the motion Cycles' vector pass reads


def _still(ob) -> None:
    """No animation on the object; its action is deleted too (else every clip frame left one behind)."""
    if ob.animation_data is not None:
        action = ob.animation_data.action
        ob.animation_data_clear()
        if action is not None and action.users == 0:
            bpy.data.actions.remove(action)


def _key_motion(ob, now: Matrix, after: Matrix) -> None:
    """Key the object's pose: `now` at the rendered frame and the one before, `after` at the one after, so
    Cycles' vector pass holds this frame's forward motion (its backward motion is zero)."""
    _still(ob)
    ob.rotation_mode = "QUATERNION"
    for frame, m in ((MOTION_FRAME - 1, now), (MOTION_FRAME, now), (MOTION_FRAME + 1, after)):
        ob.matrix_world = m
        for path in ("location", "rotation_quaternion", "scale"):
            ob.keyframe_insert(path, frame=frame)
    ob.matrix_world = now


def _new_mesh_object(name: str, mesh: Mesh, class_name: str, smooth: bool, collection) -> bpy.types.Object:
    me = bpy.data.meshes.new(name)
    me.from_pydata((mesh.vertices * MM).tolist(), [], mesh.faces.tolist())
    if smooth:
        me.shade_smooth()
    me.update()
    ob = bpy.data.objects.new(name, me)
    ob.pass_index = LABEL_IDS[class_name]
    collection.objects.link(ob)
    return ob


def _tissue_material(name: str, look: tuple) -> bpy.types.Material:
    col_a, col_b, detail, rough, metal, bump, scale = look
    mat = bpy.data.materials.new(name)
    nt = node_tree_of(mat)
    nodes, links = nt.nodes, nt.links
    bsdf = nodes["Principled BSDF"]
    coord = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")  # its Location moves the pattern per frame
    mapping.name = "mapping"
    noise = nodes.new("ShaderNodeTexNoise")  # 3D noise: 4D costs ~15% more render time
    noise.name = "noise"
    noise.inputs["Scale"].default_value = scale
    noise.inputs["Detail"].default_value = 4.0
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (*col_a, 1.0)
    ramp.color_ramp.elements[1].color = (*col_b, 1.0)
    # Sparse darker detail: vessels on the wall, lobules in fat, mottling on the liver.
    detail_noise = nodes.new("ShaderNodeTexNoise")
    detail_noise.name = "detail"
    detail_noise.inputs["Scale"].default_value = scale * 2.5
    detail_noise.inputs["Detail"].default_value = 2.0
    detail_ramp = nodes.new("ShaderNodeValToRGB")
    detail_ramp.color_ramp.elements[0].position = 0.58
    detail_ramp.color_ramp.elements[1].position = 0.66
    detail_ramp.color_ramp.elements[0].color = (0, 0, 0, 1)
    detail_ramp.color_ramp.elements[1].color = (1, 1, 1, 1)
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["B"].default_value = (*detail, 1.0)
    hsv = nodes.new("ShaderNodeHueSaturation")
    hsv.name = "hsv"
    bump_node = nodes.new("ShaderNodeBump")
    bump_node.name = "bump"
    bump_node.inputs["Strength"].default_value = bump
    bump_node.inputs["Distance"].default_value = 0.0005
    links.new(coord.outputs["Object"], mapping.inputs["Vector"])
    links.new(mapping.outputs["Vector"], noise.inputs["Vector"])
    links.new(mapping.outputs["Vector"], detail_noise.inputs["Vector"])
    links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    links.new(detail_noise.outputs["Fac"], detail_ramp.inputs["Fac"])
    links.new(detail_ramp.outputs["Color"], mix.inputs["Factor"])
    links.new(ramp.outputs["Color"], mix.inputs["A"])
    links.new(mix.outputs["Result"], hsv.inputs["Color"])
    links.new(hsv.outputs["Color"], bsdf.inputs["Base Color"])
    links.new(noise.outputs["Fac"], bump_node.inputs["Height"])
    links.new(bump_node.outputs["Normal"], bsdf.inputs["Normal"])
    bsdf.inputs["Roughness"].default_value = rough
    bsdf.inputs["Metallic"].default_value = metal
    bsdf.inputs["Specular IOR Level"].default_value = 0.5
    return mat


class ToolSlot:
    """One instrument: a shaft object and a tip object that share the tool's pose."""

    def __init__(self, index: int, kind: str, materials: dict, collection):
        self.kind = kind
        shaft, tip = tool_parts(kind, 0.0)
        self.shaft = _new_mesh_object(f"tool{index}_{kind}_shaft", shaft, "tool_shaft", True, collection)
        self.tip = _new_mesh_object(f"tool{index}_{kind}_tip", tip, "tool_tip", False, collection)
        self.shaft.data.materials.append(materials["tool_shaft"])
        self.tip.data.materials.append(materials["tool_tip"])
        self.world_parts: tuple[Mesh, Mesh] | None = None
        self.hide()

    def hide(self):
        self.shaft.hide_render = self.tip.hide_render = True

    def place(self, draw: ToolDraw) -> tuple[Mesh, Mesh]:
        shaft, tip = tool_parts(self.kind, draw.opening)
        self.tip.data.vertices.foreach_set("co", (tip.vertices * MM).astype(np.float32).ravel())
        self.tip.data.update()
        m = _matrix(draw.pose)
        self.shaft.matrix_world = m
        self.tip.matrix_world = m
        self.shaft.hide_render = self.tip.hide_render = False
        return shaft.transformed(draw.pose), tip.transformed(draw.pose)


LIFT_TREES = 16  # lifted organs' ray-casting trees kept per patient (PatientScene._lifted_trees)


def _coverage_trees(meshes: dict, face_lists: dict | None = None):
    """Ray-casting structures (mm) for the coverage estimate: every organ but the gallbladder in one tree
    with each face's class, and the gallbladder in its own. face_lists: a cache of the faces as the trees
    take them (lists), by organ names: a lift moves vertices, never faces, so a lift's trees need only its
    vertices made into lists. The trees are built from the same lists, so they are the same trees."""
    def as_list(key, faces):
        if face_lists is None:
            return faces.tolist()
        kept = face_lists.get(key)
        if kept is None or not np.array_equal(kept[0], faces):
            kept = face_lists[key] = (faces, faces.tolist())
        return kept[1]

    verts, faces, classes, n = [], [], [], 0
    for name, mesh in meshes.items():
        if name == "gallbladder":
            continue
        verts.append(mesh.vertices)
        faces.append(mesh.faces + n)
        classes.append(np.full(len(mesh.faces), LABEL_IDS[name], np.uint8))
        n += len(mesh.vertices)
    static = classes_ = None
    if verts:
        names = tuple(n for n in meshes if n != "gallbladder")
        static = BVHTree.FromPolygons(np.concatenate(verts).tolist(), as_list(names, np.concatenate(faces)),
                                      all_triangles=True)
        classes_ = np.concatenate(classes)
    gb = meshes.get("gallbladder")
    gb_tree = (BVHTree.FromPolygons(gb.vertices.tolist(), as_list(("gallbladder",), gb.faces), all_triangles=True)
               if gb is not None else None)
    return static, classes_, gb_tree


class PatientScene:
    """Everything of one patient that stays fixed over its frames."""

    def __init__(self, patient_dir: str | Path, max_tools: int, scene=None, tissue_look: str = "measured",
                 tool_look: str = "measured"):
        """Headless (scene None): start from an empty factory state, which also frees the last
        patient's data. In the UI: build into the given scene and leave the user's file alone."""
        self.meshes = load_patient_meshes(patient_dir)
        self.anatomy = Anatomy(self.meshes)
        if scene is None:
            bpy.ops.wm.read_factory_settings(use_empty=True)
            scene = bpy.context.scene
        else:
            for ob in list(scene.collection.objects):
                bpy.data.objects.remove(ob)
        self.scene = scene
        coll = scene.collection
        world = bpy.data.worlds.new("laparoscopy_dark")
        node_tree_of(world).nodes["Background"].inputs["Strength"].default_value = 0.0
        scene.world = world
        self.looks = {**LOOKS[tissue_look], **TOOL_LOOKS[tool_look]}
        self.materials = {name: _tissue_material(name, look) for name, look in self.looks.items()}
        self.organs = {}
        for name, mesh in self.meshes.items():
            ob = _new_mesh_object(name, mesh, name, True, coll)
            ob.data.materials.append(self.materials[name])
            self.organs[name] = ob
        cam_data = bpy.data.cameras.new("laparoscope")
        cam_data.sensor_fit = "HORIZONTAL"
        cam_data.clip_start = 1.0 * MM
        cam_data.clip_end = 2000.0 * MM
        self.camera = bpy.data.objects.new("laparoscope", cam_data)
        coll.objects.link(self.camera)
        scene.camera = self.camera
        light_data = bpy.data.lights.new("scope_light", "SPOT")
        light_data.shadow_soft_size = 1.5 * MM
        self.light = bpy.data.objects.new("scope_light", light_data)
        coll.objects.link(self.light)
        self.tools = [ToolSlot(i, TOOL_TYPES[i % len(TOOL_TYPES)], self.materials, coll) for i in range(max_tools)]
        # Static ray-casting structure (mm) for the cheap coverage estimate before rendering; the
        # gallbladder has its own (in its rest pose), since cholecystectomy views move it.
        self._static_bvh, self._static_classes, self._gallbladder_bvh = _coverage_trees(self.meshes)
        self._retractions = {}
        self._unmoved_trees = {}  # names of the organs a lift moves -> a tree of the others
        self._lift_trees = OrderedDict()  # id(retraction) -> trees of its lifted organs, the LIFT_TREES newest
        self._face_lists = {}  # organ names -> (their joined faces, the same as a list): lifts' trees reuse them
        self._shaped = set()  # organs whose vertices are not at rest (a lift)
        self._shaped_by = None  # the lift they show (held, so that it is compared by identity safely)

    @property
    def has_gallbladder(self) -> bool:
        return "gallbladder" in self.meshes

    @property
    def retractions(self):
        """The patient's allowed rigid turns of the gallbladder (`--retraction turn`)."""
        return self.retractions_for("turn")

    def retractions_for(self, mode: str) -> list[Retraction]:
        """The patient's allowed gallbladder retractions of `--retraction mode` (views.py), computed on first use."""
        if mode not in self._retractions:
            if not self.has_gallbladder:
                self._retractions[mode] = []
            elif mode == "turn":
                self._retractions[mode] = retraction_candidates(self.anatomy)
            else:
                self._retractions[mode] = lifted_candidates(self.anatomy, self.retractions_for("turn"))
        return self._retractions[mode]

    def _shape(self, lift: Retraction | None) -> None:
        """Organ vertices as `lift` leaves them, every other organ back at rest. Nothing to do when the last
        frame showed the same (the frames of a clip): rewriting them would make Cycles sync them again."""
        if lift is self._shaped_by:
            return
        meshes = lift.meshes() if lift is not None else {}
        for name in self._shaped | set(meshes):
            me = self.organs[name].data
            # float32, as Blender stores them: the same values as from a list, without making one (main thread)
            me.vertices.foreach_set("co", (meshes.get(name, self.meshes[name]).vertices * MM).astype(np.float32).ravel())
            me.update()
        self._shaped, self._shaped_by = set(meshes), lift

    def _lifted_trees(self, retraction: Retraction):
        """[(tree, face classes), ...] of the organs but the gallbladder, and the gallbladder's tree, as a
        lift leaves them: a tree of the organs it does not move (one per set of moved organs) and one of
        those it moves (per lift, the newest LIFT_TREES kept: 7 MB each with every organ in it)."""
        moved = frozenset(retraction.moved)
        if moved not in self._unmoved_trees:
            self._unmoved_trees[moved] = _coverage_trees(
                {n: m for n, m in self.meshes.items() if n not in moved and n != "gallbladder"})[:2]
        key = id(retraction)
        if key in self._lift_trees:
            self._lift_trees.move_to_end(key)
        else:
            if retraction.moved:
                tree, classes, gb_tree = _coverage_trees(retraction.meshes(), self._face_lists)
                self._lift_trees[key] = ([(tree, classes)], gb_tree)
            else:
                self._lift_trees[key] = ([], _coverage_trees({"gallbladder": retraction.mesh}, self._face_lists)[2])
            while len(self._lift_trees) > LIFT_TREES:
                self._lift_trees.popitem(last=False)
        trees, gb_tree = self._lift_trees[key]
        return [self._unmoved_trees[moved]] + trees, gb_tree

    # ------------------------------------------------------------------ per frame

    def pose(self, camera: CameraDraw, light: LightDraw, tools: list[ToolDraw],
             materials: dict[str, MaterialDraw], cycles_seed: int, retraction: Retraction | None = None,
             motion: tuple[CameraDraw, list[ToolDraw]] | None = None) -> None:
        """Pose the scene for one frame. motion: the next frame's camera and tools (clips with the vector
        pass), keyed on the neighbouring frame for Cycles; without it nothing is animated."""
        self.scene.cycles.seed = cycles_seed % (2 ** 31)
        if motion is not None and self.scene.frame_current != MOTION_FRAME:
            self.scene.frame_current = MOTION_FRAME
        for ob in [self.camera] + [o for slot in self.tools for o in (slot.shaft, slot.tip)]:
            _still(ob)
        if "gallbladder" in self.organs:
            lifted = retraction is not None and retraction.lift is not None
            self._shape(retraction if lifted else None)  # a lift moves vertices of several organs
            turn = retraction.matrix if retraction is not None and not lifted else np.eye(4)
            self.organs["gallbladder"].matrix_world = _matrix(turn)
        cam_blender = camera.cam_to_world @ CV_TO_BLENDER_CAMERA
        self.camera.matrix_world = _matrix(cam_blender)
        self.camera.data.lens_unit = "FOV"
        self.camera.data.angle = np.radians(camera.horizontal_fov)
        offset = np.eye(4)
        offset[:3, 3] = light.offset * np.array([1.0, -1.0, -1.0])  # OpenCV camera -> Blender camera axes
        self.light.matrix_world = _matrix(cam_blender @ offset)
        ld = self.light.data
        ld.energy = light.power
        ld.spot_size = np.radians(light.spot_size)
        ld.spot_blend = light.spot_blend
        ld.color = light.color
        for slot in self.tools:
            slot.hide()
        by_kind = {k: [s for s in self.tools if s.kind == k] for k in TOOL_TYPES}
        placed = []
        for draw in tools:
            placed.append(by_kind[draw.kind].pop(0))
            placed[-1].place(draw)
        if motion is not None:
            next_camera, next_tools = motion
            if len(next_tools) != len(tools):
                raise ValueError(f"motion: {len(next_tools)} next tools for {len(tools)} tools")
            _key_motion(self.camera, self.camera.matrix_world.copy(),
                        _matrix(next_camera.cam_to_world @ CV_TO_BLENDER_CAMERA))
            for slot, a, b in zip(placed, tools, next_tools):
                for ob in (slot.shaft, slot.tip):
                    _key_motion(ob, _matrix(a.pose), _matrix(b.pose))
        for name, draw in materials.items():
            nodes = self.materials[name].node_tree.nodes
            base_scale = self.looks[name][6]
            nodes["noise"].inputs["Scale"].default_value = base_scale * draw.noise_scale
            nodes["mapping"].inputs["Location"].default_value = (draw.detail_seed, draw.detail_seed * 0.37, 0.0)
            nodes["hsv"].inputs["Hue"].default_value = 0.5 + draw.hue
            nodes["hsv"].inputs["Saturation"].default_value = draw.saturation
            nodes["hsv"].inputs["Value"].default_value = draw.value
            nodes["bump"].inputs["Strength"].default_value = min(1.0, self.looks[name][5] * draw.bump)
            nodes["Principled BSDF"].inputs["Roughness"].default_value = min(1.0, self.looks[name][3] * draw.roughness)

    def estimate_coverage(self, camera: CameraDraw, tools: list[ToolDraw], width: int, height: int,
                          grid: tuple[int, int] = (40, 24), retraction: Retraction | None = None) -> dict[str, float]:
        """Fraction of the image per class from a coarse grid of rays (before paying for a render)."""
        tool_meshes = []
        for draw in tools:
            shaft, tip = tool_parts(draw.kind, draw.opening)
            tool_meshes += [(shaft.transformed(draw.pose), LABEL_IDS["tool_shaft"]),
                            (tip.transformed(draw.pose), LABEL_IDS["tool_tip"])]
        tool_bvh = tool_classes = None
        if tool_meshes:
            verts, faces, classes, n = [], [], [], 0
            for m, cid in tool_meshes:
                verts.append(m.vertices)
                faces.append(m.faces + n)
                classes.append(np.full(len(m.faces), cid, np.uint8))
                n += len(m.vertices)
            tool_bvh = BVHTree.FromPolygons(np.concatenate(verts).tolist(), np.concatenate(faces).tolist(),
                                            all_triangles=True)
            tool_classes = np.concatenate(classes)
        K = camera.K(width, height)
        gx, gy = grid
        us = (np.arange(gx) + 0.5) * width / gx
        vs = (np.arange(gy) + 0.5) * height / gy
        uu, vv = np.meshgrid(us, vs)
        rays = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)], 1) @ np.linalg.inv(K).T
        R = camera.cam_to_world[:3, :3]
        dirs = rays @ R.T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        eye = Vector(camera.cam_to_world[:3, 3].tolist())
        trees, gallbladder_bvh = [(self._static_bvh, self._static_classes)], self._gallbladder_bvh
        if retraction is not None and retraction.lift is not None:  # lifted organs: trees of their own
            trees, gallbladder_bvh = self._lifted_trees(retraction)
            retraction = None  # the trees are in the lifted pose already
        # The gallbladder's tree is in its rest pose: cast its rays in that frame (a rigid move keeps distances).
        to_rest = np.linalg.inv(retraction.matrix) if retraction is not None else np.eye(4)
        gb_eye = Vector((to_rest[:3, :3] @ camera.cam_to_world[:3, 3] + to_rest[:3, 3]).tolist())
        gb_dirs = (dirs @ to_rest[:3, :3].T).tolist()
        counts = np.zeros(256)
        for d, gd in zip(dirs.tolist(), gb_dirs):
            dv = Vector(d)
            cid, dist = 0, None
            for tree, classes in trees:
                _, _, idx, d = tree.ray_cast(eye, dv)
                if idx is not None and (dist is None or d < dist):
                    cid, dist = classes[idx], d
            if gallbladder_bvh is not None:
                _, _, gidx, gdist = gallbladder_bvh.ray_cast(gb_eye, Vector(gd))
                if gidx is not None and (dist is None or gdist < dist):
                    cid, dist = LABEL_IDS["gallbladder"], gdist
            if tool_bvh is not None:
                tloc, _, tidx, tdist = tool_bvh.ray_cast(eye, dv)
                if tidx is not None and (dist is None or tdist < dist):
                    cid = tool_classes[tidx]
            counts[cid] += 1
        frac = counts / len(dirs)
        return {
            "liver": float(frac[LABEL_IDS["liver"]]),
            "gallbladder": float(frac[LABEL_IDS["gallbladder"]]),
            "tools": float(frac[LABEL_IDS["tool_shaft"]] + frac[LABEL_IDS["tool_tip"]]),
        }
