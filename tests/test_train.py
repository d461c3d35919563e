"""Translator: networks, losses, data checks, a real short training run, resume, NaN guard, DDP."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from backend.translator import checkpoint as ckpt
from backend.translator.config import UPSAMPLES, ConfigError, TrainConfig, load_config
from backend.translator.losses import structure_loss
from backend.translator.networks import PADS, build_networks, parameter_counts, upsample_conv
from backend.translator.trainer import Trainer, TrainingDiverged
from backend.translator.training import resume_state
from blender_addon.core.dataset import read_index
from blender_addon.core.progress import parse_progress
from conftest import ROOT, shared_data

TINY = ROOT / "tests" / "tiny.yaml"


def tiny_cfg(**over) -> TrainConfig:
    cfg = load_config(TINY)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg.validate()


def run_train(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "backend.train", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def real_dir():
    return shared_data() / "real" / "cholec80_vid03"


def test_network_shapes():
    cfg = tiny_cfg()
    nets = build_networks(cfg)
    x = torch.randn(2, 3, 64, 96)
    c_a = nets["gen_a"](x, mode="encode")
    c_b, s_b = nets["gen_b"](x, mode="encode")
    assert c_a.shape == c_b.shape == (2, 8, 16, 24)  # 8-channel content at 1/4 resolution
    assert s_b.shape == (2, cfg.gen.style_dim)
    assert nets["gen_a"](content=c_a, mode="decode").shape == x.shape
    y = nets["gen_b"](content=c_a, style=torch.randn(2, cfg.gen.style_dim), mode="decode")
    assert y.shape == x.shape and y.abs().max() <= 1
    outs = nets["dis_a"](x)
    assert [o.shape[-2:] for o in outs] == [(8, 12), (4, 6)]


@pytest.mark.parametrize("pad_type", ["reflect", "replicate", "zero"])
@pytest.mark.parametrize("size,kernel", [((5, 7), 5), ((4, 4), 5), ((8, 3), 5), ((2, 9), 5), ((5, 6), 3), ((6, 7), 7)])
def test_upsample_conv_is_the_upsampled_convolution_values_and_gradients(pad_type, size, kernel):
    """The decoder's phase-split upsampling conv computes conv(pad(upsample(x))) exactly, for every
    padding and odd kernel, at odd and small sizes ((8, 3) and (2, 9) take the plain path), gradients included."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)
    conv = torch.nn.Conv2d(6, 4, kernel).double()
    pad = kernel // 2

    def plain(x):
        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return conv(PADS[pad_type](pad)(up))

    want = plain(x)
    got = upsample_conv(x, conv.weight, conv.bias, pad, pad_type)
    assert got.shape == want.shape == (2, 4, 2 * size[0], 2 * size[1])
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, conv.weight, conv.bias], g)
    got_grads = torch.autograd.grad(got, [x, conv.weight, conv.bias], g)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_gen_upsample_plain_and_phases_are_the_same_generator():
    """gen.upsample picks how the decoder computes nearest-2x + conv (GPU steps at batch 1 are bound by kernel
    launches, where the phases' extra small kernels cost more than their arithmetic saves): same weights, same
    keys, same translation up to float rounding, gradients included."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    gens = {}
    for mode in UPSAMPLES:
        cfg = tiny_cfg()
        cfg.gen.upsample = mode
        gens[mode] = build_networks(cfg.validate())["gen_b"]
    phases, plain = gens["phases"], gens["plain"]
    plain.load_state_dict(phases.state_dict())
    on_gpu = torch.empty(0, device="meta")  # the choice looks at the device type only

    def picks(g, t):
        return {b.phases(t) for b in list(g.dec.up)[:-1]}
    assert picks(phases, x) == picks(phases, on_gpu) == {True} and picks(plain, x) == picks(plain, on_gpu) == {False}
    assert picks(gens["auto"], x) == {True} and picks(gens["auto"], on_gpu) == {False}  # the default: by device
    assert tiny_cfg().gen.upsample == "auto"
    outs = []
    for g in (phases, plain):
        c, s = g(x, mode="encode", noise=False)
        y = g(content=c, style=s, mode="decode")
        y.square().mean().backward()
        outs.append((y.detach(), next(iter(g.dec.up.parameters())).grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-5)


def test_decoder_keeps_the_upsample_then_conv_function_and_checkpoint_keys():
    """A decoder saved before the phase-split upsampling (nn.Upsample at up.0, up.2, ... and the
    convolution blocks between) loads with the same keys and gives the same image."""
    cfg = tiny_cfg()
    torch.manual_seed(1)
    dec = build_networks(cfg)["gen_a"].dec.eval()
    blocks = list(dec.up)
    old_layout = torch.nn.Sequential(*[m for b in blocks[:-1] for m in (torch.nn.Upsample(scale_factor=2), b)],
                                     blocks[-1])
    assert list(old_layout.state_dict()) == list(dec.up.state_dict())
    content = torch.randn(2, cfg.gen.content_dim, 16, 24)
    with torch.no_grad():
        x = dec.expand(content)
        for block in dec.res:
            x = block(x)
        for b in blocks[:-1]:  # the plain way: upsample, pad, conv, norm, activation
            x = b.activ(b.norm(b.conv(b.pad(torch.nn.functional.interpolate(x, scale_factor=2)))))
        want = blocks[-1](x)
        got = dec(content)
    assert torch.allclose(got, want, atol=1e-5)


def test_parameter_counts_at_the_papers_configuration_match_the_docs():
    counts = parameter_counts(build_networks(TrainConfig()))
    doc = (ROOT / "docs" / "training.md").read_text()
    for name, n in counts.items():
        assert re.search(rf"`{name}`\s*\|[^\n]*\|\s*{n:,}\s*\|", doc), f"docs/training.md lacks `{name}` ... {n:,}"


def test_encoder_noise_is_on_in_training_and_switchable():
    nets = build_networks(tiny_cfg())
    g = nets["gen_b"]
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    g.train()
    assert not torch.equal(g(x, mode="encode")[0], g(x, mode="encode")[0])
    g.eval()
    assert torch.equal(g(x, mode="encode")[0], g(x, mode="encode")[0])
    assert not torch.equal(g(x, mode="encode", noise=True)[0], g(x, mode="encode", noise=True)[0])
    g.train()
    assert torch.equal(g(x, mode="encode", noise=False)[0], g(x, mode="encode", noise=False)[0])


def test_structure_loss_sees_structure_not_hue():
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32))
    base = torch.nn.functional.avg_pool2d(base, 5, 1, 2)  # some spatial structure
    assert structure_loss(base, base).item() == pytest.approx(0.0, abs=1e-5)
    hue = base[:, [1, 2, 0]]  # channels rotated: same brightness, other colours
    assert structure_loss(base, hue).item() == pytest.approx(0.0, abs=1e-5)
    shifted = torch.roll(base, shifts=(7, 5), dims=(2, 3))
    assert structure_loss(base, shifted).item() > 0.2
    flipped = base.flip(3)
    assert structure_loss(base, flipped).item() > 0.2


@pytest.mark.parametrize("override, needle", [
    ("gen.stlye_dim=4", "gen.stlye_dim"),
    ("lr=-1", "lr"),
    ("batch_size=two", "batch_size"),
    ("amp=fp8", "amp"),
    ("crop_image_width=250", "crop_image_width"),
    ("gen=3", "gen"),
    # non-finite numbers, counts that overflow later, integers that would be cut, jitter that inverts images
    ("lr=.inf", "lr=inf: expected a finite number"), ("gamma=1e999", "gamma='1e999': expected a finite number"), ("gan_w=.nan", "gan_w"),
    ("cut.nce_t=.inf", "cut.nce_t"), ("max_iter=1e999", "max_iter='1e999': expected an integer"),
    ("max_iter=1.5e0", "max_iter='1.5e0'"), ("max_iter=1e12", "max_iter"), ("seed=1e30", "seed"), ("seed=-1", "seed"),
    ("aug.brightness=.nan", "aug.brightness"), ("aug.brightness=3", "aug.brightness"),
    ("aug.contrast=-0.5", "aug.contrast"), ("aug.rotation=1e3", "aug.rotation"),
])
def test_config_validation_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        load_config(TINY, [override])
    assert "\n" not in str(err.value)


def test_integers_written_with_exponents_still_read():
    cfg = load_config(TINY, ["max_iter=1e5", "snapshot_save_iter=2.5e3", "seed=4294967295"])
    assert (cfg.max_iter, cfg.snapshot_save_iter, cfg.seed) == (100_000, 2500, 2 ** 32 - 1)


def test_cpu_config_keeps_the_method_and_shrinks_only_sizes():
    cpu, paper = load_config(ROOT / "configs" / "cpu.yaml"), TrainConfig()
    for key in ("gan_w", "recon_x_w", "recon_c_w", "recon_s_w", "recon_x_cyc_w", "ms_ssim_a_w", "ms_ssim_b_w",
                "noise_std", "style_replace_p", "lr", "beta1", "beta2", "init"):
        assert getattr(cpu, key) == getattr(paper, key), key
    assert (cpu.gen.style_dim, cpu.gen.content_dim, cpu.gen.n_downsample) == (8, 8, 2)
    counts = parameter_counts(build_networks(cpu))
    assert counts["gen_b"] < parameter_counts(build_networks(paper))["gen_b"] / 8


def test_default_config_is_the_papers():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg == TrainConfig()  # the YAML spells out the dataclass defaults
    assert (cfg.gan_w, cfg.recon_x_w, cfg.recon_c_w, cfg.recon_s_w, cfg.recon_x_cyc_w) == (1, 10, 1, 1, 10)
    assert (cfg.ms_ssim_a_w, cfg.ms_ssim_b_w, cfg.noise_std, cfg.style_replace_p) == (5, 3, 0.1, 0.5)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.step_size, cfg.gamma) == (1e-4, 0.5, 0.999, 1e-4, 100_000, 0.5)
    assert (cfg.gen.style_dim, cfg.gen.mlp_dim, cfg.gen.content_dim, cfg.dis.num_scales) == (8, 256, 8, 3)


def test_cli_refuses_bad_config_with_one_line(tmp_path, tiny_dataset, real_dir):
    proc = run_train("--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--out", tmp_path / "r",
                     "--set", "recon_x_w=heavy", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "recon_x_w" in proc.stderr
    assert not (tmp_path / "r").exists()


def _weights(path):
    state = ckpt.load(path)
    return {f"{net}.{k}": v for net in ("gen_a", "gen_b", "dis_a", "dis_b") for k, v in state[net].items()}


def test_short_run_lowers_reconstruction_and_resume_is_exact(tmp_path, tiny_dataset, real_dir):
    # --device cpu: bit-exact resume; on CUDA cuDNN picks algorithms by timing in each process (docs/training.md)
    common = ["--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--device", "cpu"]
    full = tmp_path / "full"
    run_train(*common, "--out", full, "--iterations", 60, "--set", "snapshot_save_iter=30")
    log = [json.loads(ln) for ln in (full / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log] == list(range(1, 61))
    first = np.mean([e["gen/recon_x_a"] + e["gen/recon_x_b"] for e in log[:10]])
    last = np.mean([e["gen/recon_x_a"] + e["gen/recon_x_b"] for e in log[-10:]])
    assert last < 0.8 * first, (first, last)
    assert (full / "tb").is_dir() and list((full / "images").glob("*.png"))
    # Interrupted at 30 (as if killed after its checkpoint), resumed to 60: same weights exactly.
    part = tmp_path / "part"
    run_train(*common, "--out", part, "--iterations", 30, "--set", "snapshot_save_iter=30")
    with open(part / "log.jsonl", "a") as f:  # a kill -9 after logging iterations the checkpoint does not hold
        f.write("".join(json.dumps({"iteration": i, "gen/total": 9.9}) + "\n" for i in range(31, 36)) + '{"itera')
    proc = run_train(*common, "--out", part, "--iterations", 60, "--set", "snapshot_save_iter=30")
    assert "resuming" in proc.stderr
    resumed = [json.loads(ln) for ln in (part / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in resumed] == list(range(1, 61)) and all(e["gen/total"] != 9.9 for e in resumed)
    # No terminal: progress lines in the one format the Blender panel parses.
    progress = [p for p in map(parse_progress, proc.stderr.splitlines()) if p is not None]
    assert progress and {p.what for p in progress} == {"train"} and progress[-1].done == progress[-1].total == 60
    # TensorBoard as log.jsonl: every iteration once, the checkpoint's own included; the same image grids
    tb = _tensorboard_steps(part / "tb", "gen/total")
    assert tb == list(range(1, 61)), tb
    assert sorted(p.name for p in (part / "images").iterdir()) == sorted(p.name for p in (full / "images").iterdir())
    for grid in (full / "images").iterdir():
        assert grid.read_bytes() == (part / "images" / grid.name).read_bytes(), grid.name
    a, b = _weights(full / "checkpoints" / "ckpt_00000060.pt"), _weights(part / "checkpoints" / "ckpt_00000060.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state = ckpt.load(full / "checkpoints" / "ckpt_00000060.pt")
    for key in ("gen_opt", "dis_opt", "gen_sched", "dis_sched", "gen_scaler", "dis_scaler", "bad_steps", "rng", "config",
                "iteration", "data"):
        assert key in state
    assert state["data"]["renders"] == len(read_index(tiny_dataset)) and state["data"]["real"] > 0


def _tensorboard_steps(folder, tag):
    """The steps of a scalar as TensorBoard shows them (events past a resume's purge step dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_resume_on_other_training_images_is_refused_by_name(tmp_path):
    """The sample order is a function of the image lists, and training of their bytes: a resume on other renders
    or real frames, or on frames replaced under the same names, would not continue the same training.
    Checkpoints written before the record resume as they did, those before the content hashes without them."""
    from backend.common.images import DataError
    from backend.translator.training import check_same_data, data_record

    (tmp_path / "real").mkdir()
    renders = [tmp_path / f"r{i}.png" for i in range(3)]
    reals = [tmp_path / "real" / f"{i}.png" for i in range(2)]
    for i, p in enumerate(renders + reals + [tmp_path / "more.png", tmp_path / "other.png"]):
        p.write_bytes(bytes([i]) * 100)
    state = {"data": data_record(renders, reals)}
    check_same_data(state, data_record(renders, reals), tmp_path / "ckpt.pt")
    check_same_data({}, data_record(renders, reals[:1]), tmp_path / "ckpt.pt")  # from before the record
    with pytest.raises(ConfigError, match=r"real: 2 in the checkpoint, 3 now") as err:
        check_same_data(state, data_record(renders, reals + [tmp_path / "more.png"]), tmp_path / "ckpt.pt")
    assert "real_sha256_16" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="renders_sha256_16"):  # same count, another image
        check_same_data(state, data_record(renders[:2] + [tmp_path / "other.png"], reals), tmp_path / "ckpt.pt")
    reals[1].write_bytes(b"another frame under the same name")
    with pytest.raises(ConfigError, match="real_content_sha256_16") as err:
        check_same_data(state, data_record(renders, reals), tmp_path / "ckpt.pt")
    assert "renders_content" not in str(err.value) and "real_sha256_16" not in str(err.value)
    older = {"data": {k: v for k, v in state["data"].items() if "content" not in k}}  # before the content hashes
    check_same_data(older, data_record(renders, reals), tmp_path / "ckpt.pt")
    reals[1].unlink()
    with pytest.raises(DataError, match=f"{reals[1]}: cannot be read"):  # removed after the decode check
        data_record(renders, reals)


