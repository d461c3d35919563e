"""Random laparoscope, light, tool and material draws: pure functions of a numpy Generator.

Nothing here knows about Blender. The renderer feeds the draws to the scene; the tests check
them against the meshes directly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from .core.errors import InputError
from .core.geometry import (
    Mesh,
    inside,
    intrinsics,
    look_at,
    nearest_vertex_distance,
    normalize,
    rotation_about,
    segment_hits,
)

HEAD = np.array([0.0, 1.0, 0.0])  # image up points towards the patient's head
ORGANS = ("liver", "gallbladder", "fat", "ligament")  # solid tissue the camera and tools avoid
TOOL_TYPES = ("grasper", "hook")
SHAFT_RADIUS = 2.6  # 5 mm instruments
SHAFT_LENGTH = 360.0


class SamplingError(InputError):
    """A patient whose anatomy leaves no valid laparoscope view (e.g. the liver outside the wall)."""


@dataclass
class Anatomy:
    """The meshes of one patient (moved ones in a retraction's copy); what the samplers derive from a mesh
    (normals, triangle arrays) is made on first use and kept with that mesh."""

    meshes: dict[str, Mesh]

    def __post_init__(self):
        for mesh in self.meshes.values():  # asked over every frame of the patient (moved copies are not)
            mesh.remember_inside()

    # Vertex normals, made on first use and kept with the mesh: a lifted liver's are needed only by the
    # samplers that read them, not for every lift drawn (3 ms each).
    @property
    def liver_normals(self) -> np.ndarray:
        return self.meshes["liver"].normals

    @property
    def wall_normals(self) -> np.ndarray:
        return self.meshes["abdominal_wall"].normals

    def with_mesh(self, name: str, mesh: Mesh) -> "Anatomy":
        """The same patient with one organ moved (a retracted gallbladder); normals are shared."""
        return self.with_meshes({name: mesh})

    def with_meshes(self, meshes: dict[str, Mesh]) -> "Anatomy":
        """The same patient with these organs moved (the liver's normals follow a moved liver)."""
        other = copy.copy(self)
        other.meshes = {**self.meshes, **meshes}
        return other

    def in_free_space(self, points: np.ndarray, organ_margin: float = 0.0, wall_margin: float = 0.0) -> np.ndarray:
        """Inside the wall and outside every solid organ (by winding numbers), with margins in mm."""
        points = np.atleast_2d(points)
        ok = inside(points, self.meshes["abdominal_wall"])
        if wall_margin > 0:
            ok &= nearest_vertex_distance(points, self.meshes["abdominal_wall"]) > wall_margin
        for name in ORGANS:
            if name in self.meshes and ok.any():
                m = self.meshes[name]
                ok &= ~inside(points, m)
                if organ_margin > 0:
                    ok &= nearest_vertex_distance(points, m) > organ_margin
        return ok


@dataclass
class CameraDraw:
    cam_to_world: np.ndarray  # 4x4, OpenCV axes, millimetres
    horizontal_fov: float  # degrees
    optics: int  # 0 or 30 degree laparoscope
    scope_axis: np.ndarray  # unit vector of the telescope shaft, world
    target: np.ndarray  # the liver point it aims at, world mm

    def K(self, width: int, height: int) -> np.ndarray:
        return intrinsics(width, height, self.horizontal_fov)


@dataclass
class LightDraw:
    power: float  # watts (Cycles spot light)
    spot_size: float  # degrees
    spot_blend: float
    color: tuple[float, float, float]
    offset: np.ndarray  # mm, in the camera frame
    exposure: float  # stops applied to the linear image before sRGB encoding


@dataclass
class ToolDraw:
    kind: str
    pose: np.ndarray  # 4x4 world: origin at the tool tip point, +z along the shaft towards the tip
    trocar: np.ndarray  # world point where the shaft enters the wall
    opening: float  # jaw opening in degrees (grasper), 0 for the hook
    holds: str = ""  # what its jaws hold ("gallbladder fundus"), empty when free

    @property
    def tip(self) -> np.ndarray:
        return self.pose[:3, 3]


@dataclass
class MaterialDraw:
    hue: float  # small shifts of the tissue's base colour
    saturation: float
    value: float
    noise_scale: float
    bump: float
    roughness: float
    detail_seed: float


TISSUES = ("liver", "gallbladder", "fat", "ligament", "abdominal_wall", "tool_shaft", "tool_tip")


def field_of_view(rng: np.random.Generator, diagonal_fov: tuple[float, float], width: int, height: int) -> float:
    """Horizontal field of view (degrees) of a lens whose diagonal one is drawn from diagonal_fov."""
    diag = np.radians(rng.uniform(*diagonal_fov))
    aspect = width / height
    return float(2 * np.degrees(np.arctan(np.tan(diag / 2) * aspect / np.hypot(aspect, 1))))


def scope_axis_of(cam: np.ndarray, optics: int) -> np.ndarray:
    """A 30-degree scope views 30 degrees off its shaft; the shaft lies behind, tilted towards the image top."""
    return rotation_about(cam[:3, 0], np.radians(optics)) @ cam[:3, 2]


def sample_camera(rng: np.random.Generator, anatomy: Anatomy, width: int, height: int,
                  distance=(45.0, 150.0), diagonal_fov=(70.0, 90.0), max_tries: int = 200) -> CameraDraw:
    """A laparoscope pose in free space, aimed at a liver surface point, image up to the head."""
    liver = anatomy.meshes["liver"]
    # Laparoscopes enter around the umbilicus and look up at the liver from below and in front.
    typical = normalize(np.array([0.0, -0.55, 0.85]))
    facing = anatomy.liver_normals @ typical > 0.1
    candidates = np.flatnonzero(facing)
    if len(candidates) == 0:
        candidates = np.arange(len(liver.vertices))
    for _ in range(max_tries):
        vi = rng.choice(candidates)
        target = liver.vertices[vi]
        direction = normalize(0.6 * anatomy.liver_normals[vi] + typical + rng.normal(0, 0.35, 3))
        eye = target + direction * rng.uniform(*distance)
        view = normalize(target - eye)
        if abs(view @ HEAD) > 0.92:
            continue  # looking straight up or down the body axis: no stable "up"
        if not anatomy.in_free_space(eye[None], organ_margin=6.0, wall_margin=6.0)[0]:
            continue
        hfov = field_of_view(rng, diagonal_fov, width, height)
        cam = look_at(eye, target, HEAD)
        optics = int(rng.choice([0, 30]))
        return CameraDraw(cam, hfov, optics, scope_axis_of(cam, optics), target.copy())
    raise SamplingError(f"no free camera position found in {max_tries} tries (is the liver inside the wall?)")


def sample_light(rng: np.random.Generator) -> LightDraw:
    warm = rng.uniform(0.0, 0.12)
    return LightDraw(
        power=float(rng.uniform(0.8, 1.6)),
        spot_size=float(rng.uniform(110, 150)),
        spot_blend=float(rng.uniform(0.4, 0.9)),
        color=(1.0, float(1.0 - warm * 0.5), float(1.0 - warm)),
        offset=rng.uniform(-3, 3, 3) * np.array([1, 1, 0]),
        exposure=float(rng.uniform(-0.4, 0.4)),
    )


def tool_pose(axis: np.ndarray, tip: np.ndarray, roll: float) -> np.ndarray:
    """4x4 tool frame: origin at the tip, +z along the shaft towards the tip, rolled by `roll` radians."""
    ref = normalize(np.cross(axis, [0.0, 0.0, 1.0]) if abs(axis[2]) < 0.95 else np.cross(axis, [1.0, 0, 0]))
    x = rotation_about(axis, roll) @ ref
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, np.cross(axis, x), axis, tip
    return pose


def sample_tools(rng: np.random.Generator, anatomy: Anatomy, camera: CameraDraw, count: int,
                 width: int, height: int, max_tries: int = 60, placed: list[ToolDraw] = ()) -> list[ToolDraw]:
    """Tools entering from trocar points in the anterior wall with their tips in view, after the
    `placed` ones (which take the first scene slots and keep their tips apart from the new ones)."""
    wall = anatomy.meshes["abdominal_wall"]
    cam = camera.cam_to_world
    eye = cam[:3, 3]
    K = camera.K(width, height)
    target_depth = (camera.target - eye) @ cam[:3, 2]
    anterior = np.flatnonzero((anatomy.wall_normals[:, 2] > 0.45) & (wall.vertices[:, 1] < camera.target[1] + 40))
    if len(anterior) == 0:
        anterior = np.flatnonzero(anatomy.wall_normals[:, 2] > 0.2)
    tools: list[ToolDraw] = list(placed)
    for t in range(len(placed), len(placed) + count):
        kind = TOOL_TYPES[t % len(TOOL_TYPES)]  # slot t of the scene holds this kind
        for _ in range(max_tries):
            u = rng.uniform(0.1, 0.9) * width
            v = rng.uniform(0.25, 0.95) * height
            ray = np.linalg.solve(K, np.array([u, v, 1.0]))
            depth = rng.uniform(0.35, 0.85) * target_depth
            if depth < 20.0:
                continue
            tip = eye + cam[:3, :3] @ (ray * depth)
            trocar = wall.vertices[rng.choice(anterior)]
            span = np.linalg.norm(tip - trocar)
            if not 60.0 < span < SHAFT_LENGTH - 40.0:
                continue
            axis = normalize(tip - trocar)
            # Tip in free space and a shaft that crosses no organ surface: the whole shaft is outside tissue.
            if not anatomy.in_free_space(tip[None])[0]:
                continue
            if any(segment_hits(anatomy.meshes[n], trocar, tip) for n in ORGANS if n in anatomy.meshes):
                continue
            w = eye - trocar
            closest = np.linalg.norm(w - (w @ axis) * axis)
            if closest < 10.0:
                continue
            if any(np.linalg.norm(tip - o.tip) < 12.0 for o in tools):
                continue
            pose = tool_pose(axis, tip, rng.uniform(0, 2 * np.pi))
            opening = float(rng.uniform(0, 45)) if kind == "grasper" else 0.0
            tools.append(ToolDraw(kind, pose, trocar.copy(), opening))
            break
    return tools[len(placed):]


def sample_materials(rng: np.random.Generator) -> dict[str, MaterialDraw]:
    return {
        name: MaterialDraw(
            hue=float(rng.uniform(-0.02, 0.02)),
            saturation=float(rng.uniform(0.85, 1.15)),
            value=float(rng.uniform(0.8, 1.2)),
            noise_scale=float(rng.uniform(0.7, 1.4)),
            bump=float(rng.uniform(0.5, 1.5)),
            roughness=float(rng.uniform(0.8, 1.2)),
            detail_seed=float(rng.uniform(0, 1000)),
        )
        for name in TISSUES
    }
