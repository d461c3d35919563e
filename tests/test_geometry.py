import numpy as np
import pytest

from blender_addon.core.geometry import (
    MeshError,
    box,
    cylinder,
    edge_manifold_report,
    icosphere,
    inside,
    intrinsics,
    look_at,
    project,
    segment_hits,
    winding_numbers,
)
from blender_addon.core.ply import read_ply, write_ply


def test_icosphere_is_closed_and_outward():
    s = icosphere(3)
    assert len(s.faces) == 20 * 4 ** 3
    assert all(edge_manifold_report(s).values())
    assert s.volume() == pytest.approx(4 / 3 * np.pi, rel=0.01)


@pytest.mark.parametrize("mesh", [box((2, 3, 4)), cylinder(1.0, 5.0, 16)])
def test_primitives_are_watertight_and_outward(mesh):
    assert all(edge_manifold_report(mesh).values())


def test_winding_numbers_inside_outside():
    s = icosphere(3)
    w = winding_numbers(np.array([[0, 0, 0], [0.5, 0.2, -0.3], [1.5, 0, 0], [0, 0, -3]]), s)
    assert np.allclose(w, [1, 1, 0, 0], atol=1e-6)


def test_ply_round_trip_binary(tmp_path):
    s = icosphere(2)
    write_ply(tmp_path / "s.ply", s)
    back = read_ply(tmp_path / "s.ply")
    assert np.allclose(back.vertices, s.vertices, atol=1e-6)
    assert np.array_equal(back.faces, s.faces)


def test_ply_ascii_with_quads(tmp_path):
    text = """ply
format ascii 1.0
comment a cube with quads and an extra vertex property
element vertex 8
property float x
property float y
property float z
property uchar red
element face 6
property list uchar int vertex_indices
end_header
0 0 0 1
1 0 0 1
1 1 0 1
0 1 0 1
0 0 1 1
1 0 1 1
1 1 1 1
0 1 1 1
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 4 7 3
"""
    (tmp_path / "c.ply").write_text(text)
    m = read_ply(tmp_path / "c.ply")
    assert m.faces.shape == (12, 3)
    assert m.volume() == pytest.approx(1.0)
    assert all(edge_manifold_report(m).values())


