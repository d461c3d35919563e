import json

import pytest

from blender_addon.core.dataset import (
    FRAME_FILES,
    DatasetError,
    FrameKey,
    IndexWriter,
    all_frames,
    dataset_manifest,
    index_file,
    manifest_conflicts,
    parse_shard,
    read_index,
    shard_frames,
)
from blender_addon.core.seeds import frame_seed


def test_shards_partition_the_frames_for_any_n():
    frames = all_frames(["p2", "p1", "p3"], 7)
    for n in (1, 2, 3, 5, 21, 40):
        parts = [shard_frames(frames, (i, n)) for i in range(n)]
        flat = [f for p in parts for f in p]
        assert sorted(flat, key=lambda f: (f.patient, f.frame)) == frames
        assert len(set(flat)) == len(flat)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["1", "a/b", "2/2", "-1/3", "0/0", "1/2/3"])
def test_bad_shard_is_refused(text):
    with pytest.raises(DatasetError, match="--shard"):
        parse_shard(text)


def test_frame_seed_depends_only_on_seed_patient_frame():
    s = frame_seed(3, "patient01", 5)
    assert s == frame_seed(3, "patient01", 5)
    others = {frame_seed(4, "patient01", 5), frame_seed(3, "patient02", 5), frame_seed(3, "patient01", 6)}
    assert s not in others and len(others) == 3


def _manifest(tmp_path, **over):
    settings = {"resolution": "96x64", "seed": 0, "samples": 2, **over}
    m = dataset_manifest(settings, ["p1"], {"lapsynth": "test"})
    (tmp_path / "dataset.json").write_text(json.dumps(m))
    return m


def _entry(frame: int, patient: str = "p1", **over) -> dict:
    key = FrameKey(patient, frame)
    return {"patient": patient, "frame": frame, **{kind: key.relpath(kind) for kind in FRAME_FILES}, **over}


def test_index_survives_a_torn_line(tmp_path):
    _manifest(tmp_path)
    with IndexWriter(tmp_path, (0, 1)) as w:
        w.append(_entry(0))
        w.append(_entry(1))
    path = index_file(tmp_path, (0, 1))
    with open(path, "ab") as f:
        f.write(b'{"patient": "p1", "fra')  # a kill in the middle of a write
    assert [e["frame"] for e in read_index(tmp_path)] == [0, 1]
    with IndexWriter(tmp_path, (0, 1)) as w:  # reopening cuts the torn tail
        w.append(_entry(2))
    assert path.read_bytes().count(b"\n") == 3
    assert [e["frame"] for e in read_index(tmp_path)] == [0, 1, 2]


def test_read_index_requires_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json"):
        read_index(tmp_path)


def test_manifest_conflicts_name_the_setting(tmp_path):
    old = _manifest(tmp_path)
    new = dataset_manifest({"resolution": "96x64", "seed": 1, "samples": 2}, ["p1"], {})
    assert manifest_conflicts(old, old) == []
    assert any(c.startswith("seed") for c in manifest_conflicts(old, new))


def test_frame_paths():
    k = FrameKey("patient01", 12)
    assert k.relpath("image") == "patient01/image/000012.png"
    assert k.relpath("depth") == "patient01/depth/000012.npy"


def test_more_frames_or_patients_extend_a_data_set(tmp_path):
    old = dataset_manifest({"resolution": "96x64", "seed": 0, "frames_per_scene": 4}, ["p1"], {})
    more = dataset_manifest({"resolution": "96x64", "seed": 0, "frames_per_scene": 9}, ["p1", "p2"], {})
    assert manifest_conflicts(old, more) == []


@pytest.mark.parametrize("entry, needle", [
    (_entry(0, patient="../../evil"), "not a plain folder name"),
    (_entry(0, patient=".hidden"), "not a plain folder name"),
    (_entry(0, image="/etc/passwd"), "absolute path"),
    (_entry(0, depth="p1/../../other/x.npy"), "climbs out"),
    (_entry(0, meta=None), "expected a relative path"),
    (_entry(-1), "not a frame number"),
    ({"patient": "p1", "frame": 0}, "no 'image'"),
    ([1, 2], "not a JSON object"),
])
def test_index_entries_are_checked_before_use(tmp_path, entry, needle):
    _manifest(tmp_path)
    with IndexWriter(tmp_path, (0, 1)) as w:
        w.append(_entry(1))
        w._f.write((json.dumps(entry) + "\n").encode())
    with pytest.raises(DatasetError, match=needle) as e:
        read_index(tmp_path)
    assert "shard-0000-of-0001.jsonl:2:" in str(e.value)


def test_a_symlink_leaving_the_data_set_is_refused(tmp_path):
    root, outside = tmp_path / "A", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _manifest(root)
    (root / "p1").mkdir()
    (root / "p1" / "image").symlink_to(outside, target_is_directory=True)
    (outside / "000000.png").write_bytes(b"x")
    with IndexWriter(root, (0, 1)) as w:
        w.append(_entry(0))
    with pytest.raises(DatasetError, match="symbolic link leaves the data set"):
        read_index(root)
    (root / "p1" / "image").unlink()
    (root / "p1" / "image").mkdir()
    (root / "p1" / "image" / "000000.png").symlink_to(outside / "000000.png")
    with pytest.raises(DatasetError, match="symbolic link leaves the data set"):
        read_index(root)


def test_a_broken_line_inside_the_index_is_an_error_not_a_silent_drop(tmp_path):
    _manifest(tmp_path)
    with IndexWriter(tmp_path, (0, 1)) as w:
        w.append(_entry(0))
        w._f.write(b'{"patient": "p1", "fra\n')
        w.append(_entry(2))
    with pytest.raises(DatasetError, match=r"shard-0000-of-0001.jsonl:2: not a valid index line"):
        read_index(tmp_path)


def test_a_format_this_version_does_not_know_is_refused(tmp_path):
    m = _manifest(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**m, "format_version": 3}))
    with pytest.raises(DatasetError, match="format_version 3 is not one this lapsynth reads"):
        read_index(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**m, "format_version": 2}))  # the field-of-view format
    read_index(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json: not valid JSON"):
        read_index(tmp_path)
