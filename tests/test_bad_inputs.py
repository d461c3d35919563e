"""Bad input over every program, one table: each case must exit with status 2, print one line naming
the culprit, show no traceback, and write nothing anywhere (the whole work folder is compared).

A new case is one line in CASES: (id, program, args, needle, prepare). `args` may use {data} (a copy of
a tiny rendered data set), {ckpt} (a translator checkpoint), {real} (real frames), {file} (a regular
file), {tmp} (the work folder), {meshes} (the bundled patients), {images}/{masks} (Endoscapes frames and
masks), {model} (a segmentation model). `prepare(tmp)` breaks something first (an index line, a format
version, a mesh). Backend programs run in-process through their `main` (fast: torch is imported once);
render.py runs as a subprocess, as users run it.
"""
import json
import shutil

import pytest
import torch

from backend import evaluate, frames, meshes, segment, stats, train, translate
from backend.segmenter.model import TernausNet11, save_model
from backend.translator.config import load_config
from backend.translator.networks import build_networks
from conftest import MESHES, ROOT, TINY, run_render, shared_data

PROGRAMS = {"train": train.main, "translate": translate.main, "segment": segment.main, "meshes": meshes.main,
            "frames": frames.main, "evaluate": evaluate.main, "stats": stats.main}


# ----------------------------------------------------------------------------- ways to break a data set

def index_path(tmp):
    return next((tmp / "A" / "index").glob("*.jsonl"))


def edit_first_entry(**changes):
    def prepare(tmp):
        path = index_path(tmp)
        lines = path.read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), **changes})
        path.write_text("\n".join(lines) + "\n")
    return prepare


def break_middle_line(tmp):
    path = index_path(tmp)
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # followed by more lines: not a torn tail
    path.write_text("\n".join(lines) + "\n")


def future_format(tmp):
    path = tmp / "A" / "dataset.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))


def symlink_out(tmp):
    outside = tmp / "elsewhere"
    outside.mkdir()
    e = json.loads(index_path(tmp).read_text().splitlines()[0])
    shutil.copy(tmp / "A" / e["image"], outside / "x.png")
    (tmp / "A" / e["patient"] / "escape").symlink_to(outside, target_is_directory=True)
    edit_first_entry(image=f"{e['patient']}/escape/x.png")(tmp)


def translation_folder_is_a_file(tmp):
    e = json.loads(index_path(tmp).read_text().splitlines()[0])
    (tmp / "A" / e["patient"] / "translation").write_text("not a folder")


