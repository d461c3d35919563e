"""Seeded generator of default patients: liver, gallbladder, fat, falciform ligament, abdominal wall.

Every organ is an implicit shape (smooth unions and differences of ellipsoids) that is turned
into a mesh by casting rays from an interior centre through the vertices of an icosphere and
finding the outermost surface crossing. The result is watertight, manifold and outward by
construction, and its triangle count is fixed by the icosphere level.

Scene axes (millimetres): +X patient's left, +Y cranial (head), +Z anterior (towards the
inflated abdominal wall). Numpy only: no bpy, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from blender_addon.core.geometry import Mesh, icosphere, rotation_about, vertex_normals

ORGANS = ("liver", "gallbladder", "fat", "ligament", "abdominal_wall")


# ----------------------------------------------------------------------------- implicit shapes

def ellipsoid(p: np.ndarray, center, radii, rotation: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (negative inside) to an ellipsoid, in millimetres."""
    q = p - np.asarray(center, float)
    if rotation is not None:
        q = q @ rotation  # world -> local: R^T q, written as q @ R
    r = np.asarray(radii, float)
    k = np.linalg.norm(q / r, axis=-1)
    return (k - 1.0) * r.min()


def smooth_union(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def smooth_subtract(a, b, k):
    """a minus b."""
    return -smooth_union(-a, b, k)


def extract(field, center: np.ndarray, max_radius: float, level: int, smooth: int = 2) -> Mesh:
    """Mesh of the region field < 0 as seen from center (outermost crossing along each ray)."""
    sphere = icosphere(level)
    dirs = sphere.vertices
    steps = 160
    t = np.linspace(0.0, max_radius, steps)
    pts = center[None, None, :] + dirs[:, None, :] * t[None, :, None]
    vals = field(pts.reshape(-1, 3)).reshape(len(dirs), steps)
    inside = vals < 0
    if not inside[:, 0].all():
        raise ValueError("extraction centre lies outside the shape")
    last = steps - 1 - np.argmax(inside[:, ::-1], axis=1)  # outermost inside sample
    if np.any(last == steps - 1):
        raise ValueError("shape reaches max_radius; increase it")
    lo, hi = t[last], t[last + 1]
    for _ in range(24):
        mid = (lo + hi) / 2
        v = field(center + dirs * mid[:, None])
        inner = v < 0
        lo = np.where(inner, mid, lo)
        hi = np.where(inner, hi, mid)
    radius = (lo + hi) / 2
    # Light Laplacian smoothing of the radius removes stair-steps where rays graze the surface.
    f = sphere.faces
    nbr_sum = np.zeros(len(dirs))
    nbr_cnt = np.zeros(len(dirs))
    for a, _b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)):
        np.add.at(nbr_cnt, f[:, a], 1)
    for _ in range(smooth):
        nbr_sum[:] = 0
        for a, b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)):
            np.add.at(nbr_sum, f[:, a], radius[f[:, b]])
        radius = 0.5 * radius + 0.5 * nbr_sum / nbr_cnt
    return Mesh(center + dirs * radius[:, None], f.copy())


# ----------------------------------------------------------------------------- patients

@dataclass
class PatientSpec:
    name: str
    seed: int
    gallbladder: bool


def default_patients() -> list[PatientSpec]:
    """6 patients with gallbladder and 4 liver-staging patients without, as in the paper."""
    specs = [PatientSpec(f"patient{i:02d}", 1000 + i, True) for i in range(1, 7)]
    specs += [PatientSpec(f"patient{i:02d}", 1000 + i, False) for i in range(7, 11)]
    return specs


def _ripple(rng: np.random.Generator, amplitude: float, n: int = 4):
    """Smooth low-frequency bumps so that no two livers are alike."""
    freqs = rng.normal(0, 1, (n, 3)) / 60.0
    phases = rng.uniform(0, 2 * np.pi, n)
    amps = rng.uniform(0.3, 1.0, n) * amplitude / n

    def f(p):
        return (np.sin(p @ freqs.T + phases) * amps).sum(axis=-1)

    return f


