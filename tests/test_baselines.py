"""Training-free baselines (FDA, colour transfer): the maths, and their translation sets in a data set."""
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from backend.common.images import read_mask, read_render
from backend.common.labelled import LabelledFrames
from backend.translator.baselines import baseline_outputs
from backend.translator.transfer import colour_transfer, fda, from_lab, to_lab
from blender_addon.core.dataset import read_index, read_translation_index, translation_sets
from blender_addon.core.errors import InputError
from conftest import ROOT, shared_data


def _images(seed=0, h=64, w=96):
    rng = np.random.default_rng(seed)
    render = rng.integers(40, 200, (h, w, 3)).astype(np.uint8)
    real = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return render, real


def test_fda_with_the_narrowest_band_moves_only_the_mean_colour():
    render, real = _images()
    out = fda(render, real, beta=1e-4)  # band half-width 0: only the zero frequency is swapped
    assert out.shape == render.shape and out.dtype == np.uint8
    shift = out.astype(float) - render
    for c in range(3):  # every pixel moved by the same amount: the structure is the render's
        assert np.ptp(shift[..., c]) <= 1.0
        assert out[..., c].mean() == pytest.approx(real[..., c].mean(), abs=1.0)


def test_fda_takes_the_low_frequencies_of_the_real_frame_and_keeps_the_render_phase():
    render, real = _images(1)
    yy, xx = np.mgrid[0:64, 0:96]
    real = np.clip(real * 0.2 + (xx * 2)[..., None], 0, 255).astype(np.uint8)  # a strong horizontal ramp
    out = fda(render, real, beta=0.1)
    low = lambda a: np.abs(np.fft.fftshift(np.fft.fft2(a.astype(float), axes=(0, 1)), axes=(0, 1)))[29:36, 45:52]  # noqa: E731
    assert np.abs(low(out) - low(real)).mean() < np.abs(low(render) - low(real)).mean() / 3
    edges = lambda a: np.diff(a.astype(float).mean(axis=2), axis=1)  # noqa: E731
    assert np.corrcoef(edges(out).ravel(), edges(render).ravel())[0, 1] > 0.8


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.3])
def test_fda_equals_the_full_spectrum_swap(beta):
    """The band is swapped as two small matrix products (narrow bands) or through the full FFT (wide
    ones); both must give what the textbook swap on the full spectrum gives."""
    render, real = _images(3)
    f = lambda a: np.fft.fftshift(np.fft.fft2(a.astype(float), axes=(0, 1)), axes=(0, 1))  # noqa: E731
    f_render, f_real = f(render), f(real)
    amplitude, phase = np.abs(f_render), np.angle(f_render)
    b = int(np.floor(64 * beta))
    band = (slice(32 - b, 32 + b + 1), slice(48 - b, 48 + b + 1))
    amplitude[band] = np.abs(f_real)[band]
    spectrum = np.fft.ifftshift(amplitude * np.exp(1j * phase), axes=(0, 1))
    expected = np.clip(np.rint(np.fft.ifft2(spectrum, axes=(0, 1)).real), 0, 255).astype(np.uint8)
    out = fda(render, real, beta)
    assert np.abs(out.astype(int) - expected).max() <= 1 and (out != expected).mean() < 1e-3


def test_colour_transfer_takes_the_real_statistics_inside_the_field_of_view():
    render, real = _images(2)
    real = np.clip(real.astype(float) * 0.3 + [150, 60, 50], 0, 255).astype(np.uint8)  # reddish, low contrast
    out = colour_transfer(render, real)
    assert out.shape == render.shape and out.dtype == np.uint8
    lab_out, lab_real = to_lab(out), to_lab(real)
    assert np.allclose(lab_out.mean(axis=0), lab_real.mean(axis=0), atol=0.02)
    assert np.allclose(lab_out.std(axis=0), lab_real.std(axis=0), rtol=0.15)
    bordered = np.zeros((96, 140, 3), np.uint8)  # the same frame inside a black border: the same result
    bordered[16:80, 22:118] = real
    assert np.array_equal(colour_transfer(render, bordered), out)


def test_lab_round_trip_is_exact_to_rounding():
    render, _ = _images(3)
    back = from_lab(to_lab(render), render.shape)
    assert np.abs(back.astype(int) - render).max() <= 1


