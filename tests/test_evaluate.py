"""Evaluation: Dice with ignore, label presets, the segmentation protocol end to end, translation metrics."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from backend.segmenter.data import Sample, TrainFrames, class_frequencies, median_frequency_weights, synthetic_samples
from backend.segmenter.labels import IGNORE, PRESETS, LabelPreset, SegmentError, load_preset
from backend.segmenter.metrics import dice, frame_dice, per_patient_median
from backend.segmenter.model import TernausNet11, save_model
from backend.translator.quality import fid, kid
from blender_addon.core.progress import parse_progress
from conftest import ROOT, shared_data


def test_dice_respects_ignore():
    target = np.array([[2, 2, 0, 0], [2, 2, 0, IGNORE], [0, 0, 0, IGNORE]])
    pred = np.array([[2, 2, 0, 0], [2, 0, 0, 2], [0, 0, 2, 2]])
    valid = target != IGNORE
    # 3 true positives, 1 false negative, 1 false positive inside the valid area; 2 ignored pixels
    assert dice(pred, target, {2}, valid) == pytest.approx(2 * 3 / (4 + 4))
    assert np.isnan(dice(pred, target, {5}, valid))
    d = frame_dice(pred, target, ["gallbladder", "tool"])
    assert d["gallbladder"] == pytest.approx(0.75) and np.isnan(d["tool"])
    # Tool is shaft (6) or tip (7) in our predictions, one class in real masks.
    t = np.array([[6, 6, 0]])
    p = np.array([[6, 7, 0]])
    assert frame_dice(p, t, ["tool"])["tool"] == pytest.approx(1.0)


def test_presets_map_real_mask_values():
    cholec = np.array([[21, 22, 11, 12], [31, 32, 50, 255]], np.uint8)
    assert PRESETS["cholecseg8k"].to_train_ids(cholec).tolist() == [[1, 2, 3, 4], [6, 6, 0, IGNORE]]
    endo = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [255, 5, 6, 0]], np.uint8)
    assert PRESETS["endoscapes"].to_train_ids(endo).tolist() == [[0, 0, 0, 0], [0, 2, 6, IGNORE], [IGNORE, 2, 6, 0]]
    assert PRESETS["endoscapes"].classes == ["gallbladder", "tool"]
    assert re.search(PRESETS["endoscapes"].pattern, "103_27925.jpg").group("patient") == "103"
    assert re.search(PRESETS["cholecseg8k"].pattern, "video01_000003_frame.png").group("patient") == "video01"


def test_label_mappings_and_patterns_are_checked(tmp_path):
    for name in PRESETS:
        assert load_preset(name).name == PRESETS[name].name
    mapping = tmp_path / "mine.json"
    mapping.write_text(json.dumps({"values": {"3": "liver", "9": "tool"}, "ignore": [0], "pattern": "^(?P<patient>p\\d+)"}))
    mine = load_preset(str(mapping))
    assert mine.values == {3: "liver", 9: "tool"} and mine.ignore == (0,)
    assert mine.to_train_ids(np.array([[3, 9, 0, 5]], np.uint8)).tolist() == [[1, 6, IGNORE, 0]]
    for text, message in [('{"values": [1, 2]}', "not a label mapping"), ("{", "not a label mapping"),
                          ('{"values": {"x": "liver"}}', "not a label mapping"),
                          ('{"values": {"1": "spleen"}}', "unknown classes ['spleen']"),
                          ('{"values": {"-1": "tool"}}', "mask values [-1] out of range"),  # it matched 255
                          ('{"values": {"5": "tool"}, "ignore": [70000]}', "mask values [70000] out of range"),
                          ('{"values": {"5": "tool"}, "pattern": 5}', '"pattern" must be a regular expression')]:
        mapping.write_text(text)
        with pytest.raises(SegmentError, match=re.escape(message)):
            load_preset(str(mapping))
    from backend.segmenter.statistics import frame_shares

    assert frame_shares(np.zeros((2, 2), np.uint8), {300: "tool"}) == {"tool": 0.0}  # 16-bit value, 8-bit mask
    with pytest.raises(SegmentError, match="not a regular expression"):
        load_preset("endoscapes", "(")
    with pytest.raises(SegmentError, match="needs a group named 'patient'"):
        load_preset("endoscapes", "^([^_]+)_")


def test_median_frequency_weights_favour_rare_classes(tmp_path):
    # Two real masks: values outside the preset are background, ignore values are left out of the counts.
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    masks = [np.array([[0, 0, 0, 0], [0, 5, 5, 255]], np.uint8), np.array([[1, 1, 6, 7], [0, 0, 0, 5]], np.uint8)]
    samples = []
    for i, m in enumerate(masks):
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "img" / f"v{i}_1.png")
        Image.fromarray(m).save(tmp_path / "mask" / f"v{i}_1.png")
        samples.append(Sample(tmp_path / "img" / f"v{i}_1.png", tmp_path / "mask" / f"v{i}_1.png", f"v{i}"))
    freq = class_frequencies(samples, PRESETS["endoscapes"])
    # 14 valid pixels: 10 background (0, 1 and 2 map to it), 3 gallbladder (5), 1 tool (6); 7 and 255 ignored
    assert freq.tolist() == pytest.approx([10 / 14, 0, 3 / 14, 0, 0, 0, 1 / 14, 0])
    w = median_frequency_weights(freq)
    # median share 3/14: background 0.3, gallbladder 1, tool 3; classes that never occur weigh nothing
    assert w == pytest.approx((0.3, 0, 1.0, 0, 0, 0, 3.0, 0))
    assert median_frequency_weights(np.array([0.98, 0.0199, 0.0001]), cap=10)[2] == 10  # capped
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_frequencies(samples[:1], LabelPreset("all ignored", {}, (0, 5, 255), r"(?P<patient>v\d)"))


def test_ternausnet_shapes():
    import torch

    net = TernausNet11(num_classes=8)
    assert net(torch.zeros(1, 3, 64, 96)).shape == (1, 8, 64, 96)
    assert net.imagenet is None


def test_per_patient_median():
    rows = [{"patient": "a", "liver": 0.2}, {"patient": "a", "liver": 0.6}, {"patient": "a", "liver": 0.9},
            {"patient": "b", "liver": float("nan")}]
    assert per_patient_median(rows, ["liver"]) == {"a": {"liver": 0.6}, "b": {"liver": pytest.approx(float("nan"), nan_ok=True)}}


def test_fid_and_kid_on_known_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (400, 16)), rng.normal(0, 1, (400, 16))
    c = rng.normal(1.0, 1, (400, 16))
    assert fid(a, b) < 0.5 < 10 < fid(a, c) + 10
    assert abs(kid(a, b)) < 0.01 < kid(a, c)


def test_protocol_end_to_end_writes_the_report(tmp_path, tiny_dataset, endoscapes_subset):
    images, masks, chosen = endoscapes_subset
    out = tmp_path / "report"
    args = [sys.executable, "-m", "backend.segment", "protocol", "--synthetic", str(tiny_dataset), "--use", "render",
            "--real-images", str(images), "--real-masks", str(masks), "--preset", "endoscapes", "--resolution",
            "96x64", "--iterations", "2", "--finetune-iterations", "2", "--batch", "1", "--workers", "0", "--device",
            "cpu", "--class-balance", "median", "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # weights from each model's own training frames: rendered ones (with the liver), real ones (liver unlabelled)
    weights = [line for line in proc.stderr.splitlines() if "class weights (median frequency)" in line]
    assert len(weights) == 1 + 2 * len(chosen) and "liver" in weights[0]
    assert "liver" not in weights[-1] and "background" in weights[-1]
    table = json.loads((out / "table.json").read_text())
    assert set(table["median_dice"]) == {"synthetic", "real", "synthetic+real"}
    assert table["patients"] == sorted(chosen) and table["classes"] == ["gallbladder", "tool"]
    for per in table["median_dice"].values():
        for p in chosen:
            for v in per[p].values():
                assert np.isnan(v) or 0 <= v <= 1
    md = (out / "table.md").read_text()
    assert "| synthetic+real |" in md and "ImageNet" in md  # the note that no local weights were found
    assert "median frequency balancing" in md
    for name in ("dice_gallbladder.png", "dice_tool.png", "predictions.png"):
        Image.open(out / name).verify()
    # Interrupted protocols resume per fold: a lost fold is redone identically, the others are reused.
    folds = sorted((out / "folds").glob("*.json"))
    assert len(folds) == 1 + 2 * len(chosen)  # synthetic, then one per held-out patient and real regime
    lost = out / "folds" / f"real__{sorted(chosen)[1]}.json"
    lost.unlink()
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done earlier") == len(folds) - 1 and lost.is_file()
    assert json.loads((out / "table.json").read_text())["frames"] == table["frames"]
    other = subprocess.run(args[:-2] + ["--lr", "0.01", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode == 2 and "other settings" in other.stderr and "lr: " in other.stderr, other.stderr
    # fewer regimes on the same folder continue (the record holds the real frames' bytes, read by every regime);
    # a killed write's temporary, an hour old, is removed
    import os
    import time

    stale = out / "models" / ".tmp-killed.pt"
    stale.write_bytes(b"half a model")
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    fewer = subprocess.run(args[:-2] + ["--regimes", "real", "--out", str(out)], capture_output=True, text=True,
                           cwd=ROOT, timeout=900)
    assert fewer.returncode == 0 and "done earlier" in fewer.stderr, fewer.stderr[-2000:]
    assert not stale.exists() and "removed 1 temporaries of interrupted writes" in fewer.stderr
    # refused in one line, nothing written: no regime, a folder that is not a protocol's, an unreadable record
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "table.md").write_text("my notes")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "protocol.json").write_text("{not json")
    for extra, needle, folder in [(["--regimes", ","], "--regimes ',': name at least one", tmp_path / "r0"),
                                  ([], "holds no protocol.json", foreign),
                                  ([], "not a protocol settings file", tmp_path / "bad")]:
        before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
        proc = subprocess.run(args[:-2] + [*extra, "--out", str(folder)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == before
    assert (foreign / "table.md").read_text() == "my notes"


def test_translation_quality_report(tmp_path, tiny_dataset, capsys):
    from backend.evaluate import main as evaluate_main

    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    run = tmp_path / "run"
    real = shared_data() / "real" / "cholec80_vid03"
    subprocess.run([sys.executable, "-m", "backend.train", "--config", str(ROOT / "tests" / "tiny.yaml"), "--renders",
                    str(data), "--real", str(real), "--out", str(run), "--iterations", "2"], check=True, cwd=ROOT,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "backend.translate", "--checkpoint", str(run / "checkpoints" /
                    "ckpt_00000002.pt"), "--data", str(data), "--styles", "3", "--sheet", "0"], check=True, cwd=ROOT,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "backend.evaluate", "--data", str(data), "--out", str(tmp_path / "q")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    q = json.loads((tmp_path / "q" / "translation_quality.json").read_text())
    assert q["frames"] == 8 and set(q["structure_ms_ssim"]["per_style"]) == {"0", "1", "2"}
    assert 0 <= q["structure_ms_ssim"]["worst"] <= q["structure_ms_ssim"]["mean"] <= 1
    assert 0 <= q["diversity"] <= 1 and "skipped" in q["realism"] and q["set"] == "translation"
    # another set of the same data set (here a second translator's, written with --name) by --set
    subprocess.run([sys.executable, "-m", "backend.translate", "--checkpoint", str(run / "checkpoints" /
                    "ckpt_00000002.pt"), "--data", str(data), "--styles", "2", "--sheet", "0", "--name", "other",
                    "--seed", "5"], check=True, cwd=ROOT, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "backend.evaluate", "--data", str(data), "--set", "other", "--out",
                           str(tmp_path / "q_other")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    other = json.loads((tmp_path / "q_other" / "translation_quality.json").read_text())
    assert other["set"] == "other" and set(other["structure_ms_ssim"]["per_style"]) == {"0", "1"}
    assert other["structure_ms_ssim"] != q["structure_ms_ssim"]
    # A set of one style: no diversity to measure, written as JSON's null (NaN is not JSON)
    subprocess.run([sys.executable, "-m", "backend.translate", "--checkpoint", str(run / "checkpoints" /
                    "ckpt_00000002.pt"), "--data", str(data), "--styles", "1", "--sheet", "0", "--name", "one"],
                   check=True, cwd=ROOT, capture_output=True)
    assert evaluate_main(["--data", str(data), "--set", "one", "--out", str(tmp_path / "q_one")]) == 0
    text = (tmp_path / "q_one" / "translation_quality.json").read_text()
    assert "NaN" not in text and json.loads(text)["diversity"] is None
    assert "none to measure" in (tmp_path / "q_one" / "translation_quality.md").read_text()
    # The FID/KID path with Inception-v3 weights given as a local file (random weights here:
    # the plumbing is checked, not the numbers).
    import torch
    from torchvision.models import inception_v3

    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), weights)
    proc = subprocess.run([sys.executable, "-m", "backend.evaluate", "--data", str(data), "--real", str(real),
                           "--inception", str(weights), "--out", str(tmp_path / "q2")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q2 = json.loads((tmp_path / "q2" / "translation_quality.json").read_text())
    assert np.isfinite(q2["fid"]) and q2["fid"] >= 0 and np.isfinite(q2["kid"]) and "realism" not in q2
    junk = tmp_path / "junk.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, junk)
    one = tmp_path / "one_real"
    one.mkdir()
    shutil.copy(next(p for p in sorted(real.rglob("*")) if p.suffix in (".png", ".jpg")), one)
    for bad, message in [(["--inception", str(tmp_path / "none.pth")], "none.pth: file not found"),
                         (["--inception", str(weights), "--real", str(one)],  # was a matmul traceback, after the work
                          f"--real {one}: 1 image(s); FID and KID need at least 2 on each side"),
                         (["--inception", str(junk)], "junk.pth: not a torchvision inception_v3 state dict"),
                         (["--device", "gpu"], "--device gpu: not a device"),
                         (["--set", "nosuch"], "nosuch"),
                         (["--data", str(tmp_path)], "not a data set (no dataset.json)")]:
        # in this process: the same one-line exit as the CLI's, without a torch import per case
        rc = evaluate_main(["--data", str(data), "--real", str(real), "--out", str(tmp_path / "q3"), *bad])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "q3").exists()


def test_train_then_eval_commands(tmp_path, tiny_dataset, endoscapes_subset):
    images, masks, chosen = endoscapes_subset
    model = tmp_path / "seg.pt"
    base = [sys.executable, "-m", "backend.segment"]
    proc = subprocess.run(base + ["train", "--regime", "synthetic", "--synthetic", str(tiny_dataset), "--use",
                                  "render", "--resolution", "96x64", "--iterations", "2", "--batch", "1", "--device",
                                  "cpu", "--out", str(model)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training from scratch" in proc.stderr and model.is_file()
    # Progress lines in the one format the Blender panel parses (stderr is not a terminal here).
    progress = [parse_progress(line) for line in proc.stderr.splitlines()]
    assert any(p is not None and p.what == "segment" for p in progress), proc.stderr[-2000:]
    out = tmp_path / "eval"
    proc = subprocess.run(base + ["eval", "--checkpoint", str(model), "--real-images", str(images), "--real-masks",
                                  str(masks), "--preset", "endoscapes", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads((out / "table.json").read_text())
    assert list(table["median_dice"]) == ["synthetic"] and table["patients"] == sorted(chosen)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    proc = subprocess.run(base + ["eval", "--checkpoint", str(junk), "--real-images", str(images), "--real-masks",
                                  str(masks), "--out", str(tmp_path / "e2")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "not a model written by `backend.segment train` (not a PyTorch file)" in proc.stderr
    assert not (tmp_path / "e2").exists()
    fold = tmp_path / "fold.pt"  # a protocol fold's model records no training size: asks for one
    save_model(fold, TernausNet11(), regime="synthetic", fold="p1")
    proc = subprocess.run(base + ["eval", "--checkpoint", str(fold), "--real-images", str(images), "--real-masks",
                                  str(masks), "--out", str(tmp_path / "e3")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "records no training size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "e3").exists()


def test_segment_eval_refuses_a_mask_of_another_size_naming_both_files(tmp_path, endoscapes_subset):
    images, masks, _ = endoscapes_subset
    model = tmp_path / "seg.pt"
    save_model(model, TernausNet11(), size=[64, 96], regime="synthetic", imagenet=None)  # untrained is enough
    mask = sorted(masks.iterdir())[1]
    Image.open(mask).resize((427, 240), Image.NEAREST).save(mask)
    image = images / (mask.stem + ".jpg")
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "backend.segment", "eval", "--checkpoint", str(model),
                           "--real-images", str(images), "--real-masks", str(masks), "--preset", "endoscapes",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and str(mask) in line and str(image) in line, line
    assert "427x240" in line and "854x480" in line
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("bad, message", [
    (["--synthetic", "{tmp}/none"], "error: --synthetic: {tmp}/none: no such folder"),
    (["--use", "translation"], "error: --synthetic: {data}: no frames for use='translation'"),
    (["--use", "both"], "error: --synthetic: {data}: use='both' is the renders and their 'translation' set"),
    (["--iterations", "0"], "argument --iterations: 0: must be >= 1"),
    (["--batch", "-2"], "argument --batch: -2: must be >= 1"),
    (["--lr", "0"], "argument --lr: 0: must be > 0"),
    (["--lr", "inf"], "argument --lr: inf: must be > 0"),
    (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["--workers", "-1"], "argument --workers: -1: must be >= 0"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: 0: must be >= 1"),
    (["--resolution", "96x60"], "error: --resolution '96x60': width and height must be multiples of 32"),
    (["--resolution", "64-96"], "error: --resolution '64-96': expected WxH"),
    (["--seed", "99999999999999999999"], "error: --seed 99999999999999999999: must be between 0 and 2**32 - 1"),
])
def test_segment_train_refuses_bad_input_and_writes_nothing(tmp_path, tiny_dataset, bad, message, capsys):
    from backend.segment import main
    model = tmp_path / "seg.pt"
    args = ["--regime", "synthetic", "--synthetic", str(tiny_dataset), "--use", "render", "--resolution", "96x64",
            "--iterations", "2", "--device", "cpu", "--out", str(model)]
    bad = [b.format(tmp=tmp_path) for b in bad]
    for i in range(0, len(bad), 2):  # the bad value replaces the good one
        j = args.index(bad[i]) if bad[i] in args else len(args)
        args[j:j + 2] = bad[i:i + 2]
    try:  # in this process (one torch import for all cases); argparse's refusals exit with status 2
        rc = main(["train", *args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert message.format(tmp=tmp_path, data=tiny_dataset) in err
    assert "Traceback" not in err
    if "argument " in message:  # argparse's refusals too: one line, no usage block
        assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_training_frames_are_drawn_and_augmented_from_the_seed_and_sample_number(tiny_dataset):
    samples = synthetic_samples(tiny_dataset, "render")
    frames = TrainFrames(samples, PRESETS["lapsynth"], (64, 96), seed=3)
    x0, t0 = frames[5]
    x1, t1 = frames[5]
    assert torch.equal(x0, x1) and torch.equal(t0, t1) and x0.shape == (3, 64, 96) and t0.shape == (64, 96)
    assert not torch.equal(frames[6][0], x0)
    assert set(np.unique(t0.numpy())) <= set(range(8))  # crops and flips never blend label ids


def _segment_train(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "backend.segment", "train", "--regime", "synthetic", "--use", "render",
           "--resolution", "96x64", "--iterations", "12", "--batch", "2", "--checkpoint-every", "3", "--device", "cpu",
           "--out", str(out), *map(str, extra)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_segment_train_survives_kill_and_resumes_exactly(tmp_path, tiny_dataset):
    import signal
    import time

    full = _segment_train(tmp_path / "full.pt", "--synthetic", tiny_dataset, "--workers", "0")
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "cut.pt"
    partial = tmp_path / "cut.pt.partial"
    proc = _segment_train(out, "--synthetic", tiny_dataset, "--workers", "2", wait=False)
    deadline = time.time() + 300
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_file() and not out.exists(), "the run finished before it could be killed"
    resumed = _segment_train(out, "--synthetic", tiny_dataset, "--workers", "2")
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]
    assert not partial.exists()
    a = torch.load(tmp_path / "full.pt", weights_only=True)["model"]
    b = torch.load(out, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same batches with 0 or 2 workers, exact resume
    again = _segment_train(out, "--synthetic", tiny_dataset, "--workers", "2")
    assert again.returncode == 0 and "already trained" in again.stderr
    other = _segment_train(out, "--synthetic", tiny_dataset, "--lr", "0.01")
    assert other.returncode == 2 and "not trained with these settings" in other.stderr


def test_segment_train_refuses_frames_replaced_under_the_same_names(tmp_path, tiny_dataset):
    """A finished model or an unfinished run is not continued on renders made again under the same names; files
    recorded before the content key are compared as they were; a damaged OUT.partial is one line."""
    import os
    import time

    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    out = tmp_path / "m.pt"
    stale, young, other = tmp_path / ".tmp-killed.partial", tmp_path / ".tmp-live.pt", tmp_path / ".tmp-theirs.csv"
    for t in (stale, young, other):  # a kill -9's leftover (an hour old), one being written now, not ours
        t.write_bytes(b"x")
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    os.utime(other, (time.time() - 3700, time.time() - 3700))
    proc = _segment_train(out, "--synthetic", data, "--workers", "0")
    assert proc.returncode == 0 and "removed 1 temporaries of interrupted writes" in proc.stderr
    assert not stale.exists() and young.exists() and other.exists()
    for t in (young, other):
        t.unlink()
    images = sorted(data.glob("patient01/image/*.png"))
    images[0].write_bytes(images[1].read_bytes())  # rendered again: same name, other pixels
    proc = _segment_train(out, "--synthetic", data, "--workers", "0")
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 2 and len(errors) == 1 and "data_sha256_16" in errors[0] and "Traceback" not in proc.stderr
    state = torch.load(out, weights_only=True)
    del state["settings"]["data_sha256_16"]  # a model saved before the key
    torch.save(state, out)
    assert "already trained" in _segment_train(out, "--synthetic", data, "--workers", "0").stderr
    partial = tmp_path / "p.pt.partial"
    partial.write_bytes(b"garbage")  # a file that is not ours where the unfinished run would be
    proc = _segment_train(tmp_path / "p.pt", "--synthetic", data, "--workers", "0")
    assert proc.returncode == 2 and f"{partial}: not a readable model file" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    partial.unlink()
    partial.mkdir()  # a folder where the unfinished run's file goes: refused before training, not after
    proc = _segment_train(tmp_path / "p.pt", "--synthetic", data, "--workers", "0")
    assert proc.returncode == 2 and "OUT.partial" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.pt").exists()


def test_segment_size_option_is_a_deprecated_alias_of_resolution(tmp_path, endoscapes_subset):
    """--size HxW still works and warns; --resolution WxH of the same size trains the same model."""
    images, masks, _ = endoscapes_subset

    def train(out, *size):
        return subprocess.run([sys.executable, "-m", "backend.segment", "train", "--regime", "real", "--real-images",
                               str(images), "--real-masks", str(masks), *size, "--finetune-iterations", "1", "--batch",
                               "1", "--workers", "0", "--device", "cpu", "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)

    old = train(tmp_path / "old.pt", "--size", "64x96")
    assert old.returncode == 0, old.stderr[-2000:]
    assert [line for line in old.stderr.splitlines() if "deprecated" in line] == [
        "python -m backend.segment: warning: --size HxW is deprecated; use --resolution WxH (here --resolution 96x64)"]
    progress = [parse_progress(line) for line in old.stderr.splitlines()]
    assert any(p is not None and p.what == "segment" for p in progress), old.stderr[-2000:]
    new = train(tmp_path / "new.pt", "--resolution", "96x64")
    assert new.returncode == 0 and "deprecated" not in new.stderr, new.stderr[-2000:]
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("old.pt", "new.pt"))
    assert a["size"] == b["size"] == [64, 96] and a["settings"] == b["settings"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    both = train(tmp_path / "both.pt", "--size", "64x96", "--resolution", "96x64")
    assert both.returncode == 2 and "--resolution and --size: give one" in both.stderr, both.stderr[-2000:]
    assert "Traceback" not in both.stderr and not (tmp_path / "both.pt").exists()