def generate_patient(spec: PatientSpec, level: int = 5) -> dict[str, Mesh]:
    """All organ meshes of one patient in scene coordinates (mm). Deterministic in spec.seed."""
    rng = np.random.default_rng(spec.seed)
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731

    # Liver in its own frame, then placed under the right diaphragm.
    scale = u(0.84, 1.04)
    right = dict(center=(-40 * scale, 0, 0), radii=(u(76, 88) * scale, u(84, 98) * scale, u(70, 84) * scale))
    # The right lobe's inferior tip (segments V/VI) hangs down on the patient's right.
    right_tip = dict(center=(u(-80, -65) * scale, u(-60, -45) * scale, u(0, 10) * scale),
                     radii=(u(38, 48) * scale, u(50, 62) * scale, u(38, 48) * scale))
    left_rot = rotation_about(np.array([0, 0, 1.0]), np.radians(u(-25, -8)))
    left = dict(center=(u(45, 60) * scale, u(20, 35) * scale, u(5, 15) * scale),
                radii=(u(58, 75) * scale, u(38, 50) * scale, u(22, 30) * scale))
    notch_x = u(5, 20) * scale
    visceral_center = np.array([u(-20, 0), -150 - u(0, 20), -120 - u(0, 20)]) * scale
    visceral_radius = 175 * scale
    ripple = _ripple(rng, 7.0)

    # Gallbladder: pear-shaped sac along an axis from the neck (posterior-superior) to the
    # fundus (anterior-inferior, past the liver's lower edge).
    gb_len = u(72, 98)
    gb_width = u(32, 48)
    neck = np.array([u(-18, -5), u(-35, -25), u(-25, -15)]) * scale
    axis = np.array([u(-0.1, 0.05), -u(0.7, 0.8), u(0.55, 0.65)])
    axis /= np.linalg.norm(axis)
    gb_spheres = []
    for s in np.linspace(0, 1, 9):
        r = gb_width / 2 * (0.38 + 0.62 * np.sin(np.pi / 2 * min(1.0, s / 0.75)) ** 0.7)
        c = neck + axis * (r + s * (gb_len - 2 * r) if s < 1 else gb_len - r)
        gb_spheres.append((c, r))

    def gallbladder_field(p):
        d = None
        for c, r in gb_spheres:
            e = np.linalg.norm(p - c, axis=-1) - r
            d = e if d is None else smooth_union(d, e, 6.0)
        return d

    def liver_field(p):
        d = ellipsoid(p, **right)
        d = smooth_union(d, ellipsoid(p, **right_tip), 30.0)
        d = smooth_union(d, ellipsoid(p, left["center"], left["radii"], left_rot), 25.0)
        d = d + ripple(p)
        # Concave visceral (under-)side: a large sphere taken away from below-behind.
        d = smooth_subtract(d, np.linalg.norm(p - visceral_center, axis=-1) - visceral_radius, 12.0)
        # Notch of the falciform ligament at the anterior-inferior border between the lobes.
        notch = ellipsoid(p, (notch_x, -45 * scale, 45 * scale), (9, 40, 40))
        d = smooth_subtract(d, notch, 4.0)
        # Gallbladder fossa (shallow without a gallbladder).
        fossa = gallbladder_field(p) - (1.5 if spec.gallbladder else -12.0)
        d = smooth_subtract(d, fossa, 3.0)
        return d

    liver = extract(liver_field, np.array([-30.0, 20.0, 5.0]) * scale, 260 * scale, level)

    # Place the liver: right upper abdomen, slightly rotated per patient.
    rot = rotation_about(np.array([0, 1.0, 0]), np.radians(u(-8, 8))) @ \
        rotation_about(np.array([1.0, 0, 0]), np.radians(u(-8, 8)))
    offset = np.array([u(-45, -30), u(85, 100), u(-25, -15)])
    place = np.eye(4)
    place[:3, :3], place[:3, 3] = rot, offset
    meshes = {"liver": liver.transformed(place)}

    if spec.gallbladder:
        gb_center = neck + axis * gb_len * 0.55
        gb = extract(gallbladder_field, gb_center, gb_len * 1.2, level - 1, smooth=1)
        meshes["gallbladder"] = gb.transformed(place)

    # Fat pads: at the gallbladder neck and over the hepatoduodenal ligament below the hilum.
    hilum = np.array([u(-5, 10), -30 * scale, -35 * scale])
    pads = [(neck + np.array([u(5, 15), -u(5, 15), -u(0, 10)]), (u(18, 26), u(14, 20), u(12, 18))),
            (hilum + np.array([0, -u(15, 30), 0]), (u(26, 36), u(18, 26), u(16, 22))),
            (hilum + np.array([u(20, 35), -u(5, 15), u(5, 10)]), (u(16, 22), u(12, 18), u(10, 14)))]
    pads = [((place @ np.append(c, 1.0))[:3], r) for c, r in pads]
    meshes["fat"] = make_fat(pads, rng, level - 1)
    meshes["abdominal_wall"], wall_field = make_wall(list(meshes.values()), rng, level)
    notch_world = (place @ np.array([notch_x, -45 * scale, 45 * scale, 1.0]))[:3]
    meshes["ligament"] = make_ligament(meshes["liver"], notch_world, wall_field, rng, level - 1)
    return meshes