def truncated_liver(tmp):
    patient = tmp / "meshes" / "patient07"
    shutil.copytree(MESHES / "patient07", patient)
    data = (patient / "liver.ply").read_bytes()
    (patient / "liver.ply").write_bytes(data[: len(data) // 2])


def empty_folder(tmp):
    (tmp / "empty").mkdir()


def strangers_folder(tmp):
    (tmp / "thesis").mkdir()
    (tmp / "thesis" / "thesis.tex").write_text("precious")


def manifest_patients(*patients, **changes):
    """dataset.json names patients (or other folders) that point out of the data set; a victim folder waits
    there."""
    def prepare(tmp):
        victim = tmp / "victim"
        for folder in ("image", "segmentation", "translation"):
            (victim / folder).mkdir(parents=True)
            (victim / folder / "precious.txt").write_text("not ours")
        (tmp / "A" / "linked").symlink_to(victim, target_is_directory=True)
        path = tmp / "A" / "dataset.json"
        m = json.loads(path.read_text())
        path.write_text(json.dumps({**m, "patients": m["patients"] + list(patients), **changes}))
    return prepare


def manifest_is(text):
    def prepare(tmp):
        (tmp / "A" / "dataset.json").write_text(text)
    return prepare


def backslash_patient(tmp):
    patient = tmp / "meshes" / "pat\\07"
    patient.mkdir(parents=True)
    shutil.copy(MESHES / "patient07" / "liver.ply", patient / "liver.ply")


def binary_file(tmp):
    (tmp / "frames.bin").write_bytes(bytes(range(256)) * 4)  # neither an image nor a text list


def text_checkpoint(tmp):
    (tmp / "notes.pt").write_text("not a checkpoint")


def other_render_settings_translated(tmp):
    (tmp / "A" / "translation.json").write_text(json.dumps({"format": 99}))


# ----------------------------------------------------------------------------- the table

DATA = ["--renders", "{data}", "--real", "{real}", "--out", "{tmp}/run", "--config", str(ROOT / "tests" / "tiny.yaml")]
TR = ["--checkpoint", "{ckpt}", "--data", "{data}", "--device", "cpu"]
SEG = ["train", "--regime", "synthetic", "--synthetic", "{data}", "--use", "render", "--resolution", "96x64",
       "--iterations", "1", "--device", "cpu"]
EVAL = ["eval", "--checkpoint", "{model}", "--real-images", "{images}", "--real-masks", "{masks}", "--device", "cpu"]

CASES = [
    # render.py
    ("render-resolution", "render", ["--out", "{tmp}/o", "--resolution", "0x0"], "--resolution", None),
    ("render-shard", "render", ["--out", "{tmp}/o", "--shard", "2/2"], "--shard", None),
    ("render-meshes-missing", "render", ["--meshes", "{tmp}/none", "--out", "{tmp}/o"], "--meshes", None),
    ("render-out-under-file", "render", ["--out", "{file}/sub"], "is a file", None),
    ("render-unknown-patient", "render", ["--out", "{tmp}/o", "--patients", "nobody"], "nobody", None),
    ("render-no-patient", "render", ["--out", "{tmp}/o", "--patients", ","], "--patients ',': names no patient", None),
    ("render-view", "render", ["--out", "{tmp}/o", "--view", "sideways"], "--view", None),
    ("render-fov-mask", "render", ["--out", "{tmp}/o", "--fov-mask", "square"], "--fov-mask", None),
    ("render-samples", "render", ["--out", "{tmp}/o", "--samples", "0"], "--samples", None),
    ("render-max-tools", "render", ["--out", "{tmp}/o", "--max-tools", "4"], "--max-tools", None),
    ("render-min-liver", "render", ["--out", "{tmp}/o", "--min-liver", "2"], "--min-liver", None),
    # nan passed every range check and was written to dataset.json, which then refused every resume
    ("render-min-liver-nan", "render", ["--out", "{tmp}/o", "--min-liver", "nan"], "--min-liver nan: must be a finite", None),
    ("render-fps-inf", "render", ["--out", "{tmp}/o", "--fps", "inf"], "--fps inf: must be a finite", None),
    ("render-threads-huge", "render", ["--out", "{tmp}/o", "--threads", "100000000000"], "--threads", None),
    ("render-frames-huge", "render", ["--out", "{tmp}/o", "--frames-per-scene", "2000000"], "--frames-per-scene", None),
    ("render-device", "render", ["--out", "{tmp}/o", "--device", "tpu"], "--device", None),
    ("render-strangers-folder", "render", ["--out", "{tmp}/thesis"], "not empty", strangers_folder),
    ("render-truncated-mesh", "render", ["--meshes", "{tmp}/meshes", "--out", "{tmp}/o"], "liver.ply",
     truncated_liver),
    ("render-future-format", "render", ["--out", "{data}", "--frames-per-scene", "1"], "format_version",
     future_format),
    # --overwrite removes only what dataset.json names, and only inside the data set
    ("render-overwrite-climbing-patient", "render", ["--out", "{data}", "--seed", "99", "--overwrite"],
     "not a plain folder name", manifest_patients("../victim")),
    ("render-overwrite-climbing-translations", "render", ["--out", "{data}", "--seed", "99", "--overwrite"],
     "translation_folder", manifest_patients(translation_folder="../../victim/translation")),
    ("render-overwrite-linked-patient", "render", ["--out", "{data}", "--seed", "99", "--overwrite"],
     "symbolic link leaves", manifest_patients("linked")),
    ("render-overwrite-not-a-manifest", "render", ["--out", "{data}", "--overwrite"], "not a data set manifest",
     manifest_is("[]")),
    ("render-overwrite-invalid-manifest", "render", ["--out", "{data}", "--overwrite"], "not valid JSON",
     manifest_is("{not json")),
    ("render-backslash-patient", "render", ["--meshes", "{tmp}/meshes", "--patients", "pat\\07", "--out", "{tmp}/o"],
     "backslash", backslash_patient),
    # backend.meshes
    ("meshes-liver-missing", "meshes", ["import", "--liver", "{tmp}/no.stl", "--name", "x", "--out", "{tmp}/m"],
     "file not found", None),
    ("meshes-axes", "meshes", ["import", "--liver", str(MESHES / "patient01" / "liver.ply"), "--axes", "XYZ",
                               "--name", "x", "--out", "{tmp}/m"], "--axes", None),
    ("meshes-name", "meshes", ["import", "--liver", str(MESHES / "patient01" / "liver.ply"), "--name", "../x",
                               "--out", "{tmp}/m"], "--name", None),
    ("meshes-unknown-default", "meshes", ["generate", "--patients", "nobody", "--out", "{tmp}/m"], "nobody", None),
    ("meshes-out-under-file", "meshes", ["generate", "--out", "{file}/m"], "is a file", None),
    ("meshes-truncated-ply", "meshes", ["import", "--liver", "{tmp}/meshes/patient07/liver.ply", "--name", "x",
                                        "--out", "{tmp}/m"], "liver.ply", truncated_liver),
    # backend.train
    ("train-not-a-data-set", "train", ["--renders", "{tmp}/empty", "--real", "{real}", "--out", "{tmp}/run"],
     "no dataset.json", empty_folder),
    ("train-real-missing", "train", DATA[:2] + ["--real", "{tmp}/none"] + DATA[4:], "--real", None),
    ("train-config-key", "train", DATA + ["--set", "gen.stlye_dim=4"], "gen.stlye_dim", None),
    ("train-negative-seed", "train", DATA + ["--set", "seed=-1"], "seed=-1", None),
    ("train-set-not-yaml", "train", DATA + ["--set", "gen.style_dim=[4"], "not valid YAML", None),
    ("train-iterations-0", "train", DATA + ["--iterations", "0"], "--iterations", None),
    ("train-real-binary", "train", DATA[:2] + ["--real", "{tmp}/frames.bin"] + DATA[4:], "frames.bin",
     binary_file),
    ("train-config-missing", "train", DATA[:-1] + ["{tmp}/none.yaml"], "none.yaml", None),
    ("train-out-under-file", "train", DATA[:4] + ["--out", "{file}/run"], "is a file", None),
    ("train-no-gpu", "train", DATA + ["--device", "cuda:7"], "--device", None),
    ("train-future-format", "train", DATA, "format_version", future_format),
    ("train-absolute-path", "train", DATA, "absolute path", edit_first_entry(image="/etc/passwd")),
    ("train-climbing-path", "train", DATA, "climbs out", edit_first_entry(image="../../other/x.png")),
    ("train-broken-middle-line", "train", DATA, "not a valid index line", break_middle_line),
    ("train-symlink-out", "train", DATA, "symbolic link", symlink_out),
    ("train-bad-frame", "train", DATA, "frame", edit_first_entry(frame="seven")),
    # backend.translate
    ("translate-evil-patient", "translate", TR, "not a plain folder name", edit_first_entry(patient="../../evil")),
    ("translate-absolute-path", "translate", TR, "absolute path", edit_first_entry(segmentation="/etc/passwd")),
    ("translate-broken-middle-line", "translate", TR, "not a valid index line", break_middle_line),
    ("translate-future-format", "translate", TR, "format_version", future_format),
    ("translate-styles", "translate", TR + ["--styles", "0"], "--styles", None),
    ("translate-styles-too-many", "translate", TR + ["--styles", "10001"], "--styles 10001", None),
    ("translate-shard", "translate", TR + ["--shard", "1/1"], "--shard", None),
    ("translate-png-level", "translate", TR + ["--png-level", "10"], "--png-level", None),
    ("translate-checkpoint-missing", "translate", ["--checkpoint", "{tmp}/no.pt", "--data", "{data}"],
     "no.pt", None),
    ("translate-checkpoint-garbage", "translate", ["--checkpoint", "{tmp}/notes.pt", "--data", "{data}"],
     "not a readable checkpoint", text_checkpoint),
    ("translate-folder-is-file", "translate", TR, "is not a folder", translation_folder_is_a_file),
    ("translate-style-from-empty", "translate", TR + ["--style-from", "{tmp}/empty"], "--style-from",
     empty_folder),
    ("translate-other-manifest", "translate", TR, "other settings", other_render_settings_translated),
    # backend.segment
    ("segment-out-under-file", "segment", SEG + ["--out", "{file}/m.pt"], "is a file", None),
    ("segment-negative-seed", "segment", SEG + ["--seed", "-1", "--out", "{tmp}/m.pt"], "--seed", None),
    ("segment-resolution", "segment", SEG[:7] + ["--resolution", "96x60", "--out", "{tmp}/m.pt"],
     "multiples of 32", None),
    ("segment-climbing-path", "segment", SEG + ["--out", "{tmp}/m.pt"], "climbs out",
     edit_first_entry(segmentation="../../x.png")),
    ("segment-future-format", "segment", SEG + ["--out", "{tmp}/m.pt"], "format_version", future_format),
    ("segment-eval-checkpoint-missing", "segment", ["eval", "--checkpoint", "{tmp}/no.pt", "--real-images",
                                                    "{images}", "--real-masks", "{masks}", "--out", "{tmp}/r"],
     "no.pt", None),
    ("segment-eval-out-under-file", "segment", EVAL + ["--out", "{file}/r"], "is a file", None),
    ("segment-protocol-regime", "segment", ["protocol", "--synthetic", "{data}", "--real-images", "{images}",
                                            "--real-masks", "{masks}", "--regimes", "magic", "--out", "{tmp}/r"],
     "--regimes", None),
    ("segment-preset", "segment", EVAL + ["--preset", "{tmp}/none.json", "--out", "{tmp}/r"], "--preset", None),
    # backend.frames
    ("frames-video-missing", "frames", ["--video", "{tmp}/no.mp4", "--out", "{tmp}/f"], "no.mp4", None),
    ("frames-fps", "frames", ["--video", "{file}", "--fps", "0", "--out", "{tmp}/f"], "--fps", None),
    ("frames-fps-nan", "frames", ["--video", "{file}", "--fps", "nan", "--out", "{tmp}/f"], "--fps nan", None),
    ("frames-fps-inf", "frames", ["--video", "{file}", "--fps", "inf", "--out", "{tmp}/f"], "--fps inf", None),
    ("frames-out-under-file", "frames", ["--video", "{file}", "--out", "{file}/f"], "is a file", None),
    # backend.evaluate
    ("evaluate-untranslated", "evaluate", ["--data", "{data}", "--out", "{tmp}/q"], "no translations", None),
    ("evaluate-inception-missing", "evaluate", ["--data", "{data}", "--inception", "{tmp}/no.pth", "--real",
                                                "{real}", "--out", "{tmp}/q"], "no.pth", None),
    ("evaluate-out-under-file", "evaluate", ["--data", "{data}", "--out", "{file}/q"], "is a file", None),
    ("evaluate-future-format", "evaluate", ["--data", "{data}", "--out", "{tmp}/q"], "format_version", future_format),
    # backend.stats
    ("stats-not-a-data-set", "stats", ["--data", "{tmp}", "--out", "{tmp}/s"], "dataset.json", None),
    ("stats-masks-alone", "stats", ["--data", "{data}", "--real-masks", "{masks}", "--out", "{tmp}/s"],
     "--real-images", None),
    ("stats-preset", "stats", ["--data", "{data}", "--real-images", "{images}", "--real-masks", "{masks}",
                               "--preset", "nonsense", "--out", "{tmp}/s"], "--preset", None),
    ("stats-future-format", "stats", ["--data", "{data}", "--out", "{tmp}/s"], "format_version", future_format),
]
RENDER_DEFAULTS = ["--meshes", str(MESHES), "--patients", "patient07", *TINY]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_dataset):
    """What the cases point at, made once: a checkpoint, a segmentation model, real frames."""
    root = tmp_path_factory.mktemp("assets")
    cfg = load_config(ROOT / "tests" / "tiny.yaml")
    nets = build_networks(cfg)
    torch.save({"iteration": 1, "config": cfg.to_dict(), **{k: m.state_dict() for k, m in nets.items()}},
               root / "ckpt.pt")
    save_model(root / "seg.pt", TernausNet11(), size=[64, 96], regime="synthetic", imagenet=None)
    endo = shared_data() / "real" / "endoscapes"
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for p in sorted((endo / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, root / "images" / p.name)
        shutil.copy(endo / "masks" / (p.stem + ".png"), root / "masks" / (p.stem + ".png"))
    return {"ckpt": root / "ckpt.pt", "model": root / "seg.pt", "images": root / "images", "masks": root / "masks",
            "real": shared_data() / "real" / "cholec80_vid03", "dataset": tiny_dataset}


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.is_dir(), p.is_symlink() or p.is_dir() or p.stat().st_size,
                                         p.is_symlink() or p.is_dir() or p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def run_program(program, argv, capsys):
    if program == "render":
        proc = run_render(*argv, check=False, timeout=300)
        return proc.returncode, proc.stderr
    try:
        code = PROGRAMS[program](argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, assets, capsys):
    name, program, args, needle, prepare = case
    shutil.copytree(assets["dataset"], tmp_path / "A", symlinks=True)
    (tmp_path / "file").write_text("a regular file")
    if prepare is not None:
        prepare(tmp_path)
    values = {"data": tmp_path / "A", "tmp": tmp_path, "file": tmp_path / "file", "meshes": MESHES, **assets}
    argv = [a.format(**values) for a in args]
    if program == "render":
        argv = RENDER_DEFAULTS + argv  # later options win
    before = snapshot(tmp_path)
    code, err = run_program(program, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}\n{err[-2000:]}"
    assert len(lines) == 1 and "error" in lines[0] and needle in lines[0], f"{name}: {err[-2000:]}"
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, f"{name}: something was written"


def test_the_sweep_covers_every_program_and_enough_kinds():
    assert {c[1] for c in CASES} == set(PROGRAMS) | {"render"}
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
