"""The one-sided contrastive translator (model: cut): loss, training, exact resume, DDP, translation, bad input."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.translator import checkpoint as ckpt
from backend.translator.config import ConfigError, load_config
from backend.translator.losses import patch_nce
from backend.translator.models import TRAINERS, make_trainer
from backend.translator.training import resume_state
from blender_addon.core.dataset import read_index, read_translation_index
from conftest import ROOT, shared_data

TINY = ROOT / "tests" / "tiny.yaml"
# --device cpu: the resume test compares weights bit for bit, which on CUDA cuDNN does not give between two
# processes (algorithms chosen by timing, atomic adds); the GPU machine would pick cuda with auto
CUT = ["--set", "model=cut", "--device", "cpu"]


def cut_cfg(*overrides):
    return load_config(TINY, ["model=cut", *overrides])


def run(module, *args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def real_dir():
    return shared_data() / "real" / "cholec80_vid03"


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory, tiny_dataset, real_dir):
    """An uninterrupted 6-iteration cut run with checkpoints at 3 and 6 (shared by the resume and translate tests)."""
    out = tmp_path_factory.mktemp("cut") / "full"
    run("backend.train", "--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--out", out,
        "--iterations", 6, "--set", "snapshot_save_iter=3", "--set", "keep_last=5", *CUT)
    return out


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def test_patch_nce_prefers_matching_places_and_has_a_gradient():
    g = torch.Generator().manual_seed(0)
    keys = _unit(torch.randn(2, 64, 16, generator=g))
    queries = _unit(keys + 0.3 * torch.randn(2, 64, 16, generator=g)).requires_grad_(True)
    matched = patch_nce(queries, keys, 0.07)
    shuffled = patch_nce(queries, keys[:, torch.randperm(64, generator=g)], 0.07)
    assert matched.shape == (2,) and (matched < shuffled).all() and (matched < 0.5 * np.log(64)).all()
    (grad,) = torch.autograd.grad(shuffled.mean(), queries)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # identical unit features: the positive wins by (1 - cos) / t over every negative
    assert patch_nce(keys, keys, 0.07).max() < patch_nce(keys, keys, 1.0).min()


def test_cut_trains_one_generator_and_its_losses_fall():
    from backend.translator.config import MODELS

    assert tuple(TRAINERS) == MODELS
    torch.manual_seed(0)
    trainer = make_trainer(cut_cfg(), torch.device("cpu"))
    assert set(trainer.nets) == {"gen", "heads", "dis"}
    assert len(trainer.heads.heads) == 5  # default taps 0,1,2,3,4
    g = torch.Generator().manual_seed(1)
    x_a = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, 5, 1, 2)
    x_b = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    logs = [trainer.step(x_a, x_b) for _ in range(8)]
    for log in logs:
        assert log["gen/ok"] and log["dis/ok"]
        assert all(np.isfinite(v) for v in log.values() if isinstance(v, float)), log
    assert {"gen/adv", "gen/nce", "gen/nce_idt", "gen/ms_ssim", "gen/total", "dis/total"} <= logs[0].keys()
    assert logs[-1]["gen/nce"] < logs[0]["gen/nce"] and logs[-1]["gen/ms_ssim"] < logs[0]["gen/ms_ssim"]
    assert logs[-1]["gen/total"] < logs[0]["gen/total"]
    # identity NCE off: no term, and nothing else changes shape
    quiet = make_trainer(cut_cfg("cut.nce_idt_w=0", "cut.nce_layers=0,2,5"), torch.device("cpu"))
    log = quiet.step(x_a, x_b)
    assert "gen/nce_idt" not in log and log["gen/ok"] and len(quiet.heads.heads) == 3


def test_cut_checkpoint_then_resume_continues_exactly(cut_run, tiny_dataset, real_dir, tmp_path):
    """Interrupted at 3 (as if killed after that checkpoint) and resumed to 6: the weights of the
    uninterrupted run, exactly."""
    part = tmp_path / "part"
    common = ["--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--out", part,
              "--set", "snapshot_save_iter=3", *CUT]
    run("backend.train", *common, "--iterations", 3)
    proc = run("backend.train", *common, "--iterations", 6)
    assert "resuming" in proc.stderr
    a = ckpt.load(cut_run / "checkpoints" / "ckpt_00000006.pt")
    b = ckpt.load(part / "checkpoints" / "ckpt_00000006.pt")
    assert a["config"]["model"] == "cut" and {"gen", "heads", "dis", "gen_opt", "dis_opt", "gen_scaler",
                                               "bad_steps", "rng"} <= a.keys()
    for net in ("gen", "heads", "dis"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    log = [json.loads(ln) for ln in (cut_run / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log] == list(range(1, 7)) and "gen/nce" in log[0]
    assert list((cut_run / "images").glob("*.png"))
    # a cut run does not resume as munit (nor the other way round): the model is named, in one line
    with pytest.raises(ConfigError) as err:
        resume_state(part / "checkpoints", load_config(TINY), "cpu", True, lambda m: None)
    assert "model: 'cut' in the checkpoint, 'munit' now" in str(err.value) and "\n" not in str(err.value)


def test_cut_ddp_keeps_replicas_identical(tmp_path, tiny_dataset, real_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29519",
                           "-m", "backend.train", "--config", str(TINY), "--renders", str(tiny_dataset), "--real",
                           str(real_dir), "--out", str(tmp_path / "ddp"), "--iterations", "2", "--device", "cpu",
                           "--check-replicas", *CUT], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replicas identical across 2 processes" in proc.stderr


def test_translate_detects_a_cut_checkpoint_and_writes_a_named_set(cut_run, tiny_dataset, tmp_path):
    import shutil

    import imageio.v3 as iio

    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    checkpoint = cut_run / "checkpoints" / "ckpt_00000006.pt"
    run("backend.translate", "--checkpoint", checkpoint, "--data", data, "--styles", 2, "--name", "cut",
        "--sheet", 2, "--device", "cpu")
    assert all(p.read_bytes() == b for p, b in before.items())  # renders, labels, index untouched
    assert json.loads((data / "cut.json").read_text())["model"] == "cut"
    assert not (data / "translation").exists() and (data / "cut_sheet.png").is_file()
    entries = read_index(data)
    index = read_translation_index(data, "cut")
    assert set(index) == {(e["patient"], e["frame"]) for e in entries}
    for e in entries:
        render = iio.imread(data / e["image"])
        record = json.loads((data / index[(e["patient"], e["frame"])]["meta"]).read_text())
        outs = [iio.imread(data / o["image"]) for o in record["outputs"]]
        assert [o["k"] for o in record["outputs"]] == [0, 1] and all(o.shape == render.shape for o in outs)
        assert record["outputs"][0]["seed"] != record["outputs"][1]["seed"]
        assert not np.array_equal(outs[0], outs[1])  # two noise seeds, two outputs
    # real exemplars (--style-from): output k is the plain output k with the low band of the real frame its
    # seed draws (FDA), re-created here from the record
    from backend.translator.transfer import fda, real_frame

    real = shared_data() / "real" / "cholec80_vid03"
    run("backend.translate", "--checkpoint", checkpoint, "--data", data, "--styles", 2, "--name", "cutx",
        "--style-from", real, "--sheet", 0, "--device", "cpu")
    manifest = json.loads((data / "cutx.json").read_text())
    assert manifest["model"] == "cut" and manifest["beta"] == 0.01 and manifest["style_from"] == str(real.resolve())
    exemplars = read_translation_index(data, "cutx")
    sources = set()
    for e in entries:
        k = (e["patient"], e["frame"])
        plain = json.loads((data / index[k]["meta"]).read_text())["outputs"]
        record = json.loads((data / exemplars[k]["meta"]).read_text())["outputs"]
        for p, x in zip(plain, record):
            assert x["seed"] == p["seed"] and x["source"].startswith(str(real))
            sources.add(x["source"])
            out, base = iio.imread(data / x["image"]), iio.imread(data / p["image"])
            h, w = base.shape[:2]
            assert np.array_equal(out, fda(base, real_frame(type(real)(x["source"]), w, h), 0.01))
            assert not np.array_equal(out, base)
    assert len(sources) > 1  # the outputs draw different real frames
    # one model's checkpoint asked for as the other's, and cut's impossible options: one line each, nothing written
    # (in this process: the CLI prints TranslateError's one line, as tests/test_translate.py checks)
    from backend.translator.translation import TranslateError, TranslateOptions
    from backend.translator.translation import run as translate_run

    for over, needle in [({"method": "munit"}, "is a cut checkpoint (model: cut in its config)"),
                         ({"noise": False}, "--noise off with a cut checkpoint")]:
        opts = TranslateOptions(checkpoint=checkpoint, data=data, name="other", device="cpu", **over)
        with pytest.raises(TranslateError) as err:
            translate_run(opts, say=lambda m: None)
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (data / "other.json").exists()


def test_the_style_frames_are_pinned_so_a_folder_that_gained_frames_is_refused(cut_run, tiny_dataset, tmp_path,
                                                                               real_dir):
    """Resumed frames must draw exemplars from the same real frames as the rest of the set: a --style-from folder
    that gained a frame is refused by name; hidden files (a writer's .tmp-*) are not frames; a set made
    before the list was recorded keeps resuming."""
    import shutil

    from backend.translator.translation import TranslateOptions
    from backend.translator.translation import run as translate_run
    from blender_addon.core.errors import InputError

    data, real = tmp_path / "A", tmp_path / "real"
    shutil.copytree(tiny_dataset, data)
    real.mkdir()
    frames = sorted(real_dir.glob("*.png"))[:4]
    for f in frames[:3]:
        shutil.copy(f, real / f.name)
    opts = TranslateOptions(checkpoint=cut_run / "checkpoints" / "ckpt_00000006.pt", data=data, name="cutp",
                            styles=1, style_from=str(real), sheet=0, device="cpu")
    assert translate_run(opts, say=lambda m: None)["images"] == len(read_index(data))
    pinned = json.loads((data / "cutp.json").read_text())["style_frames"]
    assert pinned["count"] == 3 and len(pinned["sha256_16"]) == len(pinned["content_sha256_16"]) == 16
    shutil.copy(frames[3], real / ".tmp-unfinished.png")  # hidden: not a frame, the set resumes
    assert translate_run(opts, say=lambda m: None)["images"] == 0
    saved = (real / frames[0].name).read_bytes()
    shutil.copy(frames[3], real / frames[0].name)  # another frame under the same name: same paths, other bytes
    with pytest.raises(InputError, match="style_frames.content_sha256_16") as err:
        translate_run(opts, say=lambda m: None)
    assert "\n" not in str(err.value) and "sha256_16: " not in str(err.value).replace("content_sha256_16", "")
    manifest = json.loads((data / "cutp.json").read_text())
    del manifest["style_frames"]["content_sha256_16"]  # as a set pinned before contents were
    (data / "cutp.json").write_text(json.dumps(manifest))
    assert translate_run(opts, say=lambda m: None)["images"] == 0  # compared as recorded: names and count
    assert "content_sha256_16" not in json.loads((data / "cutp.json").read_text())["style_frames"]
    manifest["style_frames"] = pinned
    (data / "cutp.json").write_text(json.dumps(manifest))
    (real / frames[0].name).write_bytes(saved)
    shutil.move(real / ".tmp-unfinished.png", real / frames[3].name)
    with pytest.raises(InputError, match="style_frames") as err:  # the CLI prints it as one line
        translate_run(opts, say=lambda m: None)
    assert "\n" not in str(err.value)
    manifest = json.loads((data / "cutp.json").read_text())
    assert manifest["style_frames"] == pinned  # refused: nothing rewritten
    del manifest["style_frames"]  # as a set made before the list was recorded
    (data / "cutp.json").write_text(json.dumps(manifest))
    assert translate_run(opts, say=lambda m: None)["images"] == 0
    assert "style_frames" not in json.loads((data / "cutp.json").read_text())


def test_a_set_is_finished_on_the_device_kind_it_was_started_on(cut_run, tiny_dataset, tmp_path):
    """The same precision computes other bits on a GPU than on the CPU: the set's manifest records the device
    kind and a resume on another kind is refused by name, nothing rewritten; a set made before the kind was
    recorded keeps resuming."""
    import shutil

    from backend.translator.translation import TranslateOptions
    from backend.translator.translation import run as translate_run
    from blender_addon.core.errors import InputError

    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    opts = TranslateOptions(checkpoint=cut_run / "checkpoints" / "ckpt_00000006.pt", data=data, name="dev",
                            styles=1, sheet=0, device="cpu")
    assert translate_run(opts, say=lambda m: None)["images"] == len(read_index(data))
    manifest = json.loads((data / "dev.json").read_text())
    assert manifest["device"] == "cpu"
    manifest["device"] = "cuda"  # as a set started on a GPU
    (data / "dev.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="device: 'cuda' on disk, 'cpu' asked") as err:
        translate_run(opts, say=lambda m: None)
    assert "\n" not in str(err.value)
    assert json.loads((data / "dev.json").read_text()) == manifest  # refused: nothing rewritten
    del manifest["device"]  # as a set made before the kind was recorded
    (data / "dev.json").write_text(json.dumps(manifest))
    assert translate_run(opts, say=lambda m: None)["images"] == 0
    assert "device" not in json.loads((data / "dev.json").read_text())


def test_styled_kept_pixels_take_the_exemplar_low_band_like_the_rest(cut_run, tiny_dataset, tmp_path, real_dir):
    """`--keep-render tools --keep-render-look styled`: output k is the plain network output k with the render's
    tool pixels put in, then the low band of output k's real exemplar (FDA) over the whole frame, so the kept
    instruments share its colour cast; as rendered (`render`), they keep the render's exact pixels."""
    import shutil

    import imageio.v3 as iio

    from backend.common.images import read_mask
    from backend.translator.transfer import fda, real_frame
    from backend.translator.translation import TranslateError, TranslateOptions
    from backend.translator.translation import run as translate_run
    from blender_addon.core.classes import LABEL_IDS

    data = tmp_path / "A"
    shutil.copytree(tiny_dataset, data)
    checkpoint = cut_run / "checkpoints" / "ckpt_00000006.pt"
    common = ("--checkpoint", checkpoint, "--data", data, "--styles", 2, "--sheet", 0, "--device", "cpu")
    run("backend.translate", *common, "--name", "plain")
    for name, look in (("raw", "render"), ("styled", "styled")):
        run("backend.translate", *common, "--name", name, "--style-from", real_dir, "--keep-render", "tools",
            "--keep-render-look", look)
    assert "keep_render_look" not in json.loads((data / "raw.json").read_text())  # sets made before keep resuming
    assert json.loads((data / "styled.json").read_text())["keep_render_look"] == "styled"
    sets = {n: read_translation_index(data, n) for n in ("plain", "raw", "styled")}
    tool_pixels = 0
    for e in read_index(data):
        k = (e["patient"], e["frame"])
        render = iio.imread(data / e["image"])
        tool = np.isin(read_mask(data / e["segmentation"]), [LABEL_IDS["tool_shaft"], LABEL_IDS["tool_tip"]])
        tool_pixels += tool.sum()
        outs = {n: json.loads((data / s[k]["meta"]).read_text())["outputs"] for n, s in sets.items()}
        for p, r, x in zip(outs["plain"], outs["raw"], outs["styled"]):
            assert p["seed"] == r["seed"] == x["seed"] and r["source"] == x["source"]
            base, raw, styled = (iio.imread(data / o["image"]) for o in (p, r, x))
            pasted = base.copy()
            pasted[tool] = render[tool]
            h, w = base.shape[:2]
            assert np.array_equal(styled, fda(pasted, real_frame(type(real_dir)(x["source"]), w, h), 0.01))
            assert np.array_equal(raw[tool], render[tool])
            assert not tool.any() or not np.array_equal(styled[tool], render[tool])  # the band moved them too
    assert tool_pixels > 0
    # styled where it cannot apply: one line each, nothing written
    for over, needle in [({"style_from": None}, "--keep-render-look styled: only with"),
                         ({"keep_render": "none"}, "--keep-render-look styled: only with"),
                         ({"method": "fda", "checkpoint": None}, "--keep-render-look styled: only with"),
                         ({"keep_render_look": "pale"}, "--keep-render-look pale: expected one of render, styled")]:
        opts = TranslateOptions(**{"checkpoint": checkpoint, "data": data, "name": "other", "device": "cpu",
                                   "style_from": str(real_dir), "keep_render": "tools", "keep_render_look": "styled",
                                   **over})
        with pytest.raises(TranslateError) as err:
            translate_run(opts, say=lambda m: None)
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (data / "other.json").exists()


@pytest.mark.parametrize("override, needle", [
    ("model=cyclegan", "model='cyclegan': expected one of munit, cut"),
    ("cut.nce_layers=0,1,9", "cut.nce_layers='0,1,9': expected distinct comma-separated integers 0 to 5"),
    ("cut.nce_layers=1,1", "cut.nce_layers='1,1'"),
    ("cut.nce_layers=a,b", "cut.nce_layers='a,b'"),
    ("cut.nce_patches=0", "cut.nce_patches=0: must be >= 1"),
    ("cut.nce_t=0", "cut.nce_t=0.0: must be > 0"),
    ("cut.nce_w=-1", "cut.nce_w=-1.0: must be >= 0"),
    ("cut.nce_idt_w=lots", "cut.nce_idt_w='lots': expected a number"),
    ("cut.nce_mlp_dim=0", "cut.nce_mlp_dim=0: must be >= 1"),
    ("cut.nce_temp=1", "unknown config key 'cut.nce_temp'"),
])
def test_bad_cut_config_is_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["model=cut", override])
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_single_tap_from_yaml_int_or_list():
    assert cut_cfg("cut.nce_layers=3").cut.layer_ids() == [3]
    assert cut_cfg("cut.nce_layers=[0, 4]").cut.layer_ids() == [0, 4]


