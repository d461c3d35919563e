"""The on-disk data set contract (docs/dataset-format.md): layout, index, shards, manifests.

Renders and their translations both live here: the renderer writes through it, `backend.translate`
adds translations through it, and every reader (training, translation, segmentation, evaluation)
reads through it. Pure Python + numpy.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .classes import LABEL_CLASSES, OUTSIDE_FOV
from .errors import DatasetError
from .files import atomic_write_json
from .settings import settings_conflicts

FORMAT_VERSION = 2  # the newest this version writes and reads
# 1: the original layout. 2: the same plus a circular field of view (--fov-mask circle): class 8 outside
# it, depth NaN and normals 0 there. A data set without the mask is written as 1, which older readers read.
READABLE_FORMATS = (1, 2)

# Per-frame files, relative to the patient folder: kind -> (folder, suffix).
FRAME_FILES = {
    "image": ("image", ".png"),  # uint8 RGB, sRGB
    "segmentation": ("segmentation", ".png"),  # uint8 class ids
    "depth": ("depth", ".npy"),  # float32 millimetres, planar z; inf where nothing was hit
    "normals": ("normals", ".npy"),  # float32 (H, W, 3) unit normals, OpenCV camera frame
    "meta": ("meta", ".json"),  # camera, light, tools, counts; written last
}
# Written only where they apply (sequences: --sequence-length > 1); an index entry lists them when present.
OPTIONAL_FRAME_FILES = {
    "flow": ("flow", ".npy"),  # float32 (H, W, 2) forward optical flow, pixels per frame (du right, dv down)
}
INDEX_DIR = "index"
PREVIEW = "preview.png"

# Translations (backend.translate): named sets, one per method, each with its own folders, index and
# manifest: <patient>/<name>/<frame>_<k>.png and <frame>.json, <name>_index/, <name>.json,
# <name>_sheet.png. The learned translator's set is "translation" (the layout before sets had names);
# training-free baselines (FDA, colour transfer) are sets beside it. They belong to the renders and
# go when the renders go.
# A patient folder: <organ>.ply for these organs (liver and abdominal_wall required); nothing else in it is
# the patient (patient.json, a source CT, a killed writer's .tmp-*.ply).
ORGAN_FILES = ("liver", "gallbladder", "fat", "ligament", "abdominal_wall")
TRANSLATION_FOLDER = "translation"
TRANSLATION_INDEX_DIR = "translation_index"
TRANSLATION_MANIFEST = "translation.json"
TRANSLATION_SHEET = "translation_sheet.png"
TRANSLATION_FORMAT = 1
RESERVED_SET_NAMES = {folder for folder, _ in FRAME_FILES.values()} | {INDEX_DIR, "dataset", "preview", "render"}

# ----------------------------------------------------------------------------- frames and shards

@dataclass(frozen=True)
class FrameKey:
    patient: str
    frame: int

    @property
    def stem(self) -> str:
        return f"{self.frame:06d}"

    def relpath(self, kind: str) -> str:
        folder, suffix = FRAME_FILES[kind] if kind in FRAME_FILES else OPTIONAL_FRAME_FILES[kind]
        return f"{self.patient}/{folder}/{self.stem}{suffix}"


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

def index_file(root: str | os.PathLike, shard: tuple[int, int], folder: str = INDEX_DIR) -> Path:
    i, n = shard
    return Path(root) / folder / f"shard-{i:04d}-of-{n:04d}.jsonl"


class IndexWriter:
    """Append-only JSON-lines index of finished frames, one file per shard (renders: `index/`,
    translations: `translation_index/`).

    An entry is appended (one write, then fsync) only after every file of the frame was
    renamed into place, so the index never names a half-written frame. A line torn by a
    kill is cut off when the file is next opened and ignored by readers.
    """

    def __init__(self, root: str | os.PathLike, shard: tuple[int, int], folder: str = INDEX_DIR):
        self.path = index_file(root, shard, folder)
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


# ----------------------------------------------------------------------------- trust

# A data set is shared, downloaded and edited by hand: nothing read from its index is trusted. Every
# entry is checked before anything is opened or written: patient names are plain folder names, paths
# are relative, without "..", and do not leave the data set through a symbolic link.

def plain_name(name) -> bool:
    """A folder name that cannot point anywhere else: no separators, not '.', '..' or hidden."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and not name.startswith(".")
            and not any(c in name for c in "/\\\0"))