def translate(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "backend.translate", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-2000:])
    return proc


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method", ["fda", "colour"])
def test_baseline_sets_are_written_like_translations_deterministic_and_resumable(tmp_path, tiny_dataset, method):
    real = shared_data() / "real" / "cholec80_vid03"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_dataset, a)
    shutil.copytree(tiny_dataset, b)
    before = _digest(a)
    args = ["--method", method, "--style-from", real, "--styles", 2, "--sheet", 2]
    translate(*args, "--data", a)
    translate(*args, "--data", b, "--workers", 1)
    after = _digest(a)
    assert after == _digest(b)  # the same seed gives the same bytes, whatever the worker count
    assert {k: v for k, v in after.items() if k in before} == before  # renders and labels untouched
    assert translation_sets(a) == [method]
    done = read_translation_index(a, method)
    entries = read_index(a)
    assert set(done) == {(e["patient"], e["frame"]) for e in entries}
    manifest = json.loads((a / f"{method}.json").read_text())
    assert manifest["method"] == method and manifest["styles"] == 2
    e = entries[0]
    record = json.loads((a / done[(e["patient"], e["frame"])]["meta"]).read_text())
    render = read_render(a / e["image"])
    # every output is re-created from its recorded seed and real frame
    outs, recs = baseline_outputs(method, render, [real / p.name for p in sorted(real.iterdir())], 0,
                                  e["patient"], e["frame"], 2, 0.01)
    for out, rec, written in zip(outs, recs, record["outputs"]):
        assert rec["seed"] == written["seed"] and rec["source"] == written["source"]
        assert np.array_equal(read_render(a / written["image"]), out)
        assert out.shape == render.shape
    # a second run finds everything done and writes nothing
    proc = translate(*args, "--data", a)
    assert "0 to translate" in proc.stderr
    assert _digest(a) == after
    # the segmenter's data set reads the set by name
    ds = LabelledFrames(a, use=method)
    assert len(ds) == 2 * len(entries) and ds[0]["source"] == f"{method}:0"
    assert ds[0]["image"].shape[1:] == ds[0]["segmentation"].shape


def test_bad_baseline_requests_fail_in_one_line_and_write_nothing(tmp_path, tiny_dataset):
    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    before = _digest(data)
    real = shared_data() / "real" / "cholec80_vid03"
    for args, message in [
        (["--method", "colour"], "--method colour needs --style-from"),
        (["--method", "fda", "--style-from", real, "--name", "segmentation"], "translation set name 'segmentation'"),
        (["--method", "fda", "--style-from", real, "--beta", "0.7"], "--beta 0.7: must be in (0, 0.5]"),
        (["--method", "munit"], "--method munit needs --checkpoint"),
    ]:
        proc = translate(*args, "--data", data, check=False)
        assert proc.returncode != 0
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert _digest(data) == before
    with pytest.raises(InputError, match="no translation set 'fda' here"):
        LabelledFrames(data, use="fda")


@pytest.mark.parametrize("method", ["fda", "colour"])
def test_keep_render_tools_keeps_instruments_in_baseline_sets(tmp_path, tiny_dataset, method):
    from blender_addon.core.classes import LABEL_IDS

    real = shared_data() / "real" / "cholec80_vid03"
    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    common = ["--method", method, "--style-from", real, "--styles", 2, "--sheet", 0, "--data", data]
    translate(*common, "--name", "whole")
    translate(*common, "--name", "kept", "--keep-render", "tools")
    assert json.loads((data / "kept.json").read_text())["keep_render"] == "tools"
    whole, kept = read_translation_index(data, "whole"), read_translation_index(data, "kept")
    tool_pixels = 0
    for e in read_index(data):
        k = (e["patient"], e["frame"])
        render = read_render(data / e["image"])
        tool = np.isin(read_mask(data / e["segmentation"]), [LABEL_IDS["tool_shaft"], LABEL_IDS["tool_tip"]])
        tool_pixels += tool.sum()
        for pw, pk in zip(whole[k]["translations"], kept[k]["translations"]):
            w, t = read_render(data / pw), read_render(data / pk)
            assert np.array_equal(t[tool], render[tool]) and np.array_equal(t[~tool], w[~tool])
    assert tool_pixels > 0
    proc = translate(*common, "--name", "kept", check=False)  # resumed without the option: refused by name
    assert proc.returncode != 0 and "keep_render" in proc.stderr and "Traceback" not in proc.stderr


