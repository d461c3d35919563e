"""The on-disk data set contract (docs/dataset-format.md): layout, class table, index, shards.

Pure Python + numpy; the renderer writes through it and the backend reads through it.
"""
from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1

# id, name, display colour (RGB). Ids are the pass_index of the scene objects.
CLASSES = [
    (0, "background", (0, 0, 0)),
    (1, "liver", (180, 60, 50)),
    (2, "gallbladder", (70, 200, 70)),
    (3, "abdominal_wall", (230, 160, 200)),
    (4, "fat", (250, 220, 60)),
    (5, "ligament", (90, 140, 255)),
    (6, "tool_shaft", (150, 150, 150)),
    (7, "tool_tip", (0, 255, 255)),
]
CLASS_IDS = {name: cid for cid, name, _ in CLASSES}
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _cid, _name, _rgb in CLASSES:
    PALETTE[_cid] = _rgb

# Per-frame files, relative to the patient folder: kind -> (folder, suffix).
FRAME_FILES = {
    "image": ("image", ".png"),  # uint8 RGB, sRGB
    "segmentation": ("segmentation", ".png"),  # uint8 class ids
    "depth": ("depth", ".npy"),  # float32 millimetres, planar z; inf where nothing was hit
    "normals": ("normals", ".npy"),  # float32 (H, W, 3) unit normals, OpenCV camera frame
    "meta": ("meta", ".json"),  # camera, light, tools, counts; written last
}
TRANSLATION_FOLDER = "translation"  # reserved for backend.translate


class DatasetError(ValueError):
    """A data set folder that cannot be used as asked; the message names the file or key."""


# ----------------------------------------------------------------------------- atomic files

_UMASK = os.umask(0)
os.umask(_UMASK)

def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- frames and shards

@dataclass(frozen=True)
class FrameKey:
    patient: str
    frame: int

    @property
    def stem(self) -> str:
        return f"{self.frame:06d}"

    def relpath(self, kind: str) -> str:
        folder, suffix = FRAME_FILES[kind]
        return f"{self.patient}/{folder}/{self.stem}{suffix}"


def patient_key(name: str) -> int:
    """Stable per-patient number (adding or removing patients changes no other patient's frames)."""
    return zlib.crc32(name.encode("utf-8"))


def frame_seed(seed: int, patient: str, frame: int) -> int:
    """Seed of frame k of patient p: depends on (seed, p, k) only."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(patient_key(patient), int(frame)))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N (I is 0-based, e.g. $SLURM_ARRAY_TASK_ID with --array=0-(N-1))."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DatasetError(f"--shard {text!r}: expected I/N with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise DatasetError(f"--shard {text!r}: need N >= 1 and 0 <= I < N")
    return i, n


def all_frames(patients: list[str], frames_per_scene: int) -> list[FrameKey]:
    return [FrameKey(p, k) for p in sorted(patients) for k in range(frames_per_scene)]


def shard_frames(frames: list[FrameKey], shard: tuple[int, int]) -> list[FrameKey]:
    """Round-robin split: disjoint, complete, balanced; patients stay grouped within a shard."""
    i, n = shard
    return [f for idx, f in enumerate(frames) if idx % n == i]


# ----------------------------------------------------------------------------- index

INDEX_DIR = "index"


def index_file(root: str | os.PathLike, shard: tuple[int, int]) -> Path:
    i, n = shard
    return Path(root) / INDEX_DIR / f"shard-{i:04d}-of-{n:04d}.jsonl"


class IndexWriter:
    """Append-only JSON-lines index of finished frames, one file per shard.

    An entry is appended (one write, then fsync) only after every file of the frame was
    renamed into place, so the index never names a half-written frame. A line torn by a
    kill is cut off when the file is next opened and ignored by readers.
    """

    def __init__(self, root: str | os.PathLike, shard: tuple[int, int]):
        self.path = index_file(root, shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
        self._f = open(self.path, "ab")

    def append(self, entry: dict) -> None:
        self._f.write((json.dumps(entry, sort_keys=True) + "\n").encode())
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_index(root: str | os.PathLike) -> list[dict]:
    """All finished frames of a data set (every shard's index), sorted by patient and frame."""
    root = Path(root)
    if not (root / "dataset.json").is_file():
        raise DatasetError(f"{root}: not a data set (no dataset.json)")
    entries: dict[tuple[str, int], dict] = {}
    for path in sorted((root / INDEX_DIR).glob("*.jsonl")):
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                key = (e["patient"], int(e["frame"]))
            except (ValueError, KeyError, TypeError):
                continue  # torn tail of a killed writer
            entries[key] = e
    return [entries[k] for k in sorted(entries)]


def finished_frames(root: str | os.PathLike) -> set[FrameKey]:
    root = Path(root)
    done = set()
    for e in read_index(root):
        key = FrameKey(e["patient"], int(e["frame"]))
        if all((root / key.relpath(kind)).is_file() for kind in FRAME_FILES):
            done.add(key)
    return done


# ----------------------------------------------------------------------------- dataset.json

def dataset_manifest(settings: dict, patients: list[str], versions: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "classes": [{"id": cid, "name": name, "color": list(rgb)} for cid, name, rgb in CLASSES],
        "resolution": settings["resolution"],
        "seed": settings["seed"],
        "settings": settings,
        "patients": sorted(patients),
        "frames": {kind: {"folder": folder, "suffix": suffix} for kind, (folder, suffix) in FRAME_FILES.items()},
        "translation_folder": TRANSLATION_FOLDER,
        "depth": "planar z along the optical axis, millimetres, float32; inf where no surface",
        "normals": "unit surface normals in the OpenCV camera frame (x right, y down, z forward), float32",
        "created_by": versions,
    }


# A data set may grow: more frames per patient or more patients give the same frames as before.
EXTENDABLE = {"frames_per_scene"}


def manifest_conflicts(existing: dict, wanted: dict) -> list[str]:
    """Settings that change frame content and differ between a data set on disk and the request."""
    diffs = []
    if existing.get("format_version") != wanted["format_version"]:
        diffs.append(f"format_version {existing.get('format_version')!r} != {wanted['format_version']!r}")
    old, new = existing.get("settings", {}), wanted["settings"]
    for key in sorted((set(old) | set(new)) - EXTENDABLE):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)!r} on disk, {new.get(key)!r} asked")
    return diffs


def colorize(segmentation: np.ndarray) -> np.ndarray:
    return PALETTE[segmentation]
