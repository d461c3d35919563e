"""View presets: what the laparoscope looks at, and the scene changes a view brings (numpy, no bpy).

- `liver`: the paper's liver task; the camera aims at a random liver surface point facing the
  umbilicus (sampling.sample_camera). Today's distribution, draw for draw.
- `cholecystectomy`: what a surgeon's laparoscope shows while removing the gallbladder. The camera
  aims at the gallbladder neck and the hepatocystic region (between the neck and the liver) or at
  the gallbladder body, from 45-110 mm (CHOLECYSTECTOMY_DISTANCE), closer than the liver views
  (45-150 mm): during dissection the scope is brought close to the triangle, and at this distance
  the gallbladder fills a share of the image near the real one (Endoscapes median 0.17). The
  gallbladder is retracted by a grasper whose jaws meet the fundus (FUNDUS_GRASPER_SHARE of frames when
  tools are allowed): `--retraction lift` (the default) pushes the fundus towards the head and lifts the
  liver's edge with it (a smooth one-to-one warp of the organs, below); `turn` only turns the gallbladder
  rigidly about its neck, away from its bed (data sets made before the lift). Frames without that
  grasper show the gallbladder at rest. Besides it, 1 to max_tools-1 working
  tools with their tips in view (none in NO_WORKING_TOOL_SHARE of frames).
- `mixed`: each frame is a cholecystectomy view with probability MIXED_CHOLECYSTECTOMY_SHARE,
  otherwise a liver view.

Patients without a gallbladder cannot give cholecystectomy views: `cholecystectomy` leaves them out
of a data set (render.py says so, and refuses one named in --patients); `mixed` gives them liver
views only (recorded in each frame's meta).

Every draw is a pure function of the frame's numpy Generator, as in sampling.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .core.geometry import (
    Mesh,
    icosphere,
    look_at,
    nearest_vertices,
    normalize,
    rotation_about,
    segment_hits,
    vertex_normals,
)
from .sampling import (
    HEAD,
    ORGANS,
    SHAFT_LENGTH,
    Anatomy,
    CameraDraw,
    SamplingError,
    ToolDraw,
    field_of_view,
    scope_axis_of,
    tool_pose,
)

VIEWS = ("liver", "cholecystectomy", "mixed")
MIXED_CHOLECYSTECTOMY_SHARE = 0.5
CHOLECYSTECTOMY_DISTANCE = (45.0, 110.0)  # mm from the aimed point
NECK_TARGET_SHARE = 0.5  # cholecystectomy views aimed at the neck / hepatocystic region, else the body
FUNDUS_GRASPER_SHARE = 0.8  # frames (with tools allowed) where a grasper holds the fundus up
# Besides it, 1..max_tools-1 working tools (hook, second grasper) with tips in view, except in this share of
# frames: real cholecystectomy frames show an instrument in 94% of frames (Endoscapes-Seg50).
NO_WORKING_TOOL_SHARE = 0.06
# Retraction: the gallbladder turns about its neck, its fundus lifted off the liver bed, by one of
# RETRACTION_ANGLES towards one of the directions of a 42-point sphere that lie within 70 degrees of
# the bed's outward normal. The surgeon pushes the fundus towards the head over the liver, which lifts
# the (soft) liver; our organs are rigid, and every cranial turn of the default patients' gallbladders
# passes through the liver (checked on patients 01-06), so the turn goes away from the bed instead:
# the liver underside and the space between neck and liver (the triangle) open up all the same. A bending
# gallbladder would not fix it: bench/retraction_bench.py finds no cranial bend for patients 03, 05, 06.
# `--retraction lift` (below) moves the liver with the fundus instead.
RETRACTION_ANGLES = (25.0, 45.0)  # degrees
# Lift: the surgeon's push of the fundus towards the head, which lifts the (soft) liver edge with it, as
# a warp of every organ (gallbladder, liver, fat, ligament; not the wall): x -> x + t * phi(|x - c| / r)
# with phi(s) = (1 - s^2)^3 inside the radius r around the fundus c, 0 outside. Such a warp is one-to-one
# when |t| * max|phi'| / r < 1 (the identity plus a contraction), max|phi'| = 1.717, so organs that did
# not intersect still do not, and none folds onto itself; LIFT_SHIFTS keep |t| / r <= 0.29, where the
# Jacobian's determinant (1 + t . grad(phi), the displacement's gradient being of rank one) stays above
# 0.5. The lift starts from the gallbladder at rest and from each allowed turn, towards the head or the
# head and the abdominal wall, by LIFT_SHIFTS of r; r is 1.4 times the gallbladder's length within
# LIFT_RADIUS, so the neck (one length away) moves by 12% of the shift at most (gallbladders of 57 mm and
# longer; the bundled ones are 73-93), and the fundus by 20-38 mm (patients 01-06; bench/view_stats.py:
# median 13 mm towards the head over the drawn frames, where the turns alone move it 15 mm away from it).
# Lifts that would take a vertex out of the wall (or within 1 mm of it) are left out.
# bench/retraction_bench.py: a rigid or bending gallbladder alone cannot go towards the head without
# entering the rigid liver.
LIFT_SHIFTS = (0.2, 0.29)  # of the radius
LIFT_RADIUS = (80.0, 140.0)  # mm
LIFT_RADIUS_PER_LENGTH = 1.4  # of the gallbladder's length
LIFT_PHI_SLOPE = 1.717  # max |d/ds (1 - s^2)^3| on [0, 1], at s = 1 / sqrt(5)
ANTERIOR = np.array([0.0, 0.0, 1.0])  # towards the abdominal wall (sampling.py: trocars where wall normals have z > 0)
LIFTED_ORGANS = ORGANS  # the wall stays: trocars and the camera's port are in it


def frame_view(rng: np.random.Generator, view: str, has_gallbladder: bool) -> str:
    """The preset of one frame: `liver` or `cholecystectomy`. Draws from rng only for `mixed`, so
    liver-view data sets consume the generator exactly as before presets existed."""
    if view == "liver":
        return "liver"
    if view == "cholecystectomy":
        if not has_gallbladder:
            raise SamplingError("a cholecystectomy view needs a gallbladder")
        return "cholecystectomy"
    chole = rng.uniform() < MIXED_CHOLECYSTECTOMY_SHARE
    return "cholecystectomy" if chole and has_gallbladder else "liver"


# ----------------------------------------------------------------------------- the gallbladder

@dataclass
class GallbladderAxis:
    neck: np.ndarray  # the cranial end of the long axis (a vertex), world mm
    fundus: np.ndarray  # the other end
    axis: np.ndarray  # unit, neck -> fundus
    length: float

    def position(self, points: np.ndarray) -> np.ndarray:
        """0 at the neck, 1 at the fundus, along the axis."""
        return (points - self.neck) @ self.axis / self.length


def gallbladder_axis(mesh: Mesh) -> GallbladderAxis:
    """Long axis by PCA; the neck is the cranial end (the gallbladder hangs from the hilum, its fundus
    points down and forward past the liver's lower edge)."""
    v = mesh.vertices
    axis = np.linalg.svd(v - v.mean(0), full_matrices=False)[2][0]
    a, b = v[np.argmax(v @ axis)], v[np.argmin(v @ axis)]
    neck, fundus = (a, b) if a[1] >= b[1] else (b, a)
    d = fundus - neck
    return GallbladderAxis(neck.copy(), fundus.copy(), normalize(d), float(np.linalg.norm(d)))


@dataclass
class Lift:
    """x -> x + shift * (1 - |x - centre|^2 / radius^2)^3 within the radius (views.py, Lift)."""

    centre: np.ndarray  # world mm: the fundus before the lift
    radius: float  # mm
    shift: np.ndarray  # world mm: how far the centre moves

    def __call__(self, points: np.ndarray) -> np.ndarray:
        w = np.clip(1.0 - ((points - self.centre) ** 2).sum(axis=1) / self.radius ** 2, 0.0, None) ** 3
        return points + w[:, None] * self.shift

    def record(self) -> dict:
        return {"centre_world": self.centre.tolist(), "radius_mm": self.radius, "shift_world": self.shift.tolist()}


@dataclass
class Retraction:
    """The gallbladder turned rigidly about its neck (identity: at rest), then, with a lift, every organ
    near its fundus warped towards the head."""

    name: str  # e.g. "towards [0.0, -0.53, 0.85] by 45 deg"
    angle: float  # degrees
    matrix: np.ndarray  # 4x4 world -> world: the turn
    mesh: Mesh  # the moved gallbladder (turned, then lifted)
    fundus: np.ndarray  # where the grasper's jaws meet it, world mm
    fundus_normal: np.ndarray  # outward, at the fundus
    lift: Lift | None = None
    moved: dict[str, Mesh] = field(default_factory=dict)  # other organs the lift moved

    def record(self) -> dict:
        return {"name": self.name, "angle_deg": self.angle, "matrix_world": self.matrix.tolist(),
                "fundus_world": self.fundus.tolist(), **({"lift": self.lift.record()} if self.lift else {})}

    def meshes(self) -> dict[str, Mesh]:
        """Every organ that is not at rest: the gallbladder and what the lift moved."""
        return {**self.moved, "gallbladder": self.mesh}

    def apply(self, anatomy: Anatomy) -> Anatomy:
        """The patient with this retraction. Fresh Mesh objects: the samplers' cached triangle and edge arrays
        (2.5 MB for a liver) then go with this frame's draw instead of staying with each of a patient's
        ~100 lifts (370 MB over a 500-frame run: bench/render_bench.py --view cholecystectomy)."""
        return anatomy.with_meshes({n: Mesh(m.vertices, m.faces) for n, m in self.meshes().items()})


def _turn(pivot: np.ndarray, R: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = pivot - R @ pivot
    return m


def _outside_distance(points: np.ndarray, mesh: Mesh, normals: np.ndarray) -> np.ndarray:
    """Signed distance to the nearest vertex along its normal: > 0 outside a dense closed mesh, < 0 inside
    (the pseudo-normal test; it agreed with winding numbers on every vertex of the default patients'
    retracted gallbladders, and is ~8x faster)."""
    points = np.asarray(points, dtype=np.float64)
    j = nearest_vertices(points, mesh.vertices)
    return np.einsum("ij,ij->i", points - mesh.vertices[j], normals[j])


def collides(gallbladder: Mesh, anatomy: Anatomy, step: int = 3, gallbladder_normals: np.ndarray | None = None) -> str | None:
    """Why a gallbladder pose is not allowed (None: allowed): a vertex of it inside the liver, a liver
    vertex inside it, or a vertex of it outside the wall. Every `step`-th vertex is tested (the default
    patients' gallbladders have ~2.5k vertices 2-3 mm apart)."""
    liver, wall = anatomy.meshes["liver"], anatomy.meshes["abdominal_wall"]
    g = gallbladder.vertices[::step]
    if (_outside_distance(g, liver, anatomy.liver_normals) < 0).any():
        return "inside the liver"
    lo, hi = gallbladder.bounds()
    near = liver.vertices[np.all((liver.vertices > lo - 1) & (liver.vertices < hi + 1), axis=1)]
    gn = vertex_normals(gallbladder) if gallbladder_normals is None else gallbladder_normals
    if len(near) and (_outside_distance(near, gallbladder, gn) < 0).any():
        return "the liver inside it"
    if (_outside_distance(g, wall, anatomy.wall_normals) > 0).any():
        return "outside the abdominal wall"
    return None


def bed_normal(anatomy: Anatomy, ax: GallbladderAxis) -> np.ndarray:
    """Outward liver normal where the gallbladder body lies (its bed)."""
    gb, liver = anatomy.meshes["gallbladder"], anatomy.meshes["liver"]
    body = gb.vertices[np.abs(ax.position(gb.vertices) - 0.5) < 0.25]
    return normalize(anatomy.liver_normals[np.unique(nearest_vertices(body, liver.vertices))].mean(axis=0))


def retraction_candidates(anatomy: Anatomy) -> list[Retraction]:
    """Every allowed retraction of this patient's gallbladder (a pure function of the meshes; computed
    once per patient). Empty when none is allowed: frames then show it at rest."""
    gb = anatomy.meshes["gallbladder"]
    ax = gallbladder_axis(gb)
    bed = bed_normal(anatomy, ax)
    normals = vertex_normals(gb)
    fundus_normal = normals[np.argmin(np.linalg.norm(gb.vertices - ax.fundus, axis=1))]
    out = []
    for goal in icosphere(1).vertices:
        if goal @ bed < np.cos(np.radians(70)) or abs(goal @ ax.axis) > 0.95:
            continue
        for angle in RETRACTION_ANGLES:
            R = rotation_about(normalize(np.cross(ax.axis, goal)), np.radians(angle))
            m = _turn(ax.neck, R)
            moved = gb.transformed(m)
            if collides(moved, anatomy, gallbladder_normals=normals @ R.T) is None:
                out.append(Retraction(f"towards {np.round(goal, 2).tolist()} by {angle:.0f} deg", float(angle), m,
                                      moved, R @ (ax.fundus - ax.neck) + ax.neck, R @ fundus_normal))
    return out


def lifted_candidates(anatomy: Anatomy, turns: list[Retraction]) -> list[Retraction]:
    """`--retraction lift`: from the gallbladder at rest and from each allowed turn, the fundus pushed
    towards the head (or the head and the wall) by each of LIFT_SHIFTS, the organs around it warped with
    it (Lift). Allowed when nothing that was inside the abdominal wall leaves it; the warp being one-to-one,
    the organs cannot come to intersect (tests check it with winding numbers)."""
    gb = anatomy.meshes["gallbladder"]
    ax = gallbladder_axis(gb)
    radius = float(np.clip(LIFT_RADIUS_PER_LENGTH * ax.length, *LIFT_RADIUS))
    normals = vertex_normals(gb)
    at_fundus = int(np.argmin(np.linalg.norm(gb.vertices - ax.fundus, axis=1)))
    rest = Retraction("at rest", 0.0, np.eye(4), gb, ax.fundus.copy(), normals[at_fundus])
    wall = anatomy.meshes["abdominal_wall"]

    def depth(points):  # signed distance to the wall, < 0 inside
        return _outside_distance(points, wall, anatomy.wall_normals)

    organs = {n: m for n, m in anatomy.meshes.items() if n in LIFTED_ORGANS and n != "gallbladder"}
    rest_depth = {n: depth(m.vertices) for n, m in organs.items()}
    out = []
    for base in [rest] + turns:
        before = {**organs, "gallbladder": base.mesh}
        depths = {**rest_depth, "gallbladder": depth(base.mesh.vertices)}
        for direction in (HEAD, normalize(HEAD + 0.5 * ANTERIOR)):
            for share in LIFT_SHIFTS:
                lift = Lift(base.fundus.copy(), radius, share * radius * direction)
                after, escaped = {}, False
                for name, mesh in before.items():
                    moved = lift(mesh.vertices)
                    step = np.linalg.norm(moved - mesh.vertices, axis=1)
                    if not (step > 1e-3).any():
                        continue
                    # No vertex inside the wall may come within 1 mm of it (nor closer than it was): only
                    # one that moved at least its depth less 1 mm can (2 mm more for the approximation).
                    d0 = depths[name]
                    near = (d0 < 0) & (step > 1e-3) & (d0 + step > -3.0)
                    if near.any() and (depth(moved[near]) > np.maximum(-1.0, d0[near])).any():
                        escaped = True
                        break
                    after[name] = Mesh(moved, mesh.faces)
                if escaped:
                    continue
                lifted_gb = after.get("gallbladder", base.mesh)
                n_lifted = vertex_normals(lifted_gb)
                fundus = lift(base.fundus[None])[0]
                out.append(Retraction(f"{base.name}, lifted {np.round(lift.shift, 1).tolist()} mm", base.angle,
                                      base.matrix, lifted_gb, fundus, n_lifted[at_fundus], lift,
                                      {k: v for k, v in after.items() if k != "gallbladder"}))
    return out


# ----------------------------------------------------------------------------- camera and tools

def sample_cholecystectomy_camera(rng: np.random.Generator, anatomy: Anatomy, gallbladder: Mesh,
                                  width: int, height: int, distance=CHOLECYSTECTOMY_DISTANCE,
                                  diagonal_fov=(70.0, 90.0), max_tries: int = 200) -> CameraDraw:
    """A laparoscope from below and in front (through the umbilicus), aimed at the gallbladder neck /
    hepatocystic region or at its body, image up to the head."""
    ax = gallbladder_axis(gallbladder)
    s = ax.position(gallbladder.vertices)
    liver = anatomy.meshes["liver"]
    typical = normalize(np.array([0.0, -0.55, 0.85]))
    for _ in range(max_tries):
        if rng.uniform() < NECK_TARGET_SHARE:
            pool = np.flatnonzero(s < 0.35)
            target = gallbladder.vertices[rng.choice(pool)]
            # The hepatocystic triangle lies between the neck and the liver: pull the aim towards it.
            nearest = liver.vertices[np.argmin(np.linalg.norm(liver.vertices - target, axis=1))]
            target = target + rng.uniform(0.0, 0.5) * (nearest - target)
        else:
            pool = np.flatnonzero((s >= 0.35) & (s <= 0.85))
            target = gallbladder.vertices[rng.choice(pool)]
        direction = normalize(typical + rng.normal(0, 0.3, 3))
        eye = target + direction * rng.uniform(*distance)
        view = normalize(target - eye)
        if abs(view @ HEAD) > 0.92:
            continue
        if not anatomy.in_free_space(eye[None], organ_margin=5.0, wall_margin=5.0)[0]:
            continue
        if any(segment_hits(anatomy.meshes[n], eye, target + 3.0 * (eye - target) / np.linalg.norm(eye - target))
               for n in ORGANS if n in anatomy.meshes):
            continue  # the aimed point hidden behind tissue
        hfov = field_of_view(rng, diagonal_fov, width, height)
        cam = look_at(eye, target, HEAD)
        optics = int(rng.choice([0, 30]))
        return CameraDraw(cam, hfov, optics, scope_axis_of(cam, optics), target.copy())
    raise SamplingError(f"no free camera position near the gallbladder in {max_tries} tries")


def sample_fundus_grasper(rng: np.random.Generator, anatomy: Anatomy, retraction: Retraction,
                          max_tries: int = 60) -> ToolDraw | None:
    """A grasper entering from the patient's right flank (the surgeon's assistant port) whose closed-ish
    jaws meet the fundus; its shaft crosses no organ. None when no trocar gives a free shaft."""
    wall = anatomy.meshes["abdominal_wall"]
    normals = anatomy.wall_normals
    tip = retraction.fundus + 1.5 * retraction.fundus_normal
    # +X is the patient's left: the right flank is at smaller x, caudal to the fundus.
    meshes = {**anatomy.meshes, "gallbladder": retraction.mesh}
    ports = np.flatnonzero((normals[:, 2] > 0.2) & (wall.vertices[:, 0] < tip[0] - 20)
                           & (wall.vertices[:, 1] < tip[1] + 30))
    if len(ports) == 0:
        return None
    for _ in range(max_tries):
        trocar = wall.vertices[rng.choice(ports)]
        span = np.linalg.norm(tip - trocar)
        if not 60.0 < span < SHAFT_LENGTH - 40.0:
            continue
        axis = normalize(tip - trocar)
        stop = tip - 4.0 * axis  # the jaws touch the fundus; the shaft must stay clear of everything
        if any(segment_hits(meshes[n], trocar, stop) for n in ORGANS if n in meshes):
            continue
        pose = tool_pose(axis, tip, rng.uniform(0, 2 * np.pi))
        return ToolDraw("grasper", pose, trocar.copy(), float(rng.uniform(5, 20)), holds="gallbladder fundus")
    return None


# ----------------------------------------------------------------------------- field of view

# Measured on the 419 Endoscapes-Seg50 frames (854x480) by fitting a circle to the edge of the bright
# region, row by row (bench/fov_measure.py): 307 fits with a median residual under 3 px give, as
# 5th-95th percentiles, radius / width 0.38-0.54 (median 0.43), centre x / width 0.46-0.54, centre
# y / height 0.42-0.53; 48 frames (11%) show no border at all (zoomed scopes).
FOV_NO_BORDER_SHARE = 0.11
FOV_RADIUS = (0.38, 0.54)  # of the image width
FOV_CENTRE_X = (0.46, 0.54)  # of the width
FOV_CENTRE_Y = (0.42, 0.53)  # of the height
OUTSIDE_FOV = 8  # class id of pixels outside the circular field of view (dataset format 2)


@dataclass
class FovDraw:
    centre: tuple[float, float] | None  # pixels (x, y); None: no border in this frame
    radius: float  # pixels

    def record(self) -> dict:
        return {"shape": "circle" if self.centre else "none", "centre_px": self.centre, "radius_px": self.radius}


def sample_fov(rng: np.random.Generator, width: int, height: int) -> FovDraw:
    if rng.uniform() < FOV_NO_BORDER_SHARE:
        return FovDraw(None, 0.0)
    r = rng.uniform(*FOV_RADIUS) * width
    cx, cy = rng.uniform(*FOV_CENTRE_X) * width, rng.uniform(*FOV_CENTRE_Y) * height
    return FovDraw((float(cx), float(cy)), float(r))


def fov_masks(fov: FovDraw, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, inside): the share of each pixel inside the circle (float32 (H, W), 4x4 supersampled,
    so the image's edge is anti-aliased as a lens's is) and the label rule, a pixel is inside when its
    centre is (bool (H, W)). All ones / True without a border."""
    if fov.centre is None:
        return np.ones((height, width), np.float32), np.ones((height, width), bool)
    cx, cy, r2 = fov.centre[0], fov.centre[1], fov.radius ** 2
    o = (np.arange(4) + 0.5) / 4
    # Only pixels the circle's edge may cross need their 16 subsamples: the nearest and farthest points of
    # each pixel square decide the rest (with a margin far above rounding, so the counts are the same).
    xd, yd = np.abs(np.arange(width) + 0.5 - cx), np.abs(np.arange(height) + 0.5 - cy)
    near = np.maximum(xd - 0.5, 0)[None] ** 2 + np.maximum(yd - 0.5, 0)[:, None] ** 2
    far = (xd + 0.5)[None] ** 2 + (yd + 0.5)[:, None] ** 2
    count = np.where(far < r2 * (1 - 1e-9), 16, 0).astype(np.uint8)
    v, u = np.nonzero((far >= r2 * (1 - 1e-9)) & (near <= r2 * (1 + 1e-9)))
    xs = u[:, None, None] + o[None, None, :]
    ys = v[:, None, None] + o[None, :, None]
    count[v, u] = ((xs - cx) ** 2 + (ys - cy) ** 2 <= r2).sum(axis=(1, 2))
    coverage = count.astype(np.float32) / 16
    yc, xc = np.arange(height)[:, None] + 0.5, np.arange(width)[None] + 0.5
    return coverage, (xc - cx) ** 2 + (yc - cy) ** 2 <= r2