def test_cut_parameter_counts_at_the_default_widths_match_the_docs():
    from backend.translator.config import TrainConfig
    from backend.translator.cut import build_cut_networks
    from backend.translator.networks import parameter_counts

    cfg = TrainConfig()
    cfg.model = "cut"
    doc = (ROOT / "docs" / "training.md").read_text()
    section = doc[doc.index("## One-sided model"):doc.index("## Defaults")]
    for name, n in parameter_counts(build_cut_networks(cfg)).items():
        assert re.search(rf"`{name}`\s*\|[^\n]*\|\s*{n:,}\s*\|", section), f"docs/training.md lacks `{name}` ... {n:,}"


def test_a_checkpoint_from_before_model_existed_resumes_as_munit(tmp_path):
    """Configs saved before `model` and `cut` existed lack them: they had, in effect, the defaults."""
    cfg = load_config(TINY)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "cut")}
    ckpt.save(tmp_path, 2, {"iteration": 2, "config": old, "world": 1, "rng": [ckpt.rng_state()]})
    assert resume_state(tmp_path, cfg, "cpu", True, lambda m: None)[0]["iteration"] == 2
    with pytest.raises(ConfigError, match="model: 'munit' in the checkpoint, 'cut' now"):
        resume_state(tmp_path, cut_cfg(), "cpu", True, lambda m: None)
