"""Pure numpy geometry: the triangle mesh type, mesh checks, inside tests, primitives and camera maths
(PLY files are read and written by `ply.py`).

No bpy here: the same code runs in Blender, in the backend and in the tests.
Conventions: millimetres; scene axes +X patient's left, +Y cranial (towards the head),
+Z anterior (towards the abdominal wall of a supine patient). Camera frames follow OpenCV:
x right, y down, z forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import MeshError


@dataclass
class Mesh:
    """Treated as immutable: nothing changes its arrays in place (a moved mesh is a new one, `transformed`)."""

    vertices: np.ndarray  # (V, 3) float64, millimetres
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside

    @cached_property
    def triangles(self) -> np.ndarray:
        # (F, 3, 3), built once: view sampling's inside tests and segment checks read it tens of times a frame
        t = self.vertices[self.faces]
        t.flags.writeable = False
        return t

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    @cached_property
    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Each face's edge vectors from its first corner (v1 - v0, v2 - v0), for ray and segment tests."""
        t = self.triangles
        return t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]

    @cached_property
    def corner_coords(self) -> np.ndarray:
        """(3 corners, 3 coordinates, F): each coordinate of each corner contiguous over the faces, so the
        winding number's sums run as plain array arithmetic (2.4x faster than on (F, 3, 3) with einsum)."""
        c = np.ascontiguousarray(self.triangles.transpose(1, 2, 0))
        c.flags.writeable = False
        return c

    @cached_property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bounds()

    @cached_property
    def face_boxes(self) -> np.ndarray:
        """(2, 3, F): each face's lowest and highest coordinates, so a segment test only does the
        arithmetic for the faces near the segment (a few of a liver's 20480)."""
        c = self.corner_coords
        b = np.stack([c.min(axis=0), c.max(axis=0)])
        b.flags.writeable = False
        return b

    @cached_property
    def normals(self) -> np.ndarray:
        """Area-weighted vertex normals (`vertex_normals`), made once per mesh."""
        n = vertex_normals(self)
        n.flags.writeable = False
        return n

    def remember_inside(self) -> "Mesh":
        """Mark a mesh that is asked over many frames (a patient's organs at rest, not a lift's new ones):
        `inside` then keeps InsideBalls for it, if it is watertight and consistently oriented."""
        self.__dict__["_remember_inside"] = True
        return self

    def inside_balls(self) -> "InsideBalls | None":
        d = self.__dict__
        if "_balls" not in d:
            if not d.get("_remember_inside"):
                return None
            report = edge_manifold_report(self)  # the winding number is an integer off such a surface
            d["_balls"] = InsideBalls(self) if report["watertight"] and report["consistent_orientation"] else None
        return d["_balls"]

    def volume(self) -> float:
        t = self.triangles
        return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)

    def area(self) -> float:
        t = self.triangles
        return float(np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum() / 2)

    def face_normals(self) -> np.ndarray:
        t = self.triangles
        n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)

    def transformed(self, matrix: np.ndarray) -> "Mesh":
        v = self.vertices @ matrix[:3, :3].T + matrix[:3, 3]
        return Mesh(v, self.faces.copy())


def read_mesh_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise MeshError(f"{path}: cannot read ({e.strerror})") from None


def check_mesh(mesh: Mesh, name: str) -> Mesh:
    """Refuse meshes that no renderer could use, naming the file."""
    v, f = mesh.vertices, mesh.faces
    if len(v) == 0 or len(f) == 0:
        raise MeshError(f"{name}: mesh is empty ({len(v)} vertices, {len(f)} faces)")
    if not np.all(np.isfinite(v)):
        raise MeshError(f"{name}: mesh has non-finite vertex coordinates")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"{name}: face indices out of range (0..{len(v) - 1})")
    if len(f) < 8:
        raise MeshError(f"{name}: degenerate mesh with only {len(f)} faces")
    if np.ptp(v, axis=0).max() <= 0:
        raise MeshError(f"{name}: degenerate mesh (all vertices coincide)")
    return mesh