@pytest.mark.parametrize("workers, group", [(0, False), (2, True)])
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, tiny_dataset, real_dir, workers, group):
    """SIGTERM to the process, and to its whole process group (Ctrl-C, SLURM, `timeout`): loader workers
    must not die first and take the main process down before it writes its checkpoint."""
    import signal
    import time

    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "backend.train", "--config", str(TINY), "--renders",
                             str(tiny_dataset), "--real", str(real_dir), "--out", str(out), "--iterations", "100000",
                             "--set", "snapshot_save_iter=100000", "--set", f"num_workers={workers}"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, start_new_session=group)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.1)
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    saved = ckpt.checkpoints(out / "checkpoints")
    assert len(saved) == 1 and saved[0][0] >= 3
    assert "stopped at iteration" in err


def test_resume_with_another_config_is_refused(tmp_path, tiny_dataset, real_dir):
    common = ["--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--out", tmp_path / "r"]
    run_train(*common, "--iterations", 2)
    proc = run_train(*common, "--iterations", 4, "--set", "gen.style_dim=4", check=False)
    assert proc.returncode == 2 and "gen.style_dim" in proc.stderr
    # logging may change, and how the decoder computes its upsampling (the same function)
    assert run_train(*common, "--iterations", 4, "--set", "log_iter=2", "--set", "gen.upsample=plain").returncode == 0


