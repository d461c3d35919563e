"""The bundled default patients: valid meshes, plausible anatomy, reproducible generator."""
import json

import numpy as np
import pytest

from backend.anatomy import default_patients
from backend.meshes import generate
from blender_addon.geometry import edge_manifold_report, inside, read_ply
from conftest import MESHES

PATIENTS = [s.name for s in default_patients()]


def test_six_with_and_four_without_gallbladder():
    with_gb = [p for p in PATIENTS if (MESHES / p / "gallbladder.ply").exists()]
    assert len(PATIENTS) == 10 and len(with_gb) == 6
    for p in PATIENTS:
        info = json.loads((MESHES / p / "patient.json").read_text())
        assert info["gallbladder"] == (p in with_gb)


@pytest.mark.parametrize("patient", PATIENTS)
def test_bundled_patient_meshes_are_valid(patient):
    folder = MESHES / patient
    organs = {p.stem: read_ply(p) for p in folder.glob("*.ply")}
    assert {"liver", "fat", "ligament", "abdominal_wall"} <= set(organs)
    for name, m in organs.items():
        report = edge_manifold_report(m)
        assert all(report.values()), (name, report)
        assert 5_000 <= len(m.faces) <= 30_000, (name, len(m.faces))
    liver = organs["liver"]
    ext = np.ptp(liver.vertices, axis=0)
    assert 150 <= ext.max() <= 270, ext
    assert 0.9e6 < liver.volume() < 2.5e6  # adult liver volume, mm^3
    # Everything but the ligament (which reaches through the wall) lies inside the abdominal wall.
    for name in ("liver", "gallbladder", "fat"):
        if name in organs:
            assert inside(organs[name].vertices[::97], organs["abdominal_wall"]).all(), name
    if "gallbladder" in organs:
        gb = organs["gallbladder"]
        length = np.ptp(gb.vertices @ np.linalg.svd(gb.vertices - gb.vertices.mean(0))[2][0])
        assert 70 <= length <= 100, length
        # The fundus shows below the liver's lower edge.
        assert gb.vertices[:, 1].min() < liver.vertices[:, 1].min() + 15


def test_generator_is_deterministic(tmp_path):
    generate(tmp_path, ["patient02"])
    for p in (MESHES / "patient02").glob("*.ply"):
        assert (tmp_path / "patient02" / p.name).read_bytes() == p.read_bytes(), p.name