# ----------------------------------------------------------------------------- organs around a liver
# Shared by the default patients and by imported CT meshes (backend.meshes import).

def make_fat(pads: list[tuple[np.ndarray, tuple]], rng: np.random.Generator, level: int) -> Mesh:
    """Fat tissue as a smooth union of ellipsoidal pads (centre, radii) in scene coordinates."""
    fat_ripple = _ripple(rng, 3.0, 6)

    def fat_field(p):
        d = None
        for c, r in pads:
            e = ellipsoid(p, c, r)
            d = e if d is None else smooth_union(d, e, 10.0)
        return d + fat_ripple(p)

    center = np.mean([c for c, _ in pads], axis=0)
    if fat_field(center[None])[0] >= 0:
        center = max(pads, key=lambda pr: np.prod(pr[1]))[0]
    return extract(fat_field, center, 160, level, smooth=1)


def make_wall(organs: list[Mesh], rng: np.random.Generator, level: int, margin: float = 8.0):
    """Inflated abdominal wall: a dome, flatter at the back, around the organs with the working
    space below and in front of the liver. Returns the mesh and its implicit field."""
    liver_lo, liver_hi = organs[0].bounds()
    liver_c = (liver_lo + liver_hi) / 2
    # The liver sits in the right upper quadrant: the cavity's centre lies caudal and medial to it.
    wall_center = liver_c + np.array([float(rng.uniform(33, 45)), float(rng.uniform(-100, -85)),
                                      float(rng.uniform(-15, -5))])
    radii = np.array([rng.uniform(185, 205), rng.uniform(235, 255), rng.uniform(135, 150)])
    points = np.concatenate([m.vertices for m in organs])

    def field_for(radii):
        def f(p):
            q = (p - wall_center) / radii
            back = np.where(q[..., 2] < 0, 1.3, 1.0)  # flatter posterior (retroperitoneum)
            k = (np.abs(q[..., 0]) ** 2.2 + np.abs(q[..., 1]) ** 2.2 + (np.abs(q[..., 2]) * back) ** 2.2) ** (1 / 2.2)
            return (k - 1.0) * radii.min()
        return f

    for _ in range(30):  # grow until every organ sits inside with a margin
        if np.all(field_for(radii)(points) < -margin):
            break
        radii = radii * 1.05
    field = field_for(radii)
    return extract(field, wall_center + np.array([0, 0, 10.0]), radii.max() * 1.6, level, smooth=1), field


def make_ligament(liver: Mesh, notch: np.ndarray, wall_field, rng: np.random.Generator, level: int) -> Mesh:
    """The falciform ligament: a thin sagittal membrane from the notch over the anterior liver to the wall."""
    v = liver.vertices
    near = v[np.abs(v[:, 0] - notch[0]) < 10]
    top = near[np.argmax(near[:, 2])] if len(near) else v[np.argmax(v[:, 2])]
    mid = (notch + top) / 2
    zs = np.linspace(mid[2], mid[2] + 400, 401)
    probe = np.column_stack([np.full_like(zs, mid[0]), np.full_like(zs, mid[1] + 15), zs])
    outside = wall_field(probe) > 0
    wall_z = zs[np.argmax(outside)] if outside.any() else zs[-1]
    center = np.array([notch[0], mid[1] + 15, (mid[2] + wall_z) / 2])
    radii = np.array([rng.uniform(2.0, 3.0), rng.uniform(45, 60), (wall_z - mid[2]) / 2 + 25])
    rot = rotation_about(np.array([1.0, 0, 0]), np.radians(rng.uniform(-35, -20)))
    # A scaled icosphere is an exact thin ellipsoid (radial extraction would graze a 5 mm sheet).
    sheet = icosphere(level)
    return Mesh((sheet.vertices * radii) @ rot.T + center, sheet.faces)