class _Inside:
    """Checks that relative paths stay inside `root`, following symbolic links (folders cached)."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self._folders: dict[str, bool] = {}

    def _within(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def check(self, rel, what: str) -> str | None:
        """None if `rel` is a safe path inside the data set, else what is wrong with it."""
        if not isinstance(rel, str) or not rel:
            return f"{what}: expected a relative path, got {rel!r}"
        if "\0" in rel or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
            return f"{what} {rel!r}: an absolute path (index paths are relative to the data set)"
        if any(part == ".." for part in rel.replace("\\", "/").split("/")):
            return f"{what} {rel!r}: climbs out of the data set ('..')"
        full = os.path.join(self.root, rel)
        parent = os.path.dirname(full)
        if parent not in self._folders:
            self._folders[parent] = self._within(os.path.realpath(parent))
        if not self._folders[parent] or (os.path.islink(full) and not self._within(os.path.realpath(full))):
            return f"{what} {rel!r}: a symbolic link leaves the data set"
        return None


def _entry_problem(e, inside: _Inside, path_keys: tuple[str, ...], list_keys: tuple[str, ...],
                   optional_keys: tuple[str, ...] = ()) -> str | None:
    if not isinstance(e, dict):
        return "not a JSON object"
    if not plain_name(e.get("patient")):
        return f"patient {e.get('patient')!r}: not a plain folder name"
    frame = e.get("frame")
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        return f"frame {frame!r}: not a frame number"
    for key in path_keys:
        if key not in e:
            return f"no {key!r}"
        problem = inside.check(e[key], key)
        if problem:
            return problem
    for key in optional_keys:
        if key in e:
            problem = inside.check(e[key], key)
            if problem:
                return problem
    for key in list_keys:
        if not isinstance(e.get(key), list) or not e[key]:
            return f"{key}: expected a list of paths"
        for rel in e[key]:
            problem = inside.check(rel, key)
            if problem:
                return problem
    return None


def read_index_folder(root: Path, folder: str, path_keys: tuple[str, ...] = (),
                      list_keys: tuple[str, ...] = (), optional_keys: tuple[str, ...] = ()) -> dict[tuple[str, int], dict]:
    """Entries of every shard's JSON-lines file in root/folder, by (patient, frame); the last entry of a
    frame wins. Only a torn last line (no newline: a writer killed mid-append, trimmed when the writer
    reopens the file) is skipped; any other bad line is a DatasetError naming the file and line."""
    entries: dict[tuple[str, int], dict] = {}
    inside = _Inside(root)
    for path in sorted((Path(root) / folder).glob("*.jsonl")):
        lines = path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError as err:
                if number == len(lines):
                    continue  # torn tail of a killed writer
                raise DatasetError(f"{path}:{number}: not a valid index line ({err.msg})") from None
            problem = _entry_problem(e, inside, path_keys, list_keys, optional_keys)
            if problem:
                raise DatasetError(f"{path}:{number}: {problem}")
            entries[(e["patient"], e["frame"])] = e
    return entries


def read_manifest(root: Path) -> dict:
    """dataset.json, refused when missing, unreadable or of a format this version does not know."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        if Path(root).is_file():  # dataset.json itself, or an image of the set: the folder was meant
            raise DatasetError(f"{root}: a file; a data set is the folder that holds dataset.json")
        if not Path(root).exists():
            raise DatasetError(f"{root}: no such folder")
        raise DatasetError(f"{root}: not a data set (no dataset.json)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: not a data set manifest (expected a JSON object)")
    version = manifest.get("format_version")
    if version not in READABLE_FORMATS:
        raise DatasetError(f"{path}: format_version {version!r} is not one this lapsynth reads "
                           f"({', '.join(map(str, READABLE_FORMATS))}); use the lapsynth version that wrote it")
    return manifest


def read_index(root: str | os.PathLike) -> list[dict]:
    """All finished frames of a data set (every shard's index), sorted by patient and frame; every entry
    checked (see `read_index_folder`)."""
    root = Path(root)
    read_manifest(root)
    entries = read_index_folder(root, INDEX_DIR, path_keys=tuple(FRAME_FILES), optional_keys=tuple(OPTIONAL_FRAME_FILES))
    return [entries[k] for k in sorted(entries)]


