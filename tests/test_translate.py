"""Translation of a rendered data set: alignment, determinism, shards, resume, safety, frames from video."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from backend.common.images import read_mask, read_render
from backend.common.labelled import LabelledFrames
from backend.translator.translation import TranslateError, Translator
from blender_addon.core.dataset import read_index, read_translation_index
from blender_addon.core.progress import parse_progress
from conftest import ROOT, shared_data

TINY = ROOT / "tests" / "tiny.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("run")
    real = shared_data() / "real" / "cholec80_vid03"
    subprocess.run([sys.executable, "-m", "backend.train", "--config", str(TINY), "--renders", str(tiny_dataset),
                    "--real", str(real), "--out", str(out), "--iterations", "3"], check=True, cwd=ROOT,
                   capture_output=True)
    return out / "checkpoints" / "ckpt_00000003.pt"


@pytest.fixture
def data(tiny_dataset, tmp_path):
    copy = tmp_path / "A"
    shutil.copytree(tiny_dataset, copy)
    return copy


def translate(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "backend.translate", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _hashes(root, skip=("translation", "translation_index", "translation.json", "translation_sheet.png")):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(part in skip for part in p.relative_to(root).parts):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_translations_sit_beside_labels_with_their_records(data, checkpoint):
    before = _hashes(data)
    real = shared_data() / "real" / "cholec80_vid03"
    proc = translate("--checkpoint", checkpoint, "--data", data, "--styles", 3, "--style-from", real, "--seed", 4)
    assert _hashes(data) == before  # renders, labels, index and meta untouched
    progress = [p for p in map(parse_progress, proc.stderr.splitlines()) if p is not None]
    assert progress and progress[-1].what == "translate" and progress[-1].done == progress[-1].total == 8 * 3
    assert progress[-1].unit == "images"
    entries = read_index(data)
    index = read_translation_index(data)
    assert set(index) == {(e["patient"], e["frame"]) for e in entries}
    for e in entries:
        render = iio.imread(data / e["image"])
        seg = iio.imread(data / e["segmentation"])
        record = json.loads((data / index[(e["patient"], e["frame"])]["meta"]).read_text())
        assert len(record["outputs"]) == 3
        for out in record["outputs"]:
            img = iio.imread(data / out["image"])
            assert img.shape == render.shape and img.shape[:2] == seg.shape
            assert len(out["style"]) == 8 and out["source"].startswith(str(real))
            assert isinstance(out["seed"], int)
    assert iio.imread(data / "translation_sheet.png").shape[1] > 4 * 96
    ds = LabelledFrames(data, use="both")
    assert len(ds) == 4 * len(entries)
    item = ds[1]
    assert item["source"] == "translation:0"
    assert item["image"].shape == (3, 64, 96) and item["segmentation"].shape == (64, 96)
    assert item["normals"].shape == (3, 64, 96) and item["depth"].dtype == torch.float32
    assert item["meta"]["frame"] == item["frame"]


class _Identity(torch.nn.Module):
    """Stands in for both generators: encode and decode return their input unchanged."""

    def forward(self, x=None, content=None, style=None, mode="encode", noise=None):
        return x if mode in ("encode", "style") else content


def test_full_frame_is_translated_without_crop_or_resize():
    info = {"style_dim": 8, "noise_std": 0.1, "multiple": 4}
    t = Translator(_Identity(), _Identity(), info, torch.device("cpu"), styles=2, seed=0, noise=False)
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 62, 90)).astype(np.float32)) / 127.5 - 1
    out, _ = t.translate(img, [("p", 0)])
    assert out.shape == (1, 2, 3, 62, 90)  # odd sizes are padded for the network and cropped back
    assert torch.allclose(out[0, 0], img[0]) and torch.allclose(out[0, 1], img[0])


def test_same_seed_same_outputs_and_shards_equal_full_run(data, checkpoint, tmp_path):
    translate("--checkpoint", checkpoint, "--data", data, "--styles", 2, "--seed", 9, "--sheet", 0)
    sharded = tmp_path / "B"
    shutil.copytree(data.parent.parent / data.parent.name / "A", sharded, ignore=shutil.ignore_patterns(
        "translation", "translation_index", "translation.json"))
    for i in range(3):
        translate("--checkpoint", checkpoint, "--data", sharded, "--styles", 2, "--seed", 9, "--shard", f"{i}/3",
                  "--sheet", 0)
    a, b = read_translation_index(data), read_translation_index(sharded)
    assert a.keys() == b.keys() and len(list((sharded / "translation_index").glob("*.jsonl"))) == 3
    for key in a:
        for pa, pb in zip(a[key]["translations"], b[key]["translations"]):
            assert (data / pa).read_bytes() == (sharded / pb).read_bytes()
        ra = json.loads((data / a[key]["meta"]).read_text())
        rb = json.loads((sharded / b[key]["meta"]).read_text())
        assert ra["outputs"] == rb["outputs"]
    # A different seed gives different outputs.
    other = tmp_path / "C"
    shutil.copytree(sharded, other)
    translate("--checkpoint", checkpoint, "--data", other, "--styles", 2, "--seed", 10, "--sheet", 0, "--overwrite")
    key = next(iter(a))
    assert (data / a[key]["translations"][0]).read_bytes() != (other / a[key]["translations"][0]).read_bytes()


def test_kill_then_rerun_completes_without_corrupt_images(data, checkpoint):
    cmd = [sys.executable, "-m", "backend.translate", "--checkpoint", str(checkpoint), "--data", str(data),
           "--styles", "48", "--batch-frames", "1", "--sheet", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = data / "translation_index" / "shard-0000-of-0001.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (index.exists() and index.read_bytes().count(b"\n") >= 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_translation_index(data)
    assert 2 <= len(partial) < 8
    for e in partial.values():  # every indexed frame is complete and decodable
        for p in e["translations"]:
            assert iio.imread(data / p).shape == (64, 96, 3)
    with open(index, "ab") as f:  # a line torn by the kill: the index writer trims it on reopening
        f.write(b'{"frame": 7, "meta": "patient07/transl')
    stale = data / "patient01" / "translation" / ".tmp-killed.png"
    young = data / "patient07" / "translation" / ".tmp-live.png"
    for t in (stale, young):  # a killed writer's temporary (an hour old), and one another shard may be writing now
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_bytes(b"half a png")
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    rerun = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    assert not stale.exists() and young.exists() and "removed 1 temporaries of interrupted writes" in rerun.stderr
    final = read_translation_index(data)
    assert len(final) == 8
    for e in final.values():
        for p in e["translations"]:
            iio.imread(data / p)
    assert index.read_bytes().count(b"\n") == 8  # finished frames were skipped, not redone
    assert all(json.loads(line) for line in index.read_bytes().splitlines())  # the torn line is gone


def test_bad_inputs_are_refused_and_nothing_written(data, checkpoint, tmp_path, capsys):
    from backend.translate import main

    def refused(*args, needle):  # in this process: one torch import for all cases (the CLI exit: test_bad_inputs)
        before = _hashes(data, skip=())
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's refusals
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2, err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert _hashes(data, skip=()) == before

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    refused("--checkpoint", junk, "--data", data, needle="not a readable checkpoint")
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["gen"]["style_dim"] = 4  # weights made with style_dim 8
    other = tmp_path / "other.pt"
    torch.save(state, other)
    refused("--checkpoint", other, "--data", data, needle="does not match")
    no_index = tmp_path / "no_index"
    no_index.mkdir()
    refused("--checkpoint", checkpoint, "--data", no_index, needle="no dataset.json")
    empty = tmp_path / "empty_styles"
    empty.mkdir()
    refused("--checkpoint", checkpoint, "--data", data, "--shard", "5/2", needle="--shard")
    refused("--checkpoint", checkpoint, "--data", data, "--styles", "0", needle="--styles 0: must be >= 1")
    refused("--checkpoint", checkpoint, "--data", data, "--workers", "0", needle="--workers 0: must be >= 1")
    refused("--checkpoint", checkpoint, "--data", data, "--png-level", "10", needle="--png-level 10: must be 0 to 9")
    refused("--checkpoint", checkpoint, "--data", data, "--seed", "-5", needle="--seed -5: must be >= 0")
    # messages that name what was meant: the folder, not dataset.json; the newest checkpoint of a run folder
    refused("--checkpoint", checkpoint, "--data", data / "dataset.json",
            needle="dataset.json: a file; a data set is the folder that holds dataset.json")
    refused("--checkpoint", checkpoint.parent.parent, "--data", data,
            needle=f"a folder; pass a checkpoint file, e.g. its newest, {checkpoint}")
    refused("--checkpoint", checkpoint, "--data", data, "--style-from", empty,
            needle=f"--style-from {empty}: no .png/.jpg images found")  # named as given, not as --real


def test_frames_from_the_shared_clip(tmp_path):
    video = shared_data() / "real" / "clip" / "video3.mp4"
    from backend.translator.video import extract

    out = tmp_path / "frames"
    s = extract(video, out, fps=5, crop_border=True, log=lambda m: None)
    files = sorted(out.glob("*.png"))
    assert s["source_fps"] == pytest.approx(25) and len(files) == 17  # 81 frames at 25 fps -> every 5th
    assert [f.name for f in files[:3]] == ["video3_000000.png", "video3_000005.png", "video3_000010.png"]
    first = iio.imread(files[0])
    assert first.shape[0] == 480 and first.shape[1] < 854  # the black side borders are cropped away
    assert first[:, :3].max() > 20 and first[:, -3:].max() > 20
    again = extract(video, tmp_path / "dedup", fps=5, skip_duplicates=255, log=lambda m: None)
    assert again["kept"] == 1 and again["skipped_duplicates"] == 16
    resumed = extract(video, out, fps=5, crop_border=True, log=lambda m: None)  # same settings: nothing new
    assert resumed["kept"] == 17 and resumed["written"] == 0
    from backend.translator.video import FramesError
    for other in ({"fps": 5, "crop_border": False}, {"fps": 2, "crop_border": True}):
        with pytest.raises(FramesError, match="extracted with other settings") as err:  # would mix two kinds
            extract(video, out, log=lambda m: None, **other)
        assert ("crop_border" if other["fps"] == 5 else "fps: 5") in str(err.value)
    assert sorted(out.glob("*.png")) == files
    proc = subprocess.run([sys.executable, "-m", "backend.frames", "--video", str(tmp_path / "nope.mp4"), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "file not found" in proc.stderr
    for option, value in (("--skip-black", "-1"), ("--skip-duplicates", "300")):
        proc = subprocess.run([sys.executable, "-m", "backend.frames", "--video", str(video), "--out",
                               str(tmp_path / "x"), option, value], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and f"{option} {float(value)}: a mean grey level, 0 to 255" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_black_lead_in_is_skipped_before_the_view_is_measured_and_a_cut_video_is_reported(tmp_path):
    """With --crop-border --skip-black, black frames before the laparoscope enters no longer widen the measured
    view to the whole frame; a video shorter than the probe goes through the same filters; a file that stops
    before its announced duration is reported."""
    import imageio.v2 as imageio

    from backend.translator.video import extract

    clip = [np.asarray(f) for f in imageio.get_reader(str(shared_data() / "real" / "clip" / "video3.mp4"))]
    video = tmp_path / "lead.mp4"
    with imageio.get_writer(str(video), fps=25, macro_block_size=1) as w:
        for f in [np.zeros_like(clip[0])] * 25 + clip[:40]:
            w.append_data(f)
    plain = extract(shared_data() / "real" / "clip" / "video3.mp4", tmp_path / "plain", fps=5, crop_border=True,
                    log=lambda m: None)
    lead = extract(video, tmp_path / "lead", fps=5, crop_border=True, skip_black=15, log=lambda m: None)
    assert lead["skipped_black"] == 5 and lead["crop_box"] == plain["crop_box"] != (0, 480, 0, 854)
    short = tmp_path / "short.mp4"
    with imageio.get_writer(str(short), fps=25, macro_block_size=1) as w:
        for f in [np.zeros_like(clip[0])] * 12:
            w.append_data(f)
    assert extract(short, tmp_path / "short", fps=5, crop_border=True, skip_black=15, log=lambda m: None)["kept"] == 0
    said = []
    cut = tmp_path / "cut.mp4"
    whole = (shared_data() / "real" / "clip" / "video3.mp4").read_bytes()  # its index is at the start
    cut.write_bytes(whole[: len(whole) // 2])
    extract(cut, tmp_path / "cut", fps=5, log=said.append)
    assert any("may be cut short or damaged" in m for m in said), said


def _variable_rate_video(path):
    """42 frames, frame N showing a bright column at x = N: the first 20 at 30 fps, the rest at 10 fps
    (a phone's variable frame rate), lossless; returns each frame's time in seconds."""
    import imageio_ffmpeg

    times = [n / 30 if n < 20 else 20 / 30 + (n - 20) / 10 for n in range(42)]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=black:s=64x48:r=30:d=1.4", "-vf",
                    "geq=lum='if(eq(X,N),235,16)':cb=128:cr=128,setpts='if(lt(N,20),N/30,20/30+(N-20)/10)/TB'",
                    "-fps_mode", "passthrough", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path)],
                   check=True, capture_output=True, timeout=120)
    return times


def test_a_variable_frame_rate_video_is_sampled_at_even_times(tmp_path):
    """A variable-frame-rate file (15 fps on average, 30 tbr): ffmpeg repeats its frames to 30 fps unless asked
    for a rate, and sampling those by the header's 15 fps took 10 frames a second for 5 and named them by the
    wrong times. Decoded to 15 fps by time, --fps 5 keeps every third frame of that grid, each showing the
    source frame of its time; the record keeps the decoding, and frames an older version extracted (a record
    without it) are not mixed with these. A constant-rate file is read as before."""
    from backend.translator.video import FramesError, extract, header_rates, variable_rate

    video = tmp_path / "phone.mp4"
    times = _variable_rate_video(video)
    assert header_rates(video) == (15.0, 30.0) and variable_rate(header_rates(video))
    clip = shared_data() / "real" / "clip" / "video3.mp4"
    assert header_rates(clip) == (25.0, 25.0) and not variable_rate(header_rates(clip))
    said = []
    out = tmp_path / "frames"
    s = extract(video, out, fps=5, log=said.append)
    assert any("variable frame rate (15 fps on average, 30 tbr)" in m for m in said), said
    files = sorted(out.glob("*.png"))
    assert s["source_fps"] == 15 and s["variable_frame_rate"] == {"fps": 15.0, "tbr": 30.0}
    assert len(files) == 14  # 2.8 s at 5 fps (28 before: every third frame of the 30 fps repeats)
    index = [int(f.stem.split("_")[1]) for f in files]
    assert index == list(range(0, 3 * len(files), 3))
    shown = [int(np.argmax(iio.imread(f)[..., 0].mean(axis=0))) for f in files]  # the bright column: frame N
    assert shown == sorted(shown) and shown[-1] >= 38
    for i, n in zip(index, shown):  # the frame nearest i / 15 s (within one slot of the 15 fps grid)
        assert abs(times[n] - i / 15) <= 1 / 15 + 1e-6, (i, n, times[n])
    record = json.loads((out / "phone.frames.json").read_text())
    assert record["settings"]["variable_frame_rate_decoded_at"] == 15.0
    record["settings"].pop("variable_frame_rate_decoded_at")  # as an older version wrote it
    (out / "phone.frames.json").write_text(json.dumps(record))
    with pytest.raises(FramesError, match="variable_frame_rate_decoded_at"):
        extract(video, out, fps=5, log=said.append)
    assert sorted(out.glob("*.png")) == files


def test_torchrun_processes_take_disjoint_parts_equal_to_one_process(data, checkpoint, tmp_path):
    translate("--checkpoint", checkpoint, "--data", data, "--styles", 2, "--batch-frames", 2, "--sheet", 0,
              "--device", "cpu")
    two = tmp_path / "two"
    shutil.copytree(data, two, ignore=shutil.ignore_patterns("translation", "translation_index", "translation.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29533",
                           "-m", "backend.translate", "--checkpoint", str(checkpoint), "--data", str(two), "--styles",
                           "2", "--batch-frames", "2", "--sheet", "0", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in (two / "translation_index").glob("*.jsonl"))
    assert files == ["shard-0000-of-0002.jsonl", "shard-0001-of-0002.jsonl"]
    lines = [ln for f in files for ln in (two / "translation_index" / f).read_text().splitlines()]
    assert len(lines) == 8  # every frame once: disjoint, no padding
    a, b = read_translation_index(data), read_translation_index(two)
    assert a.keys() == b.keys()
    for key in a:
        for pa, pb in zip(a[key]["translations"], b[key]["translations"]):
            assert (data / pa).read_bytes() == (two / pb).read_bytes()
    # Other settings on disk: rank 0 refuses in one line, the other process stops with it (no hang, no
    # gloo traceback), nothing is rewritten.
    before = _hashes(two, skip=())
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29534",
                           "-m", "backend.translate", "--checkpoint", str(checkpoint), "--data", str(two), "--styles",
                           "2", "--batch-frames", "2", "--sheet", "0", "--device", "cpu", "--seed", "7"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode != 0
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("python -m backend.translate")]
    assert len(said) == 1 and "error:" in said[0] and "seed: 0 on disk, 7 asked" in said[0], proc.stderr[-3000:]
    # what is left is torchrun's own report of its failed children (one launcher traceback, exit codes 2)
    assert proc.stderr.count("Traceback") <= proc.stderr.count("ChildFailedError"), proc.stderr[-3000:]
    assert not any(w in proc.stderr for w in ("gloo", "DistBackendError", "Connection")), proc.stderr[-3000:]
    assert _hashes(two, skip=()) == before


def test_bf16_translation_matches_float32(checkpoint):
    """The CUDA bf16 translation path (through CPU autocast) stays close to float32 and keeps the layout."""
    from backend.translator.translation import load_translator

    gen_a, gen_b, info = load_translator(checkpoint, torch.device("cpu"))
    img = torch.rand(2, 3, 62, 90, generator=torch.Generator().manual_seed(0)) * 2 - 1
    keys = [("p", 0), ("p", 1)]
    outs = {}
    for amp in (False, True):
        t = Translator(gen_a, gen_b, info, torch.device("cpu"), styles=3, seed=0, noise=True,
                       amp="bf16" if amp else "none")
        outs[amp], _ = t.translate(img, keys)
    assert outs[True].dtype == torch.float32 and outs[True].shape == (2, 3, 3, 62, 90)
    assert not torch.equal(outs[True], outs[False])  # bf16 really ran
    assert (outs[True] - outs[False]).abs().mean() < 0.02


def test_what_is_done_is_decided_by_the_translation_index(data, checkpoint):
    """A kill between a frame's files and its index line (here: the line removed by hand) must not leave
    the set one frame short: the rerun translates that frame again and indexes it."""
    args = ("--checkpoint", checkpoint, "--data", data, "--styles", 2, "--sheet", 0, "--device", "cpu")
    translate(*args)
    index = data / "translation_index" / "shard-0000-of-0001.jsonl"
    lines = index.read_text().splitlines()
    lost = json.loads(lines[-1])
    index.write_text("\n".join(lines[:-1]) + "\n")
    assert (data / lost["translations"][0]).is_file() and len(read_translation_index(data)) == 7
    translate(*args)
    final = read_translation_index(data)
    assert len(final) == 8 and final[(lost["patient"], lost["frame"])]["translations"] == lost["translations"]
    assert len(LabelledFrames(data, use="translation")) == 8 * 2


def test_a_truncated_render_is_one_error_naming_it(data, checkpoint):
    render = data / read_index(data)[0]["image"]
    render.write_bytes(render.read_bytes()[: render.stat().st_size // 2])
    proc = translate("--checkpoint", checkpoint, "--data", data, "--styles", 1, "--sheet", 0, "--device", "cpu",
                     check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m backend.translate: error: ") and f"{render}: cannot decode" in last, last


@pytest.mark.parametrize("amp, flags, bf16", [("auto", {"avx2"}, False), ("auto", {"amx_bf16"}, True),
                                              ("auto", {"avx512_bf16"}, True), ("bf16", set(), True),
                                              ("none", {"amx_bf16"}, False)])
def test_cpu_translation_uses_bf16_only_where_the_cpu_has_it(amp, flags, bf16):
    info = {"style_dim": 2, "noise_std": 0.1, "multiple": 4}
    t = Translator(_Identity(), _Identity(), info, torch.device("cpu"), styles=1, seed=0, noise=False, amp=amp,
                   cpu_flags=frozenset(flags))
    assert t.amp == bf16 and t.precision_name == ("bf16" if bf16 else "float32")


def test_bad_amp_is_refused_by_name():
    with pytest.raises(TranslateError, match="--amp fp8"):
        Translator(_Identity(), _Identity(), {"style_dim": 2, "noise_std": 0.1, "multiple": 4},
                   torch.device("cpu"), styles=1, seed=0, noise=False, amp="fp8")


def test_precision_is_part_of_the_translation_settings(data, checkpoint, monkeypatch):
    """bf16 and float32 outputs differ: translation.json records which, and a rerun in the other is refused."""
    monkeypatch.setenv("LAPSYNTH_CPU_FLAGS", "fpu avx2 fma")  # a CPU without bf16 instructions: auto = float32
    args = ("--checkpoint", checkpoint, "--data", data, "--styles", 1, "--sheet", 0, "--device", "cpu")
    proc = translate(*args)
    assert "float32 (--amp auto; the CPU has neither amx_bf16 nor avx512_bf16)" in proc.stderr
    assert json.loads((data / "translation.json").read_text())["precision"] == "float32"
    assert translate(*args, "--amp", "none").returncode == 0  # the same precision: resumes, nothing to do
    proc = translate(*args, "--amp", "bf16", check=False)
    assert proc.returncode == 2 and "precision: 'float32'" in proc.stderr and "bf16" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_outside_the_field_of_view_stays_black_as_in_real_frames(data, checkpoint, capsys):
    """A translator fills the black outside a --fov-mask circle render with tissue; the field is content, so
    learned translations keep it black (by the class image), `--outside-fov translated` keeps what the net
    made, and the choice is part of the set's settings (only for data sets that have a field)."""
    from PIL import Image

    from backend.translate import main
    from blender_addon.core.classes import OUTSIDE_FOV

    def translate_here(*args):
        rc = main([str(a) for a in ("--checkpoint", checkpoint, "--data", data, "--styles", 2, "--sheet", 0,
                                    "--device", "cpu", "--workers", 1, *args)])
        return rc, capsys.readouterr().err

    rc, _ = translate_here("--name", "nofield")  # a data set without a field: nothing recorded, nothing masked
    assert rc == 0 and "outside_fov" not in json.loads((data / "nofield.json").read_text())
    manifest = json.loads((data / "dataset.json").read_text())
    manifest["settings"]["fov_mask"] = "circle"
    (data / "dataset.json").write_text(json.dumps(manifest))
    outside = {}
    for e in read_index(data):  # mark the corners outside, as apply_fov does for a circle
        seg = np.array(Image.open(data / e["segmentation"]))
        h, w = seg.shape
        yy, xx = np.mgrid[:h, :w]
        out = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (0.5 * h) ** 2
        seg[out] = OUTSIDE_FOV[0]
        Image.fromarray(seg).save(data / e["segmentation"])
        outside[(e["patient"], int(e["frame"]))] = out
    for name, extra in (("black", ()), ("kept", ("--outside-fov", "translated"))):
        rc, err = translate_here("--name", name, *extra)
        assert rc == 0, err
    assert json.loads((data / "black.json").read_text())["outside_fov"] == "black"
    assert "outside_fov" not in json.loads((data / "kept.json").read_text())
    black, kept = read_translation_index(data, "black"), read_translation_index(data, "kept")
    for k, out in outside.items():
        for pb, pk in zip(black[k]["translations"], kept[k]["translations"]):
            b, t = iio.imread(data / pb), iio.imread(data / pk)
            assert b[out].max() == 0 and t[out].max() > 0  # the net put something there; black removes it
            assert np.array_equal(b[~out], t[~out])  # inside the field: the same translation
    rc, err = translate_here("--name", "kept")  # the default on the set made the other way: refused by name
    assert rc == 2 and "outside_fov" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("keep", ["tools", "tools+gallbladder"])
def test_keep_render_tools_keeps_the_instruments_pixels_for_learned_translators(data, checkpoint, capsys, keep):
    """`--keep-render tools`: every output has the render's own pixels wherever the class image shows a
    tool shaft or tip (and the gallbladder with tools+gallbladder), the translation elsewhere; recorded in
    the set's settings; refused when it differs."""
    from backend.translate import main
    from blender_addon.core.classes import LABEL_IDS

    def translate_here(*args):
        rc = main([str(a) for a in ("--checkpoint", checkpoint, "--data", data, "--styles", 2, "--sheet", 0,
                                    "--device", "cpu", "--workers", 1, *args)])
        return rc, capsys.readouterr().err

    for name, extra in (("plain", ()), ("kept", ("--keep-render", keep))):
        rc, err = translate_here("--name", name, *extra)
        assert rc == 0, err
    assert "keep_render" not in json.loads((data / "plain.json").read_text())  # old sets keep resuming
    assert json.loads((data / "kept.json").read_text())["keep_render"] == keep
    plain, kept = read_translation_index(data, "plain"), read_translation_index(data, "kept")
    classes = ["tool_shaft", "tool_tip"] + (["gallbladder"] if "gallbladder" in keep else [])
    tool_pixels, gallbladder_pixels = 0, 0
    for e in read_index(data):
        k = (e["patient"], int(e["frame"]))
        render = read_render(data / e["image"])
        seg = read_mask(data / e["segmentation"])
        tool = np.isin(seg, [LABEL_IDS[c] for c in classes])
        tool_pixels += np.isin(seg, [LABEL_IDS["tool_shaft"], LABEL_IDS["tool_tip"]]).sum()
        gallbladder_pixels += (seg == LABEL_IDS["gallbladder"]).sum()
        for pp, pk in zip(plain[k]["translations"], kept[k]["translations"]):
            p, t = iio.imread(data / pp), iio.imread(data / pk)
            assert np.array_equal(t[tool], render[tool])
            assert np.array_equal(t[~tool], p[~tool])
            assert not np.array_equal(p[tool], render[tool]) or not tool.any()  # the net did change them
    assert tool_pixels > 0 and gallbladder_pixels > 0  # the tiny set shows both, so the checks are not empty
    rc, err = translate_here("--name", "kept")  # the default on a set made with tools kept: refused by name
    assert rc == 2 and "keep_render" in err and len(err.strip().splitlines()) == 1


def test_styled_kept_pixels_are_refused_for_a_munit_checkpoint(data, checkpoint):
    """munit has no exemplar low band to style kept pixels with: `--keep-render-look styled` would equal
    `render`; refused by name before anything is written."""
    from backend.translator.translation import TranslateOptions, run

    opts = TranslateOptions(checkpoint=checkpoint, data=data, name="styled", device="cpu", keep_render="tools",
                            keep_render_look="styled", style_from=str(shared_data() / "real" / "cholec80_vid03"))
    with pytest.raises(TranslateError) as err:
        run(opts, say=lambda m: None)
    assert "is a munit checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not (data / "styled.json").exists()


def test_batches_and_shards_do_not_depend_on_what_else_the_index_lists():
    """A shard started while renders still come in (or before a data set was extended) must take the same
    frames, in the same batches, as one started on the finished set: no frame translated twice or never."""
    from backend.translator.translation import plan

    full = [{"patient": p, "frame": f} for p in ("patient01", "patient02", "patient07") for f in range(21)]
    early = [e for e in full if e["patient"] != "patient02" and e["frame"] % 5 != 3 and e["frame"] < 17]

    def keyed(groups):
        return [[(e["patient"], e["frame"]) for e in g] for g in groups]

    for parts in (1, 2, 3, 5):
        shards = [keyed(plan(full, 4, (i, parts))) for i in range(parts)]
        frames = [k for s in shards for g in s for k in g]
        assert sorted(frames) == sorted((e["patient"], e["frame"]) for e in full)  # disjoint, complete
        for i in range(parts):
            later = {k: tuple(g) for g in shards[i] for k in g}
            for g in keyed(plan(early, 4, (i, parts))):  # the same shard on the index as it was earlier
                assert all(k in later for k in g), (parts, i, g)  # no frame of another shard's
                assert set(g) <= set(later[g[0]]), (parts, i, g)  # within the batch it has on the full set
    batches = keyed(plan(full, 4, (0, 1)))
    assert all(len({p for p, _ in g}) == 1 and g[0][1] % 4 == 0 and len(g) == (4 if g[0][1] < 20 else 1)
               for g in batches)  # fixed blocks of a patient's frame numbers
    assert max(len(keyed(plan(full, 4, (i, 3)))) for i in range(3)) <= 7  # 18 blocks over 3 shards, balanced


def test_shards_run_with_different_numbers_of_processes_add_up_to_the_whole_set():
    """`--shard k/n` under torchrun with a process count of the scheduler's choosing, another count per
    shard: each block once, and a shard takes the same blocks whatever its count."""
    from backend.translator.translation import plan, process_part

    full = [{"patient": p, "frame": f} for p in ("patient01", "patient02", "patient07") for f in range(40)]

    def frames(shard, world):
        return sorted((e["patient"], e["frame"]) for r in range(world)
                      for g in plan(full, 2, process_part(shard, r, world)) for e in g)

    everything = sorted((e["patient"], e["frame"]) for e in full)
    for n, worlds in ((1, (3,)), (2, (1, 3)), (3, (2, 1, 4)), (4, (4, 1, 2, 3))):
        taken = [f for k, w in enumerate(worlds) for f in frames((k, n), w)]  # shard k on w processes
        assert sorted(taken) == everything, (n, worlds)  # complete, each frame once
        for k in range(n):
            assert all(frames((k, n), w) == frames((k, n), 1) for w in (1, 2, 3, 5)), (n, k)
