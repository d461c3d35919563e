"""The bundled default patients: valid meshes, plausible anatomy, reproducible generator."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from backend.patients.anatomy import default_patients
from backend.patients.folders import generate
from blender_addon.core.geometry import edge_manifold_report, inside
from blender_addon.core.ply import read_ply
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
        # The fundus shows below the liver's lower edge where the gallbladder lies.
        fundus = gb.vertices[np.argmin(gb.vertices[:, 1])]
        near = liver.vertices[np.abs(liver.vertices[:, 0] - fundus[0]) < 10]
        assert fundus[1] < near[:, 1].min(), (fundus, near[:, 1].min())


def test_generator_is_deterministic(tmp_path):
    generate(tmp_path, ["patient02"])
    for p in (MESHES / "patient02").glob("*.ply"):
        assert (tmp_path / "patient02" / p.name).read_bytes() == p.read_bytes(), p.name


# ----------------------------------------------------------------------------- import of CT meshes

import subprocess  # noqa: E402
import sys  # noqa: E402

import fast_simplification  # noqa: E402

from backend.patients.folders import import_patient, repair  # noqa: E402
from backend.patients.vtk_legacy import read_vtk, write_vtk  # noqa: E402
from blender_addon.core.geometry import MeshError, icosphere  # noqa: E402
from blender_addon.core.ply import write_ply  # noqa: E402
from conftest import ROOT, TINY, run_render, shared_data  # noqa: E402


def _valid_patient(folder, gallbladder):
    info = json.loads((folder / "patient.json").read_text())
    assert info["gallbladder"] == gallbladder
    organs = {p.stem: read_ply(p) for p in folder.glob("*.ply")}
    expected = {"liver", "fat", "ligament", "abdominal_wall"} | ({"gallbladder"} if gallbladder else set())
    assert set(organs) == expected
    for name, m in organs.items():
        assert all(edge_manifold_report(m).values()), name
        assert len(m.faces) <= 30_000, name
    ext = np.ptp(organs["liver"].vertices, axis=0)
    assert 150 <= ext.max() <= 300, ext
    assert inside(organs["liver"].vertices.mean(0)[None], organs["abdominal_wall"])[0]
    return info


def test_vtk_reader_ascii_and_binary(tmp_path):
    sphere = icosphere(2)
    sphere = type(sphere)(sphere.vertices * 50 + [1, 2, 3], sphere.faces)
    for binary in (False, True):
        path = tmp_path / f"s{int(binary)}.vtk"
        write_vtk(path, sphere, binary=binary)
        back = read_vtk(path)
        assert np.allclose(back.vertices, sphere.vertices, atol=1e-4)
        assert np.array_equal(back.faces, sphere.faces)


def test_vtk_reader_quads_strips_and_attributes(tmp_path):
    text = """# vtk DataFile Version 3.0