def finished_frames(root: str | os.PathLike) -> set[FrameKey]:
    root = Path(root)
    done = set()
    for e in read_index(root):
        key = FrameKey(e["patient"], int(e["frame"]))
        kinds = [*FRAME_FILES, *(kind for kind in OPTIONAL_FRAME_FILES if kind in e)]  # flow, where listed
        if all((root / key.relpath(kind)).is_file() for kind in kinds):
            done.add(key)
    return done


# ----------------------------------------------------------------------------- translations

def valid_set_name(name) -> bool:
    """A translation set's name: a plain folder name of letters, digits, '-' and '_' that no part of the
    layout uses already."""
    return plain_name(name) and all(c.isalnum() or c in "-_" for c in name) and name not in RESERVED_SET_NAMES


def check_set_name(name) -> str:
    """`name` if it is a valid translation set name, else a DatasetError saying what one is."""
    if not valid_set_name(name):
        raise DatasetError(f"translation set name {name!r}: use letters, digits, '-' and '_', and none of "
                           f"{', '.join(sorted(RESERVED_SET_NAMES))}")
    return name


def set_index_dir(name: str = TRANSLATION_FOLDER) -> str:
    return f"{check_set_name(name)}_index"


def set_manifest(name: str = TRANSLATION_FOLDER) -> str:
    return f"{check_set_name(name)}.json"


def set_sheet(name: str = TRANSLATION_FOLDER) -> str:
    return f"{check_set_name(name)}_sheet.png"


def translation_sets(root: str | os.PathLike) -> list[str]:
    """The names of the translation sets a data set holds (an index folder and a manifest each)."""
    root = Path(root)
    names = []
    for d in sorted(root.glob("*_index")):
        name = d.name[:-len("_index")]
        if d.is_dir() and (root / f"{name}.json").is_file() and valid_set_name(name):
            names.append(name)
    return names


def translation_paths(patient: str, frame: int, styles: int, name: str = TRANSLATION_FOLDER) -> tuple[list[str], str]:
    """The K translation PNGs of a frame and its translation JSON in set `name`, relative to the data set."""
    folder = f"{patient}/{check_set_name(name)}"
    return [f"{folder}/{frame:06d}_{k}.png" for k in range(styles)], f"{folder}/{frame:06d}.json"


def read_translation_manifest(root: str | os.PathLike, name: str = TRANSLATION_FOLDER) -> dict | None:
    """Set `name`'s manifest (None if the set has none yet), refused when unreadable or of a format this
    version does not know."""
    manifest = Path(root) / set_manifest(name)
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
        fmt = data.get("format")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise DatasetError(f"{manifest}: not a translation manifest (invalid JSON)") from None
    if fmt != TRANSLATION_FORMAT:
        raise DatasetError(f"{manifest}: format {fmt!r} is not one this lapsynth reads ({TRANSLATION_FORMAT})")
    return data


def read_translation_index(root: str | os.PathLike, name: str = TRANSLATION_FOLDER) -> dict[tuple[str, int], dict]:
    """Translated frames of set `name` by (patient, frame): {"translations": [K relative paths], "meta":
    ...}; every entry checked, and the set's manifest format must be one this version knows."""
    read_translation_manifest(root, name)
    return read_index_folder(Path(root), set_index_dir(name), path_keys=("meta",), list_keys=("translations",))


def finished_translations(root: Path, styles: int, name: str = TRANSLATION_FOLDER) -> set[tuple[str, int]]:
    """Frames whose K translations are done: listed in the set's index (the one record of what is done)
    with every file present. Files without an index line are redone."""
    done = set()
    for key, e in read_translation_index(root, name).items():
        if len(e["translations"]) == styles and all((root / p).is_file() for p in [e["meta"], *e["translations"]]):
            done.add(key)
    return done


def remove_translations(root: Path, patients: list[str], name: str = TRANSLATION_FOLDER) -> None:
    """Delete one translation set of a data set (files, index, manifest, sheet), nothing else."""
    for p in patients:
        shutil.rmtree(root / p / check_set_name(name), ignore_errors=True)
    shutil.rmtree(root / set_index_dir(name), ignore_errors=True)
    for file in (set_manifest(name), set_sheet(name)):
        (root / file).unlink(missing_ok=True)


