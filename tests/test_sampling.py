"""Pose sampling checked against the meshes, independently of the sampler's own inside test."""
import numpy as np
import pytest
import trimesh

from blender_addon.sampling import HEAD, Anatomy, sample_camera, sample_light, sample_tools
from conftest import MESHES


def _load(patient):
    from blender_addon.core.ply import read_ply

    return {p.stem: read_ply(p) for p in (MESHES / patient).glob("*.ply")}


@pytest.fixture(scope="module", params=["patient01", "patient08"])
def anatomy(request):
    return Anatomy(_load(request.param))


def _tm(mesh):
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def test_cameras_are_in_the_cavity_and_outside_organs(anatomy):
    rng = np.random.default_rng(0)
    cams = [sample_camera(rng, anatomy, 452, 256) for _ in range(25)]
    eyes = np.array([c.cam_to_world[:3, 3] for c in cams])
    assert _tm(anatomy.meshes["abdominal_wall"]).contains(eyes).all()
    for name in ("liver", "gallbladder", "fat", "ligament"):
        if name in anatomy.meshes:
            assert not _tm(anatomy.meshes[name]).contains(eyes).any(), name
    for c in cams:
        R = c.cam_to_world[:3, :3]
        assert abs(R[:, 0] @ HEAD) < 1e-9  # no roll
        assert -R[:, 1] @ HEAD > 0  # looking up towards the head
        view = c.target - c.cam_to_world[:3, 3]
        assert np.allclose(view / np.linalg.norm(view), R[:, 2])  # aimed at the liver point
        assert c.optics in (0, 30)
        assert np.degrees(np.arccos(np.clip(c.scope_axis @ R[:, 2], -1, 1))) == pytest.approx(c.optics, abs=1e-3)
    assert {c.optics for c in cams} == {0, 30}


def test_tools_point_from_the_wall_into_the_view(anatomy):
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(10):
        cam = sample_camera(rng, anatomy, 452, 256)
        tools = sample_tools(rng, anatomy, cam, 3, 452, 256)
        K = cam.K(452, 256)
        w2c = np.linalg.inv(cam.cam_to_world)
        for t in tools:
            found += 1
            tip_cam = (w2c @ np.append(t.tip, 1))[:3]
            assert tip_cam[2] > 0
            u, v = (K @ tip_cam)[:2] / tip_cam[2]
            assert 0 <= u < 452 and 0 <= v < 256
            axis = t.pose[:3, 2]
            assert np.allclose(axis, (t.tip - t.trocar) / np.linalg.norm(t.tip - t.trocar))
            assert np.allclose(t.pose[:3, :3].T @ t.pose[:3, :3], np.eye(3), atol=1e-9)
            along = t.trocar + np.outer(np.linspace(0.05, 1, 96), t.tip - t.trocar)
            for name in ("liver", "gallbladder", "fat", "ligament"):
                if name in anatomy.meshes:
                    assert not _tm(anatomy.meshes[name]).contains(along).any()
    assert found >= 10


def test_same_generator_state_gives_same_draws(anatomy):
    a = sample_camera(np.random.default_rng(5), anatomy, 96, 64)
    b = sample_camera(np.random.default_rng(5), anatomy, 96, 64)
    assert np.array_equal(a.cam_to_world, b.cam_to_world) and a.horizontal_fov == b.horizontal_fov
    la, lb = sample_light(np.random.default_rng(2)), sample_light(np.random.default_rng(2))
    assert la.power == lb.power and 0.5 < la.power < 2