cube as IRCAD-style polydata with a strip and point data
ASCII
DATASET POLYDATA
POINTS 8 double
0 0 0 1 0 0 1 1 0 0 1 0
0 0 1 1 0 1 1 1 1 0 1 1
POLYGONS 5 25
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
TRIANGLE_STRIPS 1 5
4 0 4 3 7
POINT_DATA 8
SCALARS s float
LOOKUP_TABLE default
0 0 0 0 0 0 0 0
"""
    (tmp_path / "c.vtk").write_text(text)
    m = read_vtk(tmp_path / "c.vtk")
    assert m.faces.shape == (12, 3)
    assert m.volume() == pytest.approx(1.0)
    assert all(edge_manifold_report(m).values())


def test_vtk_reader_skips_field_data_and_metadata_blocks(tmp_path):
    """ParaView writes the data set's FIELD arrays before POINTS and VTK 8+ a METADATA block after an array:
    both are skipped, in ASCII and in binary files, and the mesh is the one without them."""
    sphere = icosphere(2)
    for binary in (False, True):
        plain = tmp_path / f"plain{int(binary)}.vtk"
        write_vtk(plain, sphere, binary=binary)
        data = plain.read_bytes()
        time = b"1 1 double\n" + (np.array([0.5], ">f8").tobytes() + b"\n" if binary else b"0.5\n")
        field = b"FIELD FieldData 2\nTIME " + time + b"NULL_ARRAY\n"
        meta = (b"METADATA\nINFORMATION 2\nNAME L2_NORM_RANGE LOCATION vtkDataArray\nDATA 2 1 1\n"
                b"NAME L2_NORM_FINITE_RANGE LOCATION vtkDataArray\nDATA 2 1 1\n\n")
        data = data.replace(b"DATASET POLYDATA\n", b"DATASET POLYDATA\n" + field).replace(b"POLYGONS", meta + b"POLYGONS")
        (tmp_path / "both.vtk").write_bytes(data)
        got, want = read_vtk(tmp_path / "both.vtk"), read_vtk(plain)
        assert np.array_equal(got.faces, want.faces) and np.array_equal(got.vertices, want.vertices), binary


@pytest.mark.parametrize("cells", ["POLYGONS 2000000000 1\n-1\n", "POLYGONS 2 5\n3 0 1 2\n-7\n",
                                   "POLYGONS 1 4\n9 0 1 2\n"])
def test_vtk_cell_counts_that_do_not_fit_the_data_are_refused_at_once(tmp_path, cells):
    """A few bytes declaring two billion cells (or a negative or overlong cell) are refused before anything is
    built: one MeshError naming the file, not minutes of growing memory."""
    import time

    path = tmp_path / "bad.vtk"
    path.write_text("# vtk DataFile Version 3.0\nt\nASCII\nDATASET POLYDATA\nPOINTS 3 float\n0 0 0 1 0 0 0 1 0\n"
                    + cells)
    t0 = time.perf_counter()
    with pytest.raises(MeshError, match="cell") as err:
        read_vtk(path)
    assert str(path) in str(err.value) and time.perf_counter() - t0 < 1.0


def _liver_file(tmp_path, scale=1.0, name="liver.ply"):
    """A liver-sized test surface: a bundled liver in file units, LPS axes, off-centre."""
    liver = read_ply(MESHES / "patient03" / "liver.ply")
    scene_to_lps = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # +Y head, +Z anterior -> L, P, S
    v = (liver.vertices @ scene_to_lps.T + [150, 160, 120]) * scale
    path = tmp_path / name
    write_ply(path, type(liver)(v, liver.faces))
    return path


def test_import_writes_beside_its_target_and_overwrite_replaces_patient_folders_only(tmp_path, monkeypatch):
    """The patient is written in a hidden folder inside --out (a temp folder elsewhere, e.g. a tmpfs /tmp, made
    the final rename fail across file systems after all the work); --overwrite swaps a patient folder and leaves
    no temporary behind, and refuses, before any mesh is read, a link, a file or a folder that is not a patient."""
    from backend.patients import folders

    liver, out = str(_liver_file(tmp_path)), tmp_path / "new" / "out"
    real_replace = os.replace

    def same_file_system_only(src, dst):  # as across devices: a rename must stay inside --out
        if Path(src).parent != Path(dst).parent and out not in (Path(src).parents[1], Path(dst).parents[1]):
            raise OSError(18, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(folders.os, "replace", same_file_system_only)
    monkeypatch.setattr(folders.tempfile, "tempdir", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    first = import_patient(liver, "p1", out, log=lambda m: None)
    old = {p.name: p.read_bytes() for p in first.iterdir()}
    again = import_patient(liver, "p1", out, max_faces=20_000, overwrite=True, log=lambda m: None)
    assert again == first and json.loads((again / "patient.json").read_text())["faces"]["liver"] <= 20_000
    assert (again / "liver.ply").read_bytes() != old["liver.ply"]
    assert sorted(p.name for p in out.iterdir()) == ["p1"]  # no .tmp-* left
    (out / "notes").mkdir()
    (out / "notes" / "thesis.tex").write_text("keep me")
    (out / "file").write_text("keep me")
    (out / "link").symlink_to(out / "p1")
    read = []
    monkeypatch.setattr(folders, "check_source", lambda p: read.append(p))
    for name, why in [("notes", "not a patient folder"), ("file", "not a folder"), ("link", "a symbolic link")]:
        with pytest.raises(MeshError, match=why) as err:
            import_patient(liver, name, out, overwrite=True, log=lambda m: None)
        assert str(out / name) in str(err.value) and "\n" not in str(err.value)
    assert not read and (out / "notes" / "thesis.tex").read_text() == "keep me" and (out / "file").is_file()
    assert (out / "link").is_symlink() and (out / "p1" / "liver.ply").is_file()
    with pytest.raises(MeshError, match="patient exists"):
        import_patient(liver, "p1", out, log=lambda m: None)
    with pytest.raises(MeshError, match="not a folder"):
        import_patient(liver, "x", out / "file", log=lambda m: None)


def test_units_and_axes_are_applied(tmp_path):
    mm = import_patient(str(_liver_file(tmp_path)), "mm", tmp_path / "out", log=lambda m: None)
    metres = import_patient(str(_liver_file(tmp_path, 0.001, "m.ply")), "m", tmp_path / "out", log=lambda m: None)
    a, b = read_ply(mm / "liver.ply"), read_ply(metres / "liver.ply")
    assert json.loads((metres / "patient.json").read_text())["units"]["detected"] == "m"
    assert np.allclose(a.vertices, b.vertices, atol=1e-3)
    # LPS (the default) maps the generator's liver back onto its own orientation.
    orig = read_ply(MESHES / "patient03" / "liver.ply")
    assert np.allclose(np.ptp(a.vertices, 0), np.ptp(orig.vertices, 0), atol=1e-3)
    # Reading the same file as RAS mirrors left-right and front-back.
    ras = import_patient(str(_liver_file(tmp_path)), "ras", tmp_path / "out", axes="RAS", log=lambda m: None)
    c = read_ply(ras / "liver.ply")
    assert np.allclose(np.sort(-c.vertices[:, 0]) - np.sort(a.vertices[:, 0]),
                       np.mean(np.sort(-c.vertices[:, 0]) - np.sort(a.vertices[:, 0])), atol=1e-3)


def _put(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda d: _put(d / "empty.stl", b""), "empty"),
    (lambda d: _put(d / "notes.stl", b"hello, I am not a mesh\n"), "notes.stl"),
    (lambda d: _put(d / "liver.xyz", b"1 2 3\n"), "unsupported"),
    (lambda d: write_ply(d / "tiny.ply", icosphere(0)) or d / "tiny.ply", "degenerate"),
    (lambda d: _liver_file(d, 30.0, "huge.ply"), "fits no unit"),
    (lambda d: _liver_file(d, 0.3, "small.ply"), "expected 80 to 400 mm"),
])
def test_bad_import_inputs_are_refused_and_nothing_written(tmp_path, make, needle):
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    out = tmp_path / "patients"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "backend.meshes", "import", "--liver", str(path), "--name", "p",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert list(out.iterdir()) == []


def test_truncated_ply_import_is_one_line_and_writes_nothing(tmp_path):
    full = _liver_file(tmp_path, name="full.ply").read_bytes()
    bad = _put(tmp_path / "truncated.ply", full[: len(full) * 2 // 3])  # cut mid-faces
    out = tmp_path / "OUT"
    proc = subprocess.run([sys.executable, "-m", "backend.meshes", "import", "--liver", str(bad), "--name", "x",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "truncated or corrupt PLY" in lines[0], proc.stderr
    assert not out.exists() or list(out.rglob("*")) == []


def _mesh_in_every_format(folder):
    """A 1280-face sphere as ASCII and binary PLY, STL and legacy VTK (the formats with counts or an end to check)."""
    import trimesh

    sphere = icosphere(3)
    liver = type(sphere)(sphere.vertices * 60, sphere.faces)
    write_ply(folder / "source.ply", liver)
    tm = trimesh.Trimesh(liver.vertices, liver.faces, process=False)
    files = {"binary.ply": (folder / "source.ply").read_bytes(),
             "ascii.ply": trimesh.exchange.ply.export_ply(tm, encoding="ascii"),
             "binary.stl": trimesh.exchange.stl.export_stl(tm),
             "ascii.stl": trimesh.exchange.stl.export_stl_ascii(tm).encode()}
    for binary in (False, True):
        write_vtk(folder / "v.vtk", liver, binary=binary)
        files[f"{'binary' if binary else 'ascii'}.vtk"] = (folder / "v.vtk").read_bytes()
    return files


@pytest.mark.parametrize("kind", ["ascii.ply", "binary.ply", "ascii.stl", "binary.stl", "ascii.vtk", "binary.vtk"])
def test_half_a_mesh_file_is_a_one_line_error_naming_it(tmp_path, kind):
    full = _mesh_in_every_format(tmp_path)[kind]
    bad = _put(tmp_path / f"half-{kind}", full[: len(full) // 2])
    out = tmp_path / "OUT"
    proc = subprocess.run([sys.executable, "-m", "backend.meshes", "import", "--liver", str(bad), "--name", "x",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m backend.meshes: error: {bad}: truncated"), proc.stderr
    assert not out.exists() or list(out.rglob("*")) == []


def test_every_cut_and_corruption_of_a_mesh_file_is_refused_by_name(tmp_path):
    """In process, many cut points and random byte changes per format: a mesh, or a MeshError naming the file
    in one line; never another exception."""
    from backend.patients.reading import load_mesh

    rng = np.random.default_rng(19)
    for kind, full in _mesh_in_every_format(tmp_path).items():
        path = tmp_path / f"bad-{kind}"
        for trial in range(40):
            if trial < 20:
                data = full[: int(len(full) * (trial + 0.5) / 20)]  # 2.5% .. 97.5%
            else:
                data = bytearray(full)
                for i in rng.integers(0, 300 if trial % 2 else len(data), rng.integers(1, 6)):
                    data[i] = rng.integers(0, 256)
            path.write_bytes(bytes(data))
            try:
                load_mesh(path)
            except MeshError as e:
                assert str(path) in str(e) and "\n" not in str(e), (kind, trial, str(e))
            if trial < 20:  # a cut file is always refused
                with pytest.raises(MeshError, match="truncated|no triangles|degenerate|not a|no vertex"):
                    load_mesh(path)


def test_the_units_error_does_not_suggest_units_already_given(tmp_path):
    liver = _liver_file(tmp_path, 0.3, "small.ply")  # 60 mm across in millimetres: no unit fits a liver
    for extra, wanted, unwanted in [([], "pass --units", "--units mm does not fit"),
                                    (["--units", "mm"], "--units mm does not fit it", "pass --units")]:
        proc = subprocess.run([sys.executable, "-m", "backend.meshes", "import", "--liver", str(liver), "--name", "p",
                               "--out", str(tmp_path / "out"), *extra], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and wanted in proc.stderr and unwanted not in proc.stderr, proc.stderr


def test_bad_patient_names_and_face_limits_are_refused(tmp_path):
    for args, needle in [(["generate", "--patients", "patient01,patient99"], "--patients: unknown ['patient99']"),
                         (["import", "--liver", str(_liver_file(tmp_path)), "--name", "p", "--max-faces", "0"],
                          "--max-faces 0: must be at least 100")]:
        proc = subprocess.run([sys.executable, "-m", "backend.meshes", *args, "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()


def test_bad_axes_are_refused(tmp_path):
    with pytest.raises(MeshError, match="--axes"):
        import_patient(str(_liver_file(tmp_path)), "p", tmp_path / "out", axes="LLS")


def _ellipsoid(level):
    """A liver-sized (200 x 140 x 100 mm) noisy ellipsoid of 20 * 4**level triangles."""
    s = icosphere(level)
    noise = np.random.default_rng(0).normal(0, 0.05, s.vertices.shape)
    return type(s)(s.vertices * [100, 70, 50] + noise + [150, 160, 120], s.faces)


def _write_stl(path, m):
    """Binary STL, every triangle with its own corners (as CT exports write them)."""
    rec = np.zeros(len(m.faces), [("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["v"] = m.vertices[m.faces]
    path.write_bytes(bytes(80) + np.uint32(len(m.faces)).tobytes() + rec.tobytes())
    return path


def test_binary_stl_with_padding_a_solid_header_or_no_count_reads_and_a_misfit_says_why(tmp_path):
    """Binary STLs a writer padded (a trailing newline), headed 'solid ...' or left the count at 0 read as the
    same mesh, their size known from the header (the face limit applies before reading); sizes that fit no
    count are refused saying so (they were called 'no triangles in the file')."""
    from backend.patients.reading import check_source, load_mesh

    sphere = icosphere(3)
    data = _write_stl(tmp_path / "s.stl", sphere).read_bytes()
    want = load_mesh(tmp_path / "s.stl")
    for name, changed in [("padded", data + b"\n"), ("solid", b"solid liver".ljust(80) + data[80:] + b"\n"),
                          ("nocount", data[:80] + bytes(4) + data[84:])]:
        path = tmp_path / f"{name}.stl"
        path.write_bytes(changed)
        assert check_source(path) == len(sphere.faces), name
        got = load_mesh(path)
        assert np.array_equal(got.faces, want.faces) and np.array_equal(got.vertices, want.vertices), name
    (tmp_path / "misfit.stl").write_bytes(data + bytes(77))
    with pytest.raises(MeshError, match="announces 1,280 triangles .*1,281.54 records") as err:
        load_mesh(tmp_path / "misfit.stl")
    assert "misfit.stl" in str(err.value)


def test_a_repair_that_leaves_nothing_says_so():
    """Degenerate faces only: the repair leaves no face, and the checks on no faces pass vacuously; the error
    says nothing solid is left instead of listing checks as passed."""
    from backend.patients.repair import repair
    from blender_addon.core.geometry import Mesh

    flat = Mesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(MeshError, match="x.stl: could not be repaired .*nothing solid left: 0 faces"):
        repair(flat, "x.stl", 1000)


def test_large_import_is_decimated_early_and_keeps_the_face_limit(tmp_path):
    src = _write_stl(tmp_path / "big.stl", _ellipsoid(7))  # 327,680 triangles
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "backend.meshes", "import", "--liver", str(src), "--name", "p",
                           "--out", str(out), "--max-faces", "5000"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "liver: 327,680 faces read; decimating to 20,000 ..." in proc.stderr  # progress, before the repairs
    organs = {p.stem: read_ply(p) for p in (out / "p").glob("*.ply")}
    assert set(organs) == {"liver", "fat", "ligament", "abdominal_wall"}
    for organ, m in organs.items():
        assert len(m.faces) <= 5000, organ
        assert all(edge_manifold_report(m).values()), organ
    assert len(organs["liver"].faces) >= 4000  # decimated to the limit, not far below it
    assert json.loads((out / "p" / "patient.json").read_text())["faces"]["liver"] <= 5000


@pytest.mark.parametrize("fmt", ["stl", "ply", "vtk"])
def test_files_above_the_size_limit_are_refused_and_nothing_written(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr("backend.patients.reading.MAX_INPUT_FACES", 1000)
    small, big = _ellipsoid(2), _ellipsoid(3)  # 320 and 1,280 triangles
    liver = write_ply(tmp_path / "liver.ply", small) or tmp_path / "liver.ply"
    path = tmp_path / f"wall.{fmt}"
    {"stl": _write_stl, "ply": write_ply, "vtk": lambda p, m: write_vtk(p, m, binary=True)}[fmt](path, big)
    if fmt != "vtk":  # binary STL and PLY announce their size: refused before any file is read
        def no_reading(p):
            raise AssertionError(f"{p} read")
        monkeypatch.setattr("backend.patients.folders.load_mesh", no_reading)
    for args in ({"liver": str(path)}, {"liver": str(liver), "wall": str(path)}):
        with pytest.raises(MeshError) as err:
            import_patient(name="p", out=tmp_path / "out", log=lambda m: None, **args)
        assert str(path) in str(err.value) and "1,280 faces" in str(err.value), err.value
        assert "above the import limit of 1,000" in str(err.value)
        assert not (tmp_path / "out").exists()


def test_decimation_runs_again_when_a_round_falls_short(monkeypatch):
    real, calls = fast_simplification.simplify, []

    def short_first(points, triangles, target_count, agg):  # like the 10M-face liver that kept 161,112
        calls.append(agg)
        return real(points, triangles, target_count=target_count * (5 if len(calls) == 1 else 1), agg=agg)

    monkeypatch.setattr(fast_simplification, "simplify", short_first)
    mesh, notes = repair(_ellipsoid(4), "x.stl", 1000)  # 5,120 faces
    assert len(mesh.faces) <= 1000 and all(edge_manifold_report(mesh).values())
    assert len(calls) == 2 and calls[1] > calls[0]  # the second round is more aggressive
    assert any("in 2 rounds" in n for n in notes), notes
    monkeypatch.setattr(fast_simplification, "simplify", lambda p, t, target_count, agg: real(p, t, target_count=3000))
    with pytest.raises(MeshError, match=r"x.stl: \d+ faces after 4 rounds of decimation, still above --max-faces 1000"):
        repair(_ellipsoid(4), "x.stl", 1000)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Every real mesh set in ../shared imported once (module scope: about a minute)."""
    data = shared_data() / "meshes"
    out = tmp_path_factory.mktemp("imported")
    log = lambda m: None  # noqa: E731
    made = {}
    for i in range(1, 11):
        made[f"ircad{i}"] = import_patient(str(data / "ircad01" / f"liver{i}.ply"), f"ircad{i}", out, log=log)
    made["sofa"] = import_patient(str(data / "sofa_env" / "liver_visual.stl"), "sofa", out,
                                  gallbladder=str(data / "sofa_env" / "gallbladder_visual.stl"), log=log)
    made["openhelp"] = import_patient(str(data / "openhelp" / "Liver.stl"), "openhelp", out,
                                      wall=str(data / "openhelp" / "Abdominal_wall.stl"), axes="LSA", log=log)
    return out, made