def prepare_translations(root: Path, manifest: dict, overwrite: bool, name: str = TRANSLATION_FOLDER) -> None:
    """Write set `name`'s manifest, resuming translations made with the same settings; others are
    refused, or with `overwrite` removed first."""
    path = root / set_manifest(name)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {"unreadable": str(path)}
        conflicts = settings_conflicts(old, manifest)
        if conflicts and not overwrite:
            what = "translations" if name == TRANSLATION_FOLDER else f"a translation set {name!r}"
            raise DatasetError(f"{root} already holds {what} made with other settings "
                               f"({'; '.join(conflicts)}); pass --overwrite to replace them")
        if conflicts:
            remove_translations(root, sorted({e["patient"] for e in read_index(root)}), name)
    atomic_write_json(path, manifest)


# ----------------------------------------------------------------------------- dataset.json

def dataset_manifest(settings: dict, patients: list[str], versions: dict, format_version: int = 1) -> dict:
    classes = LABEL_CLASSES + ([OUTSIDE_FOV] if format_version >= 2 else [])
    return {
        "format_version": format_version,
        "classes": [{"id": cid, "name": name, "color": list(rgb)} for cid, name, rgb in classes],
        "resolution": settings["resolution"],
        "seed": settings["seed"],
        "settings": settings,
        "patients": sorted(patients),
        "frames": {kind: {"folder": folder, "suffix": suffix} for kind, (folder, suffix) in FRAME_FILES.items()},
        "translation_folder": TRANSLATION_FOLDER,
        "depth": "planar z along the optical axis, millimetres, float32; inf where no surface"
                 + ("; NaN outside the field of view (class 8)" if format_version >= 2 else ""),
        "normals": "unit surface normals in the OpenCV camera frame (x right, y down, z forward), float32"
                   + ("; 0 outside the field of view" if format_version >= 2 else ""),
        "created_by": versions,
    }


# A data set may grow: more frames per patient or more patients give the same frames as before.
EXTENDABLE = {"frames_per_scene"}


def manifest_conflicts(existing: dict, wanted: dict, absent: dict | None = None) -> list[str]:
    """Settings that change frame content and differ between a data set on disk and the request.
    `absent`: the value a setting has where a manifest lacks it (settings added later are recorded
    only when they differ from what data sets had before), so a refusal names it ('classic' on disk)."""
    absent = absent or {}
    diffs = settings_conflicts({"format_version": existing.get("format_version")},
                               {"format_version": wanted["format_version"]})
    return diffs + settings_conflicts({**absent, **existing.get("settings", {})}, {**absent, **wanted["settings"]},
                                      may_change=EXTENDABLE)


def remove_dataset(out: Path, manifest: dict) -> None:
    """Delete what a data set consists of (renders, labels, index, preview, and every translation of
    them), and nothing else found in the folder. The names come from a dataset.json, which may have been
    edited or downloaded: all are checked before anything is deleted (a patient "/" or "../x" would
    otherwise point the deletion outside the data set)."""
    patients = manifest.get("patients", [])
    translations = manifest.get("translation_folder", TRANSLATION_FOLDER)
    inside = _Inside(out)
    if not isinstance(patients, list):
        raise DatasetError(f"{out / 'dataset.json'}: patients {patients!r} is not a list; nothing was removed")
    for p in patients:
        why = (f"patient {p!r}: not a plain folder name" if not plain_name(p) else inside.check(p, "patient"))
        if why:
            raise DatasetError(f"{out / 'dataset.json'}: {why}; nothing was removed")
    if not plain_name(translations):
        raise DatasetError(f"{out / 'dataset.json'}: translation_folder {translations!r}: not a plain folder name; "
                           "nothing was removed")
    for name in sorted(set(translation_sets(out)) | {TRANSLATION_FOLDER}):
        remove_translations(out, patients, name)
    for p in patients:
        for folder in ([f for f, _ in FRAME_FILES.values()] + [f for f, _ in OPTIONAL_FRAME_FILES.values()]
                       + [translations]):
            shutil.rmtree(out / p / folder, ignore_errors=True)
        try:
            (out / p).rmdir()
        except OSError:
            pass
    shutil.rmtree(out / INDEX_DIR, ignore_errors=True)
    for name in ("dataset.json", PREVIEW):
        (out / name).unlink(missing_ok=True)