def test_truncated_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        tmp_path, tiny_dataset, real_dir):
    common = ["--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--out", tmp_path / "r",
              "--set", "snapshot_save_iter=2"]
    run_train(*common, "--iterations", 4)
    newest = tmp_path / "r" / "checkpoints" / "ckpt_00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # as if the disk filled up
    proc = run_train(*common, "--iterations", 6)
    assert "Traceback" not in proc.stderr
    assert re.search(r"ckpt_00000004\.pt.*resuming from ckpt_00000002\.pt", proc.stderr), proc.stderr
    assert re.search(r"resuming \S*ckpt_00000002\.pt at iteration 2", proc.stderr), proc.stderr
    assert (newest.parent / "ckpt_00000004.pt.corrupt").exists()
    assert [it for it, _ in ckpt.checkpoints(newest.parent)][-1] == 6
    assert ckpt.load(ckpt.latest(newest.parent))["iteration"] == 6


def test_a_checkpoint_the_machine_cannot_read_is_an_error_not_a_corrupt_file(tmp_path, monkeypatch):
    """An I/O or permission error says nothing about the file: it is neither renamed nor skipped (a run would
    otherwise start afresh past good checkpoints)."""
    import errno

    from blender_addon.core.errors import InputError

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "ckpt_00000002.pt").write_bytes(b"a checkpoint on a flaky disk")

    def unreadable(path, map_location="cpu"):
        raise OSError(errno.EIO, "Input/output error", str(path))
    monkeypatch.setattr(ckpt, "load", unreadable)
    with pytest.raises(InputError, match=r"ckpt_00000002\.pt: cannot be read \(Input/output error\)"):
        resume_state(folder, tiny_cfg(), "cpu", False, lambda m: None)
    assert (folder / "ckpt_00000002.pt").is_file() and not list(folder.glob("*.corrupt"))