def landmarks(liver: Mesh, gallbladder: Mesh | None) -> dict[str, np.ndarray]:
    """Where fat and ligament attach on a liver we did not make (imported CT meshes)."""
    v = liver.vertices
    n = vertex_normals(liver)
    lo, hi = liver.bounds()
    c = v.mean(axis=0)
    width = hi[0] - lo[0]
    # Hilum: on the visceral (down-and-back facing) surface, near the middle of the liver.
    visceral = n @ np.array([0.0, -0.6, -0.8]) > 0.4
    cand = v[visceral] if visceral.any() else v
    hilum = cand[np.argmin(np.linalg.norm(cand - (c + np.array([0.1 * width, 0, 0])), axis=1))]
    # Falciform notch: anterior-inferior border between the lobes, left of the (right-heavy) centroid.
    x_notch = c[0] + 0.15 * width
    band = v[np.abs(v[:, 0] - x_notch) < 8]
    band = band if len(band) else v
    notch = band[np.argmax(band[:, 2] - band[:, 1])]
    out = {"hilum": hilum, "notch": notch}
    if gallbladder is not None:
        g = gallbladder.vertices
        axis = np.linalg.svd(g - g.mean(0))[2][0]
        ends = [g[np.argmax(g @ axis)], g[np.argmin(g @ axis)]]
        out["gallbladder_neck"] = max(ends, key=lambda e: e[1])  # the cranial end
    return out


def organs_around(liver: Mesh, gallbladder: Mesh | None, rng: np.random.Generator, level: int = 5,
                  wall: Mesh | None = None) -> dict[str, Mesh]:
    """Fat, ligament and (unless given) wall for a liver in scene coordinates."""
    marks = landmarks(liver, gallbladder)
    down = np.array([0.0, -1.0, 0.0])
    pads = [(marks["hilum"] + 22 * down + np.array([0, 0, -5.0]),
             (rng.uniform(26, 36), rng.uniform(18, 26), rng.uniform(16, 22))),
            (marks["hilum"] + 12 * down + np.array([rng.uniform(20, 35), 0, 5.0]),
             (rng.uniform(16, 22), rng.uniform(12, 18), rng.uniform(10, 14)))]
    if "gallbladder_neck" in marks:
        pads.insert(0, (marks["gallbladder_neck"] + np.array([10.0, -10, -5]),
                        (rng.uniform(18, 26), rng.uniform(14, 20), rng.uniform(12, 18))))
    out = {"fat": make_fat(pads, rng, level - 1)}
    organs = [liver] + ([gallbladder] if gallbladder is not None else []) + [out["fat"]]
    if wall is None:
        out["abdominal_wall"], field = make_wall(organs, rng, level)
    else:
        field = hull_field(wall)
    out["ligament"] = make_ligament(liver, marks["notch"], field, rng, level - 1)
    return out


def hull_field(mesh: Mesh):
    """Implicit field of a closed mesh's convex hull (negative inside)."""
    hull = ConvexHull(mesh.vertices)
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3]

    def field(p):
        p = np.atleast_2d(p)
        return np.concatenate([(p[i:i + 2048] @ normals.T + offsets).max(axis=-1) for i in range(0, len(p), 2048)])

    return field


def cavity_from_shell(shell: Mesh, organs: list[Mesh], level: int = 5, margin: float = 8.0) -> Mesh:
    """A closed cavity for a wall given as a tissue layer (it does not enclose the liver): the
    convex hull of the wall and the organs, inflated by a margin, remeshed evenly."""
    pts = np.concatenate([shell.vertices] + [m.vertices for m in organs])
    c = pts.mean(axis=0)
    hull = ConvexHull(pts)
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3] - margin
    sphere = icosphere(level)
    # Exact exit distance of each ray from c through the convex set {p : n.p + offset <= 0}.
    rate = sphere.vertices @ normals.T
    room = -(c @ normals.T + offsets)
    t = np.where(rate > 1e-12, room / np.where(rate > 1e-12, rate, 1.0), np.inf).min(axis=1)
    return Mesh(c + sphere.vertices * t[:, None], sphere.faces.copy())