@pytest.mark.parametrize("polygons", ["triangles", "quads", "mixed"])
def test_binary_ply_faces_with_scalar_properties_read_like_their_ascii_twin(tmp_path, polygons):
    """trimesh and MeshLab write a face's colour beside its vertex_indices: binary files with scalars before and
    after the list read as the same mesh as the ASCII file (faces of one size at once, mixed row by row)."""
    cube = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]]
    quad_faces = [[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [1, 2, 6, 5], [0, 4, 7, 3]]
    split = [t for q in quad_faces for t in ([q[0], q[1], q[2]], [q[0], q[2], q[3]])]
    faces = {"triangles": split, "quads": quad_faces, "mixed": quad_faces[:3] + split[6:]}[polygons]
    head = ("ply\nformat {}\nelement vertex 8\nproperty float x\nproperty float y\nproperty float z\n"
            f"element face {len(faces)}\nproperty short flags\nproperty list uchar int vertex_indices\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    ascii_body = "".join(" ".join(map(str, v)) + "\n" for v in cube) + "".join(
        f"7 {len(f)} {' '.join(map(str, f))} 200 10 30\n" for f in faces)
    (tmp_path / "a.ply").write_text(head.format("ascii 1.0") + ascii_body)
    binary = np.array(cube, "<f4").tobytes() + b"".join(
        np.int16(7).tobytes() + bytes([len(f)]) + np.array(f, "<i4").tobytes() + bytes([200, 10, 30]) for f in faces)
    (tmp_path / "b.ply").write_bytes(head.format("binary_little_endian 1.0").encode() + binary)
    a, b = read_ply(tmp_path / "a.ply"), read_ply(tmp_path / "b.ply")
    assert np.array_equal(a.faces, b.faces) and np.allclose(a.vertices, b.vertices) and len(b.faces) == 12
    assert b.volume() == pytest.approx(1.0)
    (tmp_path / "c.ply").write_bytes(head.format("binary_little_endian 1.0").encode() + binary[:-2])
    with pytest.raises(MeshError, match="c.ply"):  # cut in the last face's colour: still refused by name
        read_ply(tmp_path / "c.ply")


@pytest.mark.parametrize("content, message", [
    (b"", "not a PLY"),
    (b"solid stl\n", "not a PLY"),
    (b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\n"
     b"element face 0\nproperty list uchar int vertex_indices\nend_header\n", "empty"),
])
def test_bad_ply_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "liver.ply"
    path.write_bytes(content)
    with pytest.raises(MeshError, match=message) as e:
        read_ply(path)
    assert "liver.ply" in str(e.value)


_CUBE_HEADER = (b"ply\nformat ascii 1.0\nelement vertex 8\nproperty float x\nproperty float y\nproperty float z\n"
                b"element face 6\nproperty list uchar int vertex_indices\nend_header\n")
_CUBE_BODY = (b"0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n1 0 1\n1 1 1\n0 1 1\n"
              b"4 0 3 2 1\n4 4 5 6 7\n4 0 1 5 4\n4 2 3 7 6\n4 1 2 6 5\n4 0 4 7 3\n")


def _binary_ply(tmp_path):
    write_ply(tmp_path / "full.ply", icosphere(1))  # 42 vertices (12 bytes), 80 faces (13 bytes)
    data = (tmp_path / "full.ply").read_bytes()
    return data, data.index(b"end_header\n") + len(b"end_header\n")


@pytest.mark.parametrize("cut", ["header only", "no newline after end_header", "mid-vertices", "after vertices",
                                 "mid-faces", "last byte"])
def test_truncated_binary_ply_is_refused_by_name(tmp_path, cut):
    data, body = _binary_ply(tmp_path)
    end = {"header only": body, "no newline after end_header": body - 1, "mid-vertices": body + 250,
           "after vertices": body + 42 * 12, "mid-faces": body + 42 * 12 + 500, "last byte": len(data) - 1}[cut]
    path = tmp_path / "liver.ply"
    path.write_bytes(data[:end])
    with pytest.raises(MeshError, match="truncated or corrupt PLY") as e:
        read_ply(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("body", [
    _CUBE_BODY[:20],  # mid-vertices
    _CUBE_BODY[:-7],  # mid-way through the last face: must not silently drop it
    _CUBE_BODY[:-1].replace(b"4 0 4 7 3", b"9 0 4 7 3"),  # a face longer than the data left
    _CUBE_BODY.replace(b"1 1 0", b"1 one 0"),
    b"hello world, this is not mesh data\n",
    b"",
])
def test_truncated_or_garbled_ascii_ply_is_refused_by_name(tmp_path, body):
    path = tmp_path / "liver.ply"
    path.write_bytes(_CUBE_HEADER + body)
    with pytest.raises(MeshError, match="truncated or corrupt PLY") as e:
        read_ply(path)
    assert str(path) in str(e.value)


def _first_face_count(data, body, count):
    at = body + 42 * 12
    return data[:at] + count + data[at + 1:]


@pytest.mark.parametrize("change", [
    lambda d, b: d[:b] + np.random.default_rng(0).bytes(300),  # garbage after a valid header
    lambda d, b: d.replace(b"element vertex 42", b"element vertex 4200000000000"),
    lambda d, b: d.replace(b"element vertex 42", b"element vertex -5"),
    lambda d, b: d.replace(b"element vertex 42", b"element vertex"),
    lambda d, b: d.replace(b"element face 80", b"element face eighty"),
    lambda d, b: d.replace(b"property float x", b"property float128 x"),
    lambda d, b: d.replace(b"property float x", b"property float w"),
    lambda d, b: d.replace(b"property list uchar int", b"property list"),
    lambda d, b: d.replace(b"format binary_little_endian 1.0", b"format"),
    lambda d, b: _first_face_count(d.replace(b"list uchar int", b"list char int"), b - 1, b"\xff"),  # -1 indices
    lambda d, b: _first_face_count(d, b, b"\xfe"),  # 254 indices: past the end of the file
])
def test_corrupt_binary_ply_is_refused_by_name(tmp_path, change):
    data, body = _binary_ply(tmp_path)
    path = tmp_path / "liver.ply"
    path.write_bytes(change(data, body))
    with pytest.raises(MeshError) as e:
        read_ply(path)
    assert str(path) in str(e.value)


def test_ply_face_index_out_of_range_is_refused_by_name(tmp_path):
    path = tmp_path / "liver.ply"
    path.write_bytes(_CUBE_HEADER + _CUBE_BODY.replace(b"4 1 2 6 5", b"4 1 2 6 8"))
    with pytest.raises(MeshError, match="out of range") as e:
        read_ply(path)
    assert str(path) in str(e.value)
    path.write_bytes(_CUBE_HEADER + _CUBE_BODY)
    assert len(read_ply(path).faces) == 12  # the intact file reads


def test_look_at_keeps_head_up_and_projects_target_to_centre():
    eye, target = np.array([10.0, -80, 60]), np.array([-20.0, 40, 0])
    cam = look_at(eye, target, np.array([0, 1.0, 0]))
    R = cam[:3, :3]
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
    assert R[:, 0] @ [0, 1, 0] == pytest.approx(0.0, abs=1e-12)  # no roll: x axis horizontal
    assert -R[:, 1] @ [0, 1, 0] > 0  # image up (-y) points towards the head
    K = intrinsics(452, 256, 70.0)
    p_cam = np.linalg.inv(cam) @ np.append(target, 1)
    assert np.allclose(project(K, p_cam[:3]), [226, 128])


def _without_box_shortcut(mesh):
    """The same mesh with an infinite bounding box, so inside() and segment_hits() test every face."""
    full = type(mesh)(mesh.vertices, mesh.faces)
    full.__dict__["box"] = (np.full(3, -np.inf), np.full(3, np.inf))
    return full


def test_inside_balls_give_the_winding_numbers_answers_on_a_mesh_asked_often():
    """A watertight mesh marked with remember_inside keeps balls free of its surface; points in them take
    their centre's answer. Every answer must equal the winding number's, most later ones from a ball, none
    from a ball that reaches the surface; an open mesh or an unmarked one keeps none."""
    from blender_addon.core.geometry import InsideBalls

    mesh = icosphere(3).transformed(np.diag([30.0, 12.0, 20.0, 1.0]))
    assert mesh.inside_balls() is None
    mesh.remember_inside()
    rng = np.random.default_rng(5)
    balls = mesh.inside_balls()
    assert isinstance(balls, InsideBalls)
    points = rng.uniform(-1.1, 1.1, size=(600, 3)) * [30.0, 12.0, 20.0]
    got = np.array([inside(p[None], mesh)[0] for p in points])  # one point a call, as view sampling asks
    assert np.array_equal(got, winding_numbers(points, mesh) > 0.5)
    assert 100 < got.sum() < 500 and balls.count > 20
    known, answer = balls.lookup(points)
    assert known.mean() > 0.5 and np.array_equal(answer[known], got[known])
    # no ball reaches the surface: its radius is below the distance to every vertex
    n = balls.count
    to_vertex = np.linalg.norm(balls.centres[:n, None] - mesh.vertices[None], axis=2).min(axis=1)
    assert np.all(np.sqrt(balls.radii2[:n]) < to_vertex)
    open_mesh = type(mesh)(mesh.vertices, mesh.faces[1:]).remember_inside()  # one face missing: not watertight
    assert open_mesh.inside_balls() is None
    assert np.array_equal(inside(points, open_mesh), winding_numbers(points, open_mesh) > 0.5)


def test_bounding_box_shortcuts_give_the_same_answers_as_every_face():
    mesh = icosphere(3).transformed(np.diag([30.0, 12.0, 20.0, 1.0]))  # an ellipsoid, box 60 x 24 x 40
    rng = np.random.default_rng(4)
    points = rng.uniform(-1.3, 1.3, size=(400, 3)) * [30.0, 12.0, 20.0]  # about half outside the box
    lo, hi = mesh.box
    outside_box = np.any((points < lo) | (points > hi), axis=1)
    assert 50 < outside_box.sum() < 350
    assert np.array_equal(inside(points, mesh), inside(points, _without_box_shortcut(mesh)))
    assert np.array_equal(inside(points, mesh), winding_numbers(points, mesh) > 0.5)
    assert inside(points, mesh).sum() > 20
    full = _without_box_shortcut(mesh)
    ends = rng.uniform(-2, 2, size=(300, 2, 3)) * [30.0, 12.0, 20.0]
    hits = [segment_hits(mesh, a, b) for a, b in ends]
    assert hits == [segment_hits(full, a, b) for a, b in ends]
    assert 30 < sum(hits) < 270
    missed = [np.any(np.minimum(a, b) > hi) or np.any(np.maximum(a, b) < lo) for a, b in ends]
    assert sum(missed) > 30  # the shortcut was taken, and gave the same answers
    # segment_hits also tests only the faces whose boxes meet the segment's (the infinite box above makes
    # every face near): most segments here meet few of them, with the same answers
    flo, fhi = mesh.face_boxes
    near = [int(np.all((flo <= np.maximum(a, b)[:, None]) & (fhi >= np.minimum(a, b)[:, None]), axis=0).sum())
            for a, b in ends]
    assert np.median(near) < 0.5 * len(mesh.faces) and max(near) > 0


def test_nearest_vertices_are_those_of_comparing_every_pair(monkeypatch):
    """nearest_vertices compares each group of nearby points with the vertices that can be closest to one
    of them only; its answers must be those of every pair (argmin of |v|^2 - 2 p.v, first index on ties):
    points near and far from a real-sized mesh, on its vertices, with every vertex twice (ties)."""
    from blender_addon.core import geometry
    from blender_addon.core.geometry import nearest_vertices

    def every_pair(points, vertices):
        v2 = (vertices ** 2).sum(axis=1)
        return np.concatenate([np.argmin(v2[None] - 2.0 * points[s:s + 512] @ vertices.T, axis=1)
                               for s in range(0, len(points), 512)])

    mesh = icosphere(5).transformed(np.diag([150.0, 90.0, 110.0, 1.0]))  # 10242 vertices, a wall's size
    mesh = mesh.transformed(np.array([[1, 0, 0, -40.0], [0, 1, 0, 310.0], [0, 0, 1, 95.0], [0, 0, 0, 1]]))
    v = mesh.vertices
    rng = np.random.default_rng(7)
    pairs = []
    real = geometry._nearest_among
    monkeypatch.setattr(geometry, "_nearest_among",
                        lambda p, vs, v2, among, rows: pairs.append(len(p) * len(among)) or real(p, vs, v2, among, rows))
    cases = {
        "near the surface": v[::2] + rng.normal(0, 2.0, (len(v[::2]), 3)),
        "deep inside": (v[::3] - v.mean(axis=0)) * 0.4 + v.mean(axis=0),
        "far outside": rng.normal(v.mean(axis=0), 400.0, (3000, 3)),
        "on vertices": v[::5],
    }
    for name, points in cases.items():
        pairs.clear()
        assert np.array_equal(nearest_vertices(points, v), every_pair(points, v)), name
        if name != "far outside":  # far from a mesh, most of it may hold a group's closest vertex
            assert sum(pairs) < 0.4 * len(points) * len(v), name  # fewer pairs than all of them
    # Lone points in their grid cells (a group of one), each equidistant from two vertices: a one-row
    # product would round differently from the all-pairs matrix product.
    a, b = mesh.faces[:120, 0], mesh.faces[:120, 1]
    lone = np.concatenate([v[0] + rng.normal(0, 0.5, (6000, 3)), (v[a] + v[b]) / 2])
    assert np.array_equal(nearest_vertices(lone, v), every_pair(lone, v))
    twice = np.concatenate([v, v])  # every distance tied: the first index wins, as in argmin
    points = v[::7] + rng.normal(0, 1.0, (len(v[::7]), 3))
    assert np.array_equal(nearest_vertices(points, twice), every_pair(points, twice))
    assert nearest_vertices(points, twice).max() < len(v)
    assert nearest_vertices(np.zeros((0, 3)), v).shape == (0,)
    assert nearest_vertices(v[3], v).tolist() == [3]