def test_no_loadable_checkpoint_starts_afresh_or_refuses_resume(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "ckpt_00000002.pt").write_bytes(b"PK\x03\x04 not a zip")
    (folder / "ckpt_00000002.pt.corrupt").write_bytes(b"earlier")
    said = []
    with pytest.raises(ConfigError, match=re.escape(str(folder))):
        resume_state(folder, tiny_cfg(), "cpu", True, said.append)
    assert (folder / "ckpt_00000002.pt.1.corrupt").exists() and ckpt.latest(folder) is None
    assert any("ckpt_00000002.pt" in line and "no older checkpoint" in line for line in said), said
    (folder / "ckpt_00000004.pt").write_bytes(b"")
    said.clear()
    assert resume_state(folder, tiny_cfg(), "cpu", False, said.append) == (None, None)
    assert (folder / "ckpt_00000004.pt.corrupt").exists()
    assert "starting afresh" in said[-1] and all("\n" not in line for line in said)


def _image(path, size=(80, 80), mode="RGB"):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), np.uint8)
                    .squeeze(), mode).save(path)


def test_bad_images_are_reported_and_skipped(tmp_path, tiny_dataset):
    real = tmp_path / "real" / "nested"
    real.mkdir(parents=True)
    _image(real / "good.png")
    Image.fromarray(np.full((80, 80), 128, np.uint8), "L").save(real / "grey.png")
    Image.fromarray(np.full((80, 80, 4), 200, np.uint8), "RGBA").save(real / "alpha.png")
    (real / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (real / "text.png").write_text("hello")
    _image(real / "small.png", size=(40, 30))
    out = tmp_path / "r"
    proc = run_train("--config", TINY, "--renders", tiny_dataset, "--real", tmp_path / "real", "--out", out,
                     "--iterations", 2)
    bad = [json.loads(ln) for ln in (out / "bad_images.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(b["path"]) for b in bad) == ["broken.jpg", "small.png", "text.png"]
    assert "3 real frames" in proc.stderr
    # Nothing usable at all: a clear error.
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_text("nope")
    proc = run_train("--config", TINY, "--renders", tiny_dataset, "--real", only_bad, "--out", tmp_path / "r2",
                     "--iterations", 2, check=False)
    assert proc.returncode == 2 and "no usable real images" in proc.stderr
    assert f"every unusable image is listed in {tmp_path / 'r2' / 'bad_images.jsonl'}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (tmp_path / "r2" / "bad_images.jsonl").is_file()


def test_non_finite_steps_never_reach_the_weights():
    cfg = tiny_cfg(nan_patience=3)
    trainer = Trainer(cfg, torch.device("cpu"))
    x_a, x_b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    trainer.step(x_a, x_b)
    before = {k: v.clone() for k, v in trainer.state_dict()["gen_a"].items()}
    cfg.recon_x_w = float("nan")  # poisons the generator loss from now on
    for _ in range(2):
        log = trainer.step(x_a, x_b)
        assert not log["gen/ok"]
    after = trainer.state_dict()["gen_a"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        trainer.step(x_a, x_b)


def test_cli_stops_on_divergence_keeping_the_last_good_checkpoint(tmp_path, tiny_dataset, real_dir):
    common = ["--config", TINY, "--renders", tiny_dataset, "--real", real_dir, "--out", tmp_path / "r"]
    proc = run_train(*common, "--iterations", 50, "--set", "lr=1e30", "--set", "nan_patience=2", check=False)
    assert proc.returncode == 3 and "in a row" in proc.stderr
    for _, path in ckpt.checkpoints(tmp_path / "r" / "checkpoints"):
        for k, v in _weights(path).items():
            assert torch.isfinite(v.float()).all(), (path, k)


def test_two_process_ddp_keeps_replicas_identical(tmp_path, tiny_dataset, real_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29517",
                           "-m", "backend.train", "--config", str(TINY), "--renders", str(tiny_dataset), "--real",
                           str(real_dir), "--out", str(tmp_path / "ddp"), "--iterations", "4", "--device", "cpu",
                           "--check-replicas"], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replicas identical across 2 processes" in proc.stderr
    assert "batch 1 x 2 process(es)" in proc.stderr
    assert [it for it, _ in ckpt.checkpoints(tmp_path / "ddp" / "checkpoints")] == [4]


@pytest.mark.parametrize("model", ["munit", "cut"])
def test_discriminator_learns_from_the_generator_updates_own_translations(model, monkeypatch):
    """dis_fakes reuse (default): no second generator pass; the discriminator sees exactly the translations
    the generator update made (before its optimiser step). fresh: NVlabs/MUNIT's order, made anew."""
    from backend.translator.models import make_trainer

    x_a, x_b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    for fakes in ("reuse", "fresh"):
        torch.manual_seed(0)
        trainer = make_trainer(tiny_cfg(model=model, dis_fakes=fakes), torch.device("cpu"))
        dis = trainer.dis if model == "cut" else trainer.dis_b  # the one that judges render -> real
        seen = []
        dis.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].detach().clone()))
        if fakes == "reuse":
            monkeypatch.setattr(trainer, "translations" if model == "munit" else "translate",
                                lambda *a, **k: pytest.fail("an extra generator pass"))
        log = trainer.step(x_a, x_b)
        assert log["gen/ok"] and log["dis/ok"] and trainer.fakes is None
        if fakes == "reuse":  # gen update: D(x_ab); then dis update: D(x_b), D(x_ab) with the same x_ab
            assert len(seen) == 3 and torch.equal(seen[0], seen[2]) and torch.equal(seen[1], x_b)
        else:  # dis update: D(x_b), D(fresh x_ab); then gen update: D(its own x_ab), other encoder noise
            assert len(seen) == 3 and torch.equal(seen[0], x_b) and not torch.equal(seen[1], seen[2])
        monkeypatch.undo()


def test_compiled_runs_write_plain_checkpoint_keys():
    plain = Trainer(tiny_cfg(), torch.device("cpu")).state_dict()
    compiled = Trainer(tiny_cfg(compile=True), torch.device("cpu"))
    assert hasattr(compiled.gen_a, "_orig_mod")  # really wrapped by torch.compile
    state = compiled.state_dict()
    for net in ("gen_a", "gen_b", "dis_a", "dis_b"):
        assert state[net].keys() == plain[net].keys()
    compiled.load_state_dict(state)


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_path_runs_under_cpu_autocast(amp, dtype):
    """The CUDA bf16/fp16 code path (casts, float32 losses, fp16 scaler) run through CPU autocast."""
    torch.manual_seed(0)
    trainer = Trainer(tiny_cfg(amp=amp), torch.device("cpu"), amp_on_cpu=True)
    seen = []
    trainer.gen_b.dec.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x_a, x_b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    logs = [trainer.step(x_a, x_b) for _ in range(4)]
    assert dtype in seen  # autocast really ran the decoder in reduced precision
    for log in logs:
        assert all(np.isfinite(v) for k, v in log.items() if isinstance(v, float)), log
    for net in ("gen_a", "gen_b", "dis_a", "dis_b"):  # master weights stay float32 and finite
        for k, v in trainer.state_dict()[net].items():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), (net, k)
    assert all(s.is_enabled() == (amp == "fp16") for s in trainer.scalers.values())
    # each optimiser backs its own scale off after an overflow (fp16) and then steps
    assert sum(log["gen/ok"] for log in logs) >= 2 and sum(log["dis/ok"] for log in logs) >= 2