def _with_circular_field(data):
    """Turn a rendered set into one with a circular field, as `--fov-mask circle` renders it: outside
    pixels black in the render and class OUTSIDE_FOV in the class image. Returns {frame key: outside}."""
    from PIL import Image

    from blender_addon.core.classes import OUTSIDE_FOV

    manifest = json.loads((data / "dataset.json").read_text())
    manifest["settings"]["fov_mask"] = "circle"
    (data / "dataset.json").write_text(json.dumps(manifest))
    outside = {}
    for e in read_index(data):
        seg = np.array(Image.open(data / e["segmentation"]))
        h, w = seg.shape
        yy, xx = np.mgrid[:h, :w]
        out = (yy + 0.5 - h / 2) ** 2 + (xx + 0.5 - w / 2) ** 2 > (0.55 * h) ** 2
        seg[out] = OUTSIDE_FOV[0]
        Image.fromarray(seg).save(data / e["segmentation"])
        render = np.array(Image.open(data / e["image"]))
        render[out] = 0
        Image.fromarray(render).save(data / e["image"])
        outside[(e["patient"], e["frame"])] = out
    return outside


@pytest.mark.parametrize("method", ["fda", "colour"])
def test_baselines_keep_the_black_outside_the_field_of_view(tmp_path, tiny_dataset, method):
    """Real frames are black outside the laparoscope's circle; FDA's swapped low band and colour transfer's
    shift tint a circular render's black border. By default (`--outside-fov black`) every output keeps it
    black, and colour transfer measures the render inside the field only, as it measures the real frame;
    `translated` keeps the earlier outputs (sets made before), and a resume with the other choice is refused."""
    from backend.translator.transfer import lab_statistics, real_frame

    real = shared_data() / "real" / "cholec80_vid03"
    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    outside = _with_circular_field(data)
    common = ["--method", method, "--style-from", real, "--styles", 2, "--sheet", 0, "--data", data]
    translate(*common, "--name", "black")
    translate(*common, "--name", "tinted", "--outside-fov", "translated")
    assert json.loads((data / "black.json").read_text())["outside_fov"] == "black"
    assert "outside_fov" not in json.loads((data / "tinted.json").read_text())
    black, tinted = read_translation_index(data, "black"), read_translation_index(data, "tinted")
    reals = [real / p.name for p in sorted(real.iterdir())]
    tint = 0
    for e in read_index(data):
        k, out = (e["patient"], e["frame"]), outside[(e["patient"], e["frame"])]
        render = read_render(data / e["image"])
        record = json.loads((data / black[k]["meta"]).read_text())
        again, _ = baseline_outputs(method, render, reals, 0, e["patient"], e["frame"], 2, 0.01, out)
        for pb, pt, written, expected in zip(black[k]["translations"], tinted[k]["translations"],
                                             record["outputs"], again):
            b, t = read_render(data / pb), read_render(data / pt)
            assert b[out].max() == 0 and np.array_equal(b, expected)  # black, and re-created from its record
            tint = max(tint, int(t[out].max()))
            if method == "fda":  # inside the field FDA is the same function either way
                assert np.array_equal(b[~out], t[~out])
            else:  # the field's colours take the real frame's statistics (its own field), border left out
                h, w = render.shape[:2]
                mean, std = lab_statistics(real_frame(type(reals[0])(written["source"]), w, h))
                lab, lab_t = to_lab(b)[~out.ravel()], to_lab(t)[~out.ravel()]
                # (measured on these frames: l-mean off by <= 0.07 here, by about 0.5 with the border counted)
                assert np.allclose(lab.mean(axis=0), mean, atol=0.1), (lab.mean(axis=0), mean)
                assert np.abs(lab.mean(axis=0) - mean).sum() < np.abs(lab_t.mean(axis=0) - mean).sum()
                assert np.abs(lab.std(axis=0) - std).sum() < np.abs(lab_t.std(axis=0) - std).sum()
    assert tint > 0  # without the mask the border is tinted: the option changes something
    proc = translate(*common, "--name", "tinted", check=False)  # the default on a set made the other way
    assert proc.returncode != 0 and "outside_fov" in proc.stderr and "Traceback" not in proc.stderr
