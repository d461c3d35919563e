import numpy as np
import pytest

from blender_addon.core.geometry import (
    MeshError,
    box,
    cylinder,
    edge_manifold_report,
    icosphere,
    intrinsics,
    look_at,
    project,
    read_ply,
    winding_numbers,
    write_ply,
)


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