def test_fp16_overflow_is_skipped_and_only_that_optimisers_scale_backs_off():
    """One loss scaler per optimiser, updated once per iteration: a generator overflow halves the
    generator's scale only, and a scale grows after exactly growth_interval good iterations (a shared
    scaler updated after both steps grew twice as fast and backed off for the other network's overflow)."""
    torch.manual_seed(0)
    trainer = Trainer(tiny_cfg(amp="fp16"), torch.device("cpu"), amp_on_cpu=True)
    x_a, x_b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    trainer.scalers["gen"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # scaled fp16 gradients overflow
    trainer.scalers["dis"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    before = {k: v.clone() for k, v in trainer.state_dict()["gen_a"].items()}
    log = trainer.step(x_a, x_b)
    assert not log["gen/ok"] and log["dis/ok"] and trainer.skipped_total == 1
    assert trainer.scalers["gen"].get_scale() == 2.0 ** 119
    assert trainer.scalers["dis"].get_scale() == 2.0 ** 8  # one good step of growth_interval 2: unchanged
    after = trainer.state_dict()["gen_a"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    trainer.scalers["gen"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=3)
    for _ in range(2):
        assert trainer.step(x_a, x_b)["gen/ok"]
    assert trainer.scalers["dis"].get_scale() == 2.0 ** 9  # grew once after its 2nd good iteration...
    assert trainer.scalers["gen"].get_scale() == 2.0 ** 8  # ...the generator's not yet (2 of 3)
    assert trainer.step(x_a, x_b)["gen/ok"] and trainer.scalers["gen"].get_scale() == 2.0 ** 9


def test_resume_restores_scalers_and_the_non_finite_streak():
    """The fp16 scales and the count of non-finite steps in a row survive a checkpoint: nan_patience
    counts across a resume instead of starting again."""
    cfg = tiny_cfg(nan_patience=3, amp="fp16")
    x_a, x_b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    trainer = Trainer(cfg, torch.device("cpu"), amp_on_cpu=True)
    trainer.scalers["gen"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    trainer.scalers["dis"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 6)
    cfg.recon_x_w = float("nan")
    for _ in range(2):
        assert not trainer.step(x_a, x_b)["gen/ok"]
    state = trainer.state_dict()
    resumed = Trainer(cfg, torch.device("cpu"), amp_on_cpu=True)
    resumed.load_state_dict(state)
    assert resumed.bad_steps == 2 and resumed.skipped_total == 2
    assert resumed.scalers["gen"].get_scale() == 2.0 ** 8 and resumed.scalers["dis"].get_scale() == 2.0 ** 6
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        resumed.step(x_a, x_b)
    # a checkpoint from before the split (one shared "scaler") gives both optimisers its scale
    old = {k: v for k, v in state.items() if k not in ("gen_scaler", "dis_scaler", "bad_steps")}
    old["scaler"] = state["dis_scaler"]
    legacy = Trainer(cfg, torch.device("cpu"), amp_on_cpu=True)
    legacy.load_state_dict(old)
    assert legacy.bad_steps == 0 and [s.get_scale() for s in legacy.scalers.values()] == [2.0 ** 6, 2.0 ** 6]


def test_default_yaml_is_generated_from_the_one_set_of_defaults():
    """The translator's defaults are written once (TrainConfig); configs/default.yaml documents them and
    must be regenerated (python -m backend.translator.config > configs/default.yaml) when they change."""
    from backend.translator.config import default_yaml

    assert (ROOT / "configs" / "default.yaml").read_text() == default_yaml()
    assert load_config(ROOT / "configs" / "default.yaml").to_dict() == TrainConfig().to_dict()


def test_rng_states_loaded_onto_the_training_device_are_restored():
    """checkpoint.load maps every tensor to the training device; the generators take CPU byte tensors
    only, so a resume on CUDA failed with 'RNG state must be a torch.ByteTensor' (GPU machine). A tensor
    that is not on the CPU stands in for one on the GPU: set_rng_state must bring it back first."""
    class OnDevice:  # what torch.load(map_location="cuda") gives: usable only after .cpu()
        def __init__(self, t):
            self.t = t

        def cpu(self):
            return self.t

    torch.manual_seed(5)
    np.random.seed(5)
    saved = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    moved = dict(saved, torch=OnDevice(saved["torch"]), numpy=dict(saved["numpy"], keys=OnDevice(saved["numpy"]["keys"])))
    torch.manual_seed(6)
    np.random.seed(6)
    ckpt.set_rng_state(moved)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_channels_last_trains_the_same_networks():
    """channels_last changes the memory layout only: the same seed gives the same losses and weights
    (encoder noise off: randn_like fills a channels_last tensor in its memory order, so the same seed
    puts the same numbers at other pixels)."""
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(tiny_cfg(channels_last=channels_last, noise_std=0.0), torch.device("cpu"))
        torch.manual_seed(1)
        x_a, x_b = torch.rand(1, 3, 64, 96) * 2 - 1, torch.rand(1, 3, 64, 96) * 2 - 1
        log = trainer.step(x_a, x_b)
        weight = next(trainer.gen_a.parameters())
        assert weight.is_contiguous(memory_format=torch.channels_last) == (channels_last and weight.dim() == 4)
        results.append((log, weight.detach().clone()))
    (log0, w0), (log1, w1) = results
    assert log0["gen/total"] == pytest.approx(log1["gen/total"], rel=1e-4)
    assert log0["dis/total"] == pytest.approx(log1["dis/total"], rel=1e-4)
    # Adam's first step moves every weight by about lr * sign(gradient): where a gradient is ~0, float
    # summation order (another CPU, other kernels for the other layout) can flip its sign, so a few
    # weights may differ by up to 2 lr (seen on the GPU machine's CPU); the rest must agree
    diff = (w0 - w1).abs()
    assert diff.max() <= 2 * tiny_cfg().lr + 1e-6
    assert (diff <= 1e-5).float().mean() >= 0.99


@pytest.mark.parametrize("key", ["dis.norm", "gen.activ", "dis.activ", "gen.pad_type", "dis.pad_type", "lr_policy",
                                 "init", "amp", "cpu_amp", "dis.gan_type", "dis_fakes",
                                 "gen.content_activ", "gen.upsample", "aug.render_scale"])
def test_every_enumerated_key_is_checked_at_load_naming_the_allowed_values(key):
    """Unknown values were a raw KeyError from networks.py; now one line at load naming key and choices."""
    from backend.translator.config import CHOICES

    with pytest.raises(ConfigError) as err:
        load_config(TINY, [f"{key}=bogus"])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{key}='bogus'")
    assert all(v in message for v in CHOICES[key]), message


def test_config_choices_are_exactly_what_the_networks_build():
    from backend.translator import config, networks

    assert set(networks.PADS) == set(config.PAD_TYPES)
    assert set(networks.ACTIVATIONS) == set(config.ACTIVATIONS)
    assert set(config.DIS_NORMS) <= set(networks.NORMS) - {"adain"}
    for norm in config.DIS_NORMS:  # every accepted value builds and runs
        for activ in config.ACTIVATIONS:
            cfg = tiny_cfg()
            cfg.dis.norm, cfg.dis.activ, cfg.gen.activ = norm, activ, activ
            nets = build_networks(cfg.validate())
            assert len(nets["dis_a"](torch.rand(1, 3, 64, 64))) == cfg.dis.num_scales


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    """Each rank resumes its own RNG stream and sample numbers; another world size would silently train
    something else (it used to fall back to rank 0's RNG state)."""
    folder = tmp_path / "checkpoints"
    cfg = tiny_cfg()
    ckpt.save(folder, 2, {"iteration": 2, "config": cfg.to_dict(), "rng": [ckpt.rng_state()] * 2})  # no "world" yet
    with pytest.raises(ConfigError) as err:
        resume_state(folder, cfg, "cpu", True, world=1)
    assert "\n" not in str(err.value) and "2 process(es), this run has 1" in str(err.value)
    assert "--nproc-per-node=2" in str(err.value)
    assert resume_state(folder, cfg, "cpu", True, world=2)[0]["iteration"] == 2
    ckpt.save(folder, 4, {"iteration": 4, "config": cfg.to_dict(), "world": 1, "rng": [ckpt.rng_state()]})
    assert resume_state(folder, cfg, "cpu", True, world=1)[0]["iteration"] == 4
    with pytest.raises(ConfigError, match=r"1 process\(es\), this run has 3"):
        resume_state(folder, cfg, "cpu", True, world=3)


def test_stale_checkpoint_temporaries_are_removed_at_start_up_never_a_checkpoint(tmp_path):
    """kill -9 during a checkpoint write leaves atomic_write's temporary (seen: a 0-byte .tmp-ckpt-*.pt)."""
    folder = tmp_path / "checkpoints"
    cfg = tiny_cfg()
    good = ckpt.save(folder, 2, {"iteration": 2, "config": cfg.to_dict(), "world": 1, "rng": [ckpt.rng_state()]})
    stale = [folder / ".tmp-ckpt-k1ll3d.pt", folder / ".tmp-a8x_2qz.pt"]
    stale[0].write_bytes(b"")
    stale[1].write_bytes(good.read_bytes())  # even a complete-looking temporary is nobody's checkpoint
    keep = [folder / "notes.txt", folder / ".tmp-other.json", folder / "ckpt_00000002.pt.corrupt"]
    for p in keep:
        p.write_text("x")
    said = []
    resume_state(folder, cfg, "cpu", False, said.append, lead=False)  # only the lead process cleans up
    assert all(p.exists() for p in stale)
    state, path = resume_state(folder, cfg, "cpu", False, said.append)
    assert path == good and state["iteration"] == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert len(said) == 2 and all("removed .tmp-" in line for line in said)


def _smooth_pair(seed, noise, size=(2, 3, 96, 128)):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(size, generator=g) * 2 - 1, 5, 1, 2)
    y = (x + noise * (torch.rand(size, generator=g) * 2 - 1)).clamp(-1, 1)
    return x, y


def test_structure_loss_is_one_minus_pytorch_msssim_where_no_term_is_clamped():
    from pytorch_msssim import ms_ssim

    from backend.translator.losses import FLOOR, brightness, ms_ssim_terms, msssim_window

    for seed, noise in [(0, 0.2), (1, 0.5), (2, 1.0), (3, 0.05)]:
        x, y = _smooth_pair(seed, noise)
        bx, by = (brightness(x) + 1) / 2, (brightness(y) + 1) / 2
        win = msssim_window(96)
        assert ms_ssim_terms(bx, by, win).min() >= FLOOR  # positively correlated: no clamp applies
        reference = 1 - ms_ssim(bx, by, data_range=1.0, size_average=True, win_size=win)
        assert structure_loss(x, y).item() == pytest.approx(reference.item(), abs=1e-5)


def test_structure_loss_has_a_gradient_for_anti_correlated_images():
    """pytorch-msssim's ReLU on the per-scale cs made the loss constant (gradient exactly 0) for these."""
    from pytorch_msssim import ms_ssim

    from backend.translator.losses import brightness, ms_ssim_terms, msssim_window

    g = torch.Generator().manual_seed(4)  # grey structure at every scale: noise upsampled from 3x4 to 96x128
    x = sum(torch.nn.functional.interpolate(torch.rand(2, 1, 3 * 2 ** k, 4 * 2 ** k, generator=g) * 2 - 1,
                                            size=(96, 128), mode="bilinear") for k in range(6)) / 3
    x = x.clamp(-1, 1).repeat(1, 3, 1, 1)
    y = (-x).clone().requires_grad_(True)  # brightness inverted: anti-correlated at every scale
    bx, by = (brightness(x) + 1) / 2, (brightness(y) + 1) / 2
    assert (ms_ssim_terms(bx, by, msssim_window(96)) < 0).all()
    old = 1 - ms_ssim(bx, by, data_range=1.0, win_size=msssim_window(96))
    (old_grad,) = torch.autograd.grad(old, y)
    assert old.item() == 1.0 and torch.count_nonzero(old_grad) == 0  # the hole this replaces
    loss = structure_loss(x, y)
    (grad,) = torch.autograd.grad(loss, y)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # 1 - loss is tiny here (about 1e-9: the loss rounds to 1 in float32), so compare MS-SSIM itself
    from backend.translator.losses import ms_ssim as ours

    def score(img):
        return ours(bx, (brightness(img) + 1) / 2, msssim_window(96)).item()

    assert 0 < score(y) < score(torch.roll(x, (40, 50), (2, 3)))
    # a small step down the gradient moves the translation towards the render's structure
    assert score((y - 0.05 * grad / grad.abs().max()).detach()) > score(y)
    # and towards it all the way: MS-SSIM keeps rising along the straight path from -x to x
    path = [score(-x + t * 2 * x) for t in np.linspace(0, 1, 9)]
    assert all(a < b for a, b in zip(path, path[1:])) and path[-1] == pytest.approx(1.0), path


EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni\nbogomips\t: 4890\n"
SAPPHIRE = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile "
            "amx_int8\n")


def test_cpu_bf16_detection_from_the_flags():
    from backend.translator.precision import bf16_features, cpu_autocast, parse_cpu_flags

    assert "avx2" in parse_cpu_flags(EPYC) and bf16_features(parse_cpu_flags(EPYC)) == []
    assert bf16_features(parse_cpu_flags(SAPPHIRE)) == ["amx_bf16", "avx512_bf16"]
    assert parse_cpu_flags("no flags line here") == frozenset()
    assert bf16_features(parse_cpu_flags("flags : avx512f avx512_bf16")) == ["avx512_bf16"]  # Cooper Lake, Zen 4
    assert cpu_autocast("auto", parse_cpu_flags(EPYC))[0] is None
    dtype, why = cpu_autocast("auto", parse_cpu_flags(SAPPHIRE))
    assert dtype == torch.bfloat16 and "amx_bf16" in why
    assert cpu_autocast("bf16", parse_cpu_flags(EPYC))[0] == torch.bfloat16  # forced either way
    assert cpu_autocast("none", parse_cpu_flags(SAPPHIRE))[0] is None


@pytest.mark.parametrize("flags, cpu_amp, dtype", [
    ("fpu avx2 fma", "auto", None), ("avx512f amx_bf16 amx_tile", "auto", torch.bfloat16),
    ("avx512f avx512_bf16", "auto", torch.bfloat16), ("avx2", "bf16", torch.bfloat16), ("amx_bf16", "none", None),
])
def test_trainer_picks_cpu_precision_from_the_flags(monkeypatch, flags, cpu_amp, dtype):
    """LAPSYNTH_CPU_FLAGS stands in for /proc/cpuinfo (the Trainer is only built: a bf16 step on a CPU
    without bf16 instructions takes minutes)."""
    monkeypatch.setenv("LAPSYNTH_CPU_FLAGS", flags)
    trainer = Trainer(tiny_cfg(cpu_amp=cpu_amp), torch.device("cpu"))
    assert trainer.amp_dtype == dtype, trainer.precision
    assert ("bf16" if dtype else "float32") in trainer.precision
    assert not any(s.is_enabled() for s in trainer.scalers.values())
    assert Trainer(tiny_cfg(cpu_amp=cpu_amp), torch.device("cpu"), cpu_flags=frozenset()).amp_dtype == (
        None if cpu_amp != "bf16" else torch.bfloat16)


def test_this_machines_flags_are_read_from_proc_cpuinfo(monkeypatch):
    from backend.translator.precision import cpu_flags

    monkeypatch.delenv("LAPSYNTH_CPU_FLAGS", raising=False)
    if os.path.exists("/proc/cpuinfo"):
        text = open("/proc/cpuinfo").read()
        assert cpu_flags() == frozenset(next(ln for ln in text.splitlines() if ln.startswith(("flags", "Features")))
                                        .split(":", 1)[1].split())
    assert cpu_flags("/nonexistent/cpuinfo") == frozenset()


def test_every_default_names_its_source():
    """Issue 18: defaults were called 'the paper's values' that the paper does not give. Every leaf key
    names where its default comes from (config.SOURCES), and configs/default.yaml shows it."""
    from dataclasses import fields, is_dataclass

    from backend.translator.config import SOURCES

    def leaves(obj, prefix=""):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                yield from leaves(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", f.metadata.get("src", "")

    yaml_text = (ROOT / "configs" / "default.yaml").read_text()
    doc = (ROOT / "docs" / "training.md").read_text()
    for key, src in leaves(TrainConfig()):
        assert src.split(":")[0].split(" ")[0].rstrip(",") in SOURCES, (key, src)
        assert f"[{src}]" in yaml_text, key
        assert f"`{key}`" in doc or f"`{key.split('.')[-1]}`" in doc or key.split(".")[0] in ("gen", "dis"), key


def test_a_linear_content_code_takes_negative_values_and_the_relu_one_none():
    """gen.content_activ: the descendant's ReLU zeroes part of the 8-channel code; `none` keeps it signed."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    codes = {}
    for activ in ("relu", "none"):
        cfg = tiny_cfg()
        cfg.gen.content_activ = activ
        torch.manual_seed(0)
        codes[activ] = build_networks(cfg.validate())["gen_a"].enc(x)
    assert codes["relu"].min() >= 0 and (codes["relu"] == 0).float().mean() > 0.1
    assert codes["none"].min() < 0 and (codes["none"] == 0).float().mean() < 0.01
    with pytest.raises(ConfigError, match=r"^gen.content_activ='sigmoid'"):
        load_config(TINY, ["gen.content_activ=sigmoid"])


def test_native_render_scale_crops_render_pixels_as_translation_sees_them():
    """aug.render_scale native: a render crop is a window of the render's own pixels (no resampling), at a
    whole-pixel offset; `random` magnifies by 1 to 1/min_scale, and real frames are always random."""
    from backend.translator.data import augment

    rng0 = np.random.default_rng(0)
    a = rng0.integers(0, 256, (80, 120, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    cfg = tiny_cfg()
    aug = cfg.aug
    aug.rotation_p, aug.color_jitter, aug.circular_mask_p = 0.0, False, 0.0
    aug.render_scale = "native"
    seen = set()
    for seed in range(8):
        out = augment(img, np.random.default_rng(seed), 64, 96, aug, is_render=True)
        hits = [(y, x) for y in range(80 - 64 + 1) for x in range(120 - 96 + 1)
                if np.array_equal(out, a[y:y + 64, x:x + 96])]
        assert len(hits) == 1, seed
        seen.add(hits[0])
    assert len(seen) > 4  # the offset is random
    real = augment(img, np.random.default_rng(1), 64, 96, aug, is_render=False)
    assert not any(np.array_equal(real, a[y:y + 64, x:x + 96]) for y in range(17) for x in range(25))
    aug.render_scale = "random"
    out = augment(img, np.random.default_rng(1), 64, 96, aug, is_render=True)
    assert not any(np.array_equal(out, a[y:y + 64, x:x + 96]) for y in range(17) for x in range(25))


def test_checkpoints_from_before_a_later_key_resume_and_load_with_the_value_they_had(tmp_path, monkeypatch):
    """A key added later must not make older checkpoints unresumable (a nested key used to compare as
    None), and where its default changed, the checkpoint keeps the value it was trained with."""
    from backend.translator import config as config_module
    from backend.translator.config import saved_config

    folder = tmp_path / "checkpoints"
    cfg = tiny_cfg()
    old = cfg.to_dict()
    del old["gen"]["content_activ"], old["aug"]["render_scale"]
    ckpt.save(folder, 2, {"iteration": 2, "config": old, "world": 1, "rng": [ckpt.rng_state()]})
    monkeypatch.setattr(config_module, "LATER_KEYS", {})  # no default changed: the defaults apply
    assert resume_state(folder, cfg, "cpu", True)[0]["iteration"] == 2
    now = cfg.gen.content_activ
    then = "none" if now == "relu" else "relu"
    monkeypatch.setattr(config_module, "LATER_KEYS", {"gen.content_activ": then})  # the default changed
    assert saved_config(old).gen.content_activ == then and old["gen"].get("content_activ") is None
    with pytest.raises(ConfigError, match=rf"gen.content_activ: '{then}' in the checkpoint, '{now}' now"):
        resume_state(folder, cfg, "cpu", True)
    cfg.gen.content_activ = then
    assert resume_state(folder, cfg, "cpu", True)[0]["iteration"] == 2
