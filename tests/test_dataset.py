import json

import pytest

from blender_addon.core.dataset import (
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


def test_index_survives_a_torn_line(tmp_path):
    _manifest(tmp_path)
    with IndexWriter(tmp_path, (0, 1)) as w:
        w.append({"patient": "p1", "frame": 0})
        w.append({"patient": "p1", "frame": 1})
    path = index_file(tmp_path, (0, 1))
    with open(path, "ab") as f:
        f.write(b'{"patient": "p1", "fra')  # a kill in the middle of a write
    assert [e["frame"] for e in read_index(tmp_path)] == [0, 1]
    with IndexWriter(tmp_path, (0, 1)) as w:  # reopening cuts the torn tail
        w.append({"patient": "p1", "frame": 2})
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