def test_real_ircad_livers_import_as_valid_patients(imported):
    _, made = imported
    repairs = {}
    for i in range(1, 11):
        info = _valid_patient(made[f"ircad{i}"], gallbladder=False)
        assert info["units"]["detected"] == "mm"
        assert info["generated"] == ["abdominal_wall", "fat", "ligament"]
        repairs[i] = info["repairs"]["liver"]
    assert any("flipped" in n for n in repairs[1])  # IRCAD surfaces are stored inside out
    assert repairs[2] and repairs[4]  # the two that are not watertight were repaired


def test_real_liver_gallbladder_pair_and_wall_import(imported):
    _, made = imported
    sofa = _valid_patient(made["sofa"], gallbladder=True)
    assert any("holes" in n or "parts" in n for n in sofa["repairs"]["liver"])
    liver = read_ply(made["sofa"] / "liver.ply")
    gb = read_ply(made["sofa"] / "gallbladder.ply")
    # One CT: the gallbladder keeps its place against the liver (within a few mm of its surface).
    from blender_addon.core.geometry import nearest_vertex_distance

    assert nearest_vertex_distance(gb.vertices[::50], liver).min() < 5.0
    openhelp = _valid_patient(made["openhelp"], gallbladder=False)
    assert "abdominal_wall" not in openhelp["generated"]
    assert any("decimated" in n for n in openhelp["repairs"]["liver"])


def test_imported_patients_render(imported, tmp_path):
    out, _ = imported
    ds = tmp_path / "A"
    run_render("--meshes", out, "--out", ds, "--patients", "ircad2,sofa,openhelp", "--frames-per-scene", 1, *TINY)
    import imageio.v3 as iio

    from blender_addon.core.dataset import read_index

    entries = read_index(ds)
    assert [e["patient"] for e in entries] == ["ircad2", "openhelp", "sofa"]
    for e in entries:
        seg = iio.imread(ds / e["segmentation"])
        assert (seg == 1).mean() > 0.05


def test_every_bundled_patient_renders_a_valid_frame(tmp_path):
    ds = tmp_path / "A"
    run_render("--meshes", MESHES, "--out", ds, "--frames-per-scene", 1, *TINY)
    import imageio.v3 as iio

    from blender_addon.core.dataset import read_index

    entries = read_index(ds)
    assert [e["patient"] for e in entries] == PATIENTS
    for e in entries:
        seg = iio.imread(ds / e["segmentation"])
        assert (seg == 1).mean() > 0.05, e
        assert set(np.unique(seg)) <= set(range(8))