def edge_manifold_report(mesh: Mesh) -> dict:
    """Watertightness and orientation: every edge used by exactly two faces, once in each direction."""
    f = mesh.faces.astype(np.int64)
    a, b = np.concatenate([f[:, 0], f[:, 1], f[:, 2]]), np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    n = int(f.max()) + 1 if f.size else 1  # an edge as one integer: 1-D unique is ~20x faster than rows
    _, counts = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_counts=True)
    _, dcounts = np.unique(a * n + b, return_counts=True)
    return {
        "watertight": bool(np.all(counts == 2)),
        "manifold_edges": bool(np.all(counts <= 2)),
        "consistent_orientation": bool(np.all(dcounts == 1)),
        "outward": mesh.volume() > 0,
    }


# ----------------------------------------------------------------------------- inside tests

def winding_numbers(points: np.ndarray, mesh: Mesh, block: int = 1 << 20) -> np.ndarray:
    """Generalised winding number of each point (1 inside a closed outward mesh, 0 outside).

    Exact for watertight meshes and graceful for small holes (values near 0.5 at a gap),
    which is why it is used instead of ray parity. Each face adds its solid angle
    2 atan2(a . (b x c), |a||b||c| + (a . b)|c| + (b . c)|a| + (c . a)|b|) (Van Oosterom and Strackee),
    with a, b, c its corners relative to the point; points go in blocks of about `block` point-faces.
    """
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    (Ax, Ay, Az), (Bx, By, Bz), (Cx, Cy, Cz) = mesh.corner_coords
    out = np.empty(len(points))
    step = max(1, block // max(1, len(Ax)))
    for start in range(0, len(points), step):
        p = points[start:start + step]
        px, py, pz = p[:, 0:1], p[:, 1:2], p[:, 2:3]
        ax, ay, az = Ax - px, Ay - py, Az - pz
        bx, by, bz = Bx - px, By - py, Bz - pz
        cx, cy, cz = Cx - px, Cy - py, Cz - pz
        la = np.sqrt(ax * ax + ay * ay + az * az)
        lb = np.sqrt(bx * bx + by * by + bz * bz)
        lc = np.sqrt(cx * cx + cy * cy + cz * cz)
        det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        den = (la * lb * lc + (ax * bx + ay * by + az * bz) * lc
               + (bx * cx + by * cy + bz * cz) * la + (cx * ax + cy * ay + cz * az) * lb)
        out[start:start + step] = 2.0 * np.arctan2(det, den).sum(axis=1)
    return out / (4.0 * np.pi)


class InsideBalls:
    """Balls known to hold no point of a closed mesh's surface, each with the inside answer of its centre.

    On a watertight, consistently oriented mesh the winding number is an integer, constant wherever one
    can move without crossing the surface; so every point of such a ball has its centre's answer, exactly.
    A ball's radius is a lower bound of its centre's distance to the surface: each face lies within the
    ball about its centroid through its farthest corner. View sampling asks the same meshes (the abdominal
    wall, organs at rest) a few points a frame, mostly in the open cavity, so after some frames most
    answers come from a ball. Kept for meshes marked with `Mesh.remember_inside` (a lift's organs are new
    meshes each frame), at most SIZE balls each.
    """

    SIZE = 2048

    def __init__(self, mesh: Mesh):
        t = mesh.triangles
        self.centroids = np.ascontiguousarray(t.mean(axis=1).T)  # (3, F)
        self.reach = np.linalg.norm(t - t.mean(axis=1, keepdims=True), axis=2).max(axis=1)  # (F,)
        self.scale = float(np.max(mesh.box[1] - mesh.box[0]))
        self.centres = np.zeros((self.SIZE, 3))
        self.radii2 = np.zeros(self.SIZE)  # 0 until filled: no point is strictly inside
        self.answers = np.zeros(self.SIZE, bool)
        self.count = 0

    def lookup(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(known, answer) per point."""
        n = self.count
        if n == 0:
            return np.zeros(len(points), bool), np.zeros(len(points), bool)
        d2 = ((points[:, None, :] - self.centres[None, :n]) ** 2).sum(axis=2)
        hit = d2 < self.radii2[None, :n]
        return hit.any(axis=1), self.answers[:n][hit.argmax(axis=1)]

    def add(self, points: np.ndarray, answers: np.ndarray) -> None:
        for p, a in zip(points, answers):
            if self.count >= self.SIZE:
                return
            c = self.centroids
            gap = np.sqrt((c[0] - p[0]) ** 2 + (c[1] - p[1]) ** 2 + (c[2] - p[2]) ** 2) - self.reach
            r = 0.999 * float(gap.min()) - 1e-9 * self.scale  # a margin far above rounding
            if r > 1e-3 * self.scale:  # smaller balls would rarely be hit again
                i = self.count
                self.centres[i], self.answers[i], self.radii2[i] = p, a, r * r
                self.count = i + 1  # the row is complete before it is counted


def inside(points: np.ndarray, mesh: Mesh) -> np.ndarray:
    """Winding number > 0.5. Points outside the mesh's bounding box (by a margin) are outside without
    the O(faces) sum: their winding number is 0 up to rounding, so the answer is the same, only faster.
    On meshes marked with `remember_inside`, points in an `InsideBalls` ball take its answer, the sum's."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    lo, hi = mesh.box
    pad = 1e-6 * float(np.max(hi - lo))
    near = np.all((points >= lo - pad) & (points <= hi + pad), axis=1)
    out = np.zeros(len(points), bool)
    if not near.any():
        return out
    p = points[near]
    balls = mesh.inside_balls()
    if balls is None:
        out[near] = winding_numbers(p, mesh) > 0.5
        return out
    known, answer = balls.lookup(p)
    todo = ~known
    if todo.any():
        answer[todo] = winding_numbers(p[todo], mesh) > 0.5
        balls.add(p[todo], answer[todo])
    out[near] = answer
    return out


def segment_hits(mesh: Mesh, p0: np.ndarray, p1: np.ndarray, eps: float = 1e-9) -> bool:
    """Whether the segment p0-p1 crosses any triangle of the mesh (Moller-Trumbore, all faces at once)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    lo, hi = mesh.box
    pad = 1e-6 * float(np.max(hi - lo))
    if np.any(np.minimum(p0, p1) > hi + pad) or np.any(np.maximum(p0, p1) < lo - pad):
        return False  # the segment's box misses the mesh's: no face can be crossed
    # Only faces whose box meets the segment's (padded far beyond rounding) can be crossed; the others
    # would fail the tests below anyway, so the answer is the same as over every face.
    (flo, fhi), slo, shi = mesh.face_boxes, np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad
    near = ((flo[0] <= shi[0]) & (fhi[0] >= slo[0]) & (flo[1] <= shi[1]) & (fhi[1] >= slo[1])
            & (flo[2] <= shi[2]) & (fhi[2] >= slo[2]))
    if not near.any():
        return False
    near = np.flatnonzero(near)
    t = mesh.triangles[near]
    d = p1 - p0
    e1, e2 = mesh.edges
    e1, e2 = e1[near], e2[near]
    pvec = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, pvec)
    ok = np.abs(det) > eps
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tvec = p0 - t[:, 0]
    u = np.einsum("ij,ij->i", tvec, pvec) * inv
    qvec = np.cross(tvec, e1)
    v = (qvec @ d) * inv
    s = np.einsum("ij,ij->i", e2, qvec) * inv
    return bool(np.any(ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (s >= 0) & (s <= 1)))


def nearest_vertices(points: np.ndarray, vertices: np.ndarray, group: int = 256, rows: int = 512) -> np.ndarray:
    """Index of the closest vertex to each point: the answers of comparing every pair (argmin over vertices
    of |v|^2 - 2 p.v, the first index on ties), without comparing every pair. Points go in groups of about
    `group` neighbours (cells of a grid over them). A group's points lie within r of its box centre c, whose
    closest vertex is at d, so each point's closest vertex lies within r + d of it: only vertices that near
    the group's box are compared, in index order, so ties go the same way."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    out = np.empty(len(points), np.int64)
    if len(points) == 0:
        return out
    v2 = (vertices ** 2).sum(axis=1)
    lo, hi = points.min(axis=0), points.max(axis=0)
    # Points usually lie on a surface: about k^2 of the k^3 cells are occupied.
    k = int(np.clip(np.ceil(np.sqrt(len(points) / group)), 1, 32))
    cell = np.minimum(((points - lo) / np.maximum(hi - lo, 1e-300) * k).astype(np.int64), k - 1)
    key = (cell[:, 0] * k + cell[:, 1]) * k + cell[:, 2]
    order = np.argsort(key, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(key[order])) + 1)
    if len(groups) == 1:
        return _nearest_among(points, vertices, v2, np.arange(len(vertices)), rows)
    boxes = np.array([(points[g].min(axis=0), points[g].max(axis=0)) for g in groups])  # (G, 2, 3)
    centres = boxes.mean(axis=1)
    d = np.sqrt(np.maximum(((centres - vertices[_nearest_among(centres, vertices, v2, np.arange(len(vertices)), rows)])
                            ** 2).sum(axis=1), 0.0))
    # Rounding in |v|^2 - 2 p.v may let a vertex slightly farther than the closest one win: pad far above it.
    pad = 1e-6 * (float(np.abs(vertices).max()) + float(np.abs(points).max()))
    by_x = np.argsort(vertices[:, 0], kind="stable")
    xs = vertices[by_x, 0]
    for g, (plo, phi), c, dc in zip(groups, boxes, centres, d):
        p = points[g]
        reach = float(np.sqrt(((p - c) ** 2).sum(axis=1).max())) + dc + pad
        slab = by_x[np.searchsorted(xs, plo[0] - reach, "left"):np.searchsorted(xs, phi[0] + reach, "right")]
        gap = np.maximum(np.maximum(plo - vertices[slab], vertices[slab] - phi), 0.0)
        out[g] = _nearest_among(p, vertices, v2, np.sort(slab[(gap ** 2).sum(axis=1) <= reach * reach]), rows)
    return out


def _nearest_among(points: np.ndarray, vertices: np.ndarray, v2: np.ndarray, among: np.ndarray, rows: int) -> np.ndarray:
    """argmin over vertices[among] (ascending indices) of |v|^2 - 2 p.v, as indices into vertices."""
    vn, v2n = vertices[among], v2[among]
    out = np.empty(len(points), np.int64)
    for s in range(0, len(points), rows):
        p = points[s:s + rows]
        # One row would go through BLAS's matrix-vector product, which rounds differently in the last bit
        # from the matrix-matrix product that every other row (and comparing every pair) goes through.
        q = np.concatenate([p, p]) if len(p) == 1 else p
        out[s:s + len(p)] = among[np.argmin(v2n[None] - 2.0 * q @ vn.T, axis=1)[:len(p)]]
    return out


def nearest_vertex_distance(points: np.ndarray, mesh: Mesh, chunk: int = 256) -> np.ndarray:
    """Distance from each point to the closest mesh vertex (dense meshes: close to surface distance)."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        d = np.linalg.norm(points[s:s + chunk, None, :] - mesh.vertices[None], axis=2)
        out[s:s + chunk] = d.min(axis=1)
    return out


# ----------------------------------------------------------------------------- primitives

def icosphere(subdivisions: int) -> Mesh:
    """Unit sphere: 20 * 4**subdivisions outward triangles, watertight."""
    t = (1.0 + 5 ** 0.5) / 2
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
         (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
         (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
         (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = np.array(v, dtype=np.float64)
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    faces = np.array(f, dtype=np.int64)
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(edges, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        mid = verts[uniq[:, 0]] + verts[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        base = len(verts)
        verts = np.concatenate([verts, mid])
        n = len(faces)
        m01, m12, m20 = inv[:n] + base, inv[n:2 * n] + base, inv[2 * n:] + base
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        faces = np.concatenate([
            np.stack([a, m01, m20], 1), np.stack([b, m12, m01], 1),
            np.stack([c, m20, m12], 1), np.stack([m01, m12, m20], 1)])
    return Mesh(verts, faces)


def cylinder(radius: float, length: float, segments: int = 24, z0: float = 0.0) -> Mesh:
    """Closed cylinder along +z from z0 to z0 + length."""
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1)
    bottom = np.column_stack([ring, np.full(segments, z0)])
    top = np.column_stack([ring, np.full(segments, z0 + length)])
    verts = np.concatenate([bottom, top, [[0, 0, z0], [0, 0, z0 + length]]])
    i = np.arange(segments)
    j = (i + 1) % segments
    cb, ct = 2 * segments, 2 * segments + 1
    faces = np.concatenate([
        np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1),
        np.stack([np.full(segments, cb), j, i], 1), np.stack([np.full(segments, ct), i + segments, j + segments], 1)])
    return Mesh(verts, faces.astype(np.int64))


def box(size: tuple[float, float, float], center=(0.0, 0.0, 0.0)) -> Mesh:
    sx, sy, sz = (s / 2 for s in size)
    v = np.array([[x, y, z] for x in (-sx, sx) for y in (-sy, sy) for z in (-sz, sz)], dtype=np.float64)
    v += np.asarray(center, dtype=np.float64)
    # vertex index = 4*ix + 2*iy + iz
    f = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
         (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    return Mesh(v, np.array(f, dtype=np.int64))


def merge(meshes: list[Mesh]) -> Mesh:
    verts, faces, n = [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + n)
        n += len(m.vertices)
    return Mesh(np.concatenate(verts), np.concatenate(faces))


# ----------------------------------------------------------------------------- camera maths

def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def look_at(eye: np.ndarray, target: np.ndarray, up_hint: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4 in the OpenCV convention (x right, y down, z forward).

    The image's up direction is the projection of up_hint onto the image plane, so the
    horizon never rolls arbitrarily.
    """
    z = normalize(np.asarray(target, float) - np.asarray(eye, float))
    up = np.asarray(up_hint, float)
    up_perp = up - np.dot(up, z) * z
    if np.linalg.norm(up_perp) < 1e-6:
        raise ValueError("view direction parallel to the up direction")
    y = -normalize(up_perp)
    x = np.cross(y, z)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """3x3 rotation matrix (Rodrigues)."""
    k = normalize(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def intrinsics(width: int, height: int, horizontal_fov_deg: float) -> np.ndarray:
    """Pinhole K in pixels for a centred principal point (pixel centres at integer + 0.5)."""
    fx = (width / 2.0) / np.tan(np.radians(horizontal_fov_deg) / 2.0)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]])


def project(K: np.ndarray, points_cam: np.ndarray) -> np.ndarray:
    """Pixel coordinates (u right, v down; continuous, pixel (0,0) covers [0,1)x[0,1))."""
    p = np.atleast_2d(points_cam)
    uvw = p @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


# Blender cameras look along their local -Z with +Y up; OpenCV looks along +Z with +Y down.
CV_TO_BLENDER_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])


def vertex_normals(mesh: Mesh) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    t = mesh.triangles
    fn = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    vn = np.zeros_like(mesh.vertices)
    for i in range(3):
        np.add.at(vn, mesh.faces[:, i], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
