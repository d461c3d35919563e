"""The segmenter's training recipe (issue 16): schedule, Dice + cross-entropy, rare-class sampling, autocast
choice, exact resume, and the flags' refusals. Tiny sizes: a 1x1-conv stand-in network where the recipe, not
TernausNet, is under test."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from backend.common.precision import bf16_autocast
from backend.segmenter.data import TrainFrames, rare_pools, read_target, synthetic_samples
from backend.segmenter.labels import IGNORE, PRESETS
from backend.segmenter.protocol import precision_name
from backend.segmenter.recipe import (
    FINAL_LR_FRACTION,
    RARE_CLASSES,
    RARE_MIN_SHARE,
    learning_rate,
    segmentation_loss,
    soft_dice_loss,
)
from backend.segmenter.training import TrainOptions, train_model

LAPSYNTH = PRESETS["lapsynth"]


def test_cosine_schedule_values_at_known_iterations():
    lr, n = 1e-3, 100
    at = [learning_rate(i, n, lr, "cosine", 0.1) for i in range(1, n + 1)]
    assert at[0] == pytest.approx(lr / 10) and at[4] == pytest.approx(lr / 2)  # linear warm-up over 10 steps
    assert at[9] == pytest.approx(lr)  # peak at the end of the warm-up
    low = lr * FINAL_LR_FRACTION
    assert at[54] == pytest.approx(low + (lr - low) / 2)  # half-way through the cosine: the middle
    assert at[-1] == pytest.approx(low)  # ends at lr/100, not 0
    assert all(a > b for a, b in zip(at[9:], at[10:]))  # decreasing after the warm-up
    assert learning_rate(37, n, lr, "constant", 0.1) == lr
    assert learning_rate(1, 3, lr, "cosine", 0.0) == pytest.approx(lr)  # no warm-up: at least 1 step at the peak
    opts = TrainOptions(100, 1, lr, 0, schedule="cosine", warmup=0.1)
    assert [opts.lr_at(i) for i in range(1, 101)] == at  # a pure function: a resumed run gets the same rates


def test_dice_ce_equals_cross_entropy_plus_dice_on_a_hand_made_case():
    # 1 frame of 2x2 pixels, 3 classes; the last pixel is IGNORE.
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 5.0]], [[0.0, 1.0], [0.0, -5.0]], [[0.0, 0.0], [3.0, 9.0]]]])
    target = torch.tensor([[[0, 1], [2, IGNORE]]])
    p = torch.softmax(logits, 1)[0].numpy()  # (3, 2, 2)
    valid = [(0, 0, 0), (1, 0, 1), (2, 1, 0)]  # (class, y, x) of the 3 labelled pixels
    ce = -np.mean([np.log(p[c, y, x]) for c, y, x in valid])
    dices = []
    for c, y, x in valid:  # each class is present once; IGNORE's probabilities are left out
        prob_sum = p[c, 0, 0] + p[c, 0, 1] + p[c, 1, 0]
        dices.append((2 * p[c, y, x] + 1) / (prob_sum + 1 + 1))
    expected = ce + 1 - np.mean(dices)
    got = segmentation_loss(logits, target, "dice_ce")
    assert torch.isfinite(got) and got.item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(logits, target, "ce").item() == pytest.approx(ce, rel=1e-5)
    changed = logits.clone()
    changed[0, :, 1, 1] = torch.tensor([-30.0, 40.0, 7.0])  # only the IGNORE pixel changes
    assert segmentation_loss(changed, target, "dice_ce").item() == pytest.approx(got.item(), rel=1e-6)
    # a class absent from the targets does not count (here class 2 gone: the mean over 2 classes)
    two = torch.tensor([[[0, 1], [IGNORE, IGNORE]]])
    d2 = [(2 * p[0, 0, 0] + 1) / (p[0, 0, 0] + p[0, 0, 1] + 2), (2 * p[1, 0, 1] + 1) / (p[1, 0, 0] + p[1, 0, 1] + 2)]
    assert soft_dice_loss(logits, two).item() == pytest.approx(1 - np.mean(d2), rel=1e-5)
    # class weights weigh the cross-entropy only
    w = torch.tensor([1.0, 2.0, 0.5])
    weighted = segmentation_loss(logits, target, "dice_ce", w).item()
    ce_w = -sum(w[c].item() * np.log(p[c, y, x]) for c, y, x in valid) / sum(w[c].item() for c, _, _ in valid)
    assert weighted == pytest.approx(ce_w + 1 - np.mean(dices), rel=1e-5)
    huge = segmentation_loss(logits * 1e4, target, "dice_ce")  # saturated softmax stays finite
    assert torch.isfinite(huge)
    with pytest.raises(ValueError, match="loss 'dice'"):
        segmentation_loss(logits, target, "dice")


def test_rare_class_sampling_draws_at_the_documented_rate_and_is_deterministic():
    n = 10
    pools = {"gallbladder": [0, 1], "tool": [5]}
    frames = TrainFrames([None] * n, LAPSYNTH, (32, 32), seed=4, rare_share=0.5, pools=pools)
    draws = np.array([frames.frame_index(np.random.default_rng([4, i])) for i in range(20000)])
    # p/2 for each pool + (1 - p) x its share of the frames
    assert np.isin(draws, [0, 1]).mean() == pytest.approx(0.25 + 0.5 * 2 / n, abs=0.015)
    assert (draws == 5).mean() == pytest.approx(0.25 + 0.5 / n, abs=0.015)
    assert (draws == 7).mean() == pytest.approx(0.5 / n, abs=0.01)
    again = [frames.frame_index(np.random.default_rng([4, i])) for i in range(200)]
    assert again == draws[:200].tolist()  # from (seed, sample number) alone
    # rare_share 0 draws exactly the frames of the recipe before rare-class sampling
    plain = TrainFrames([None] * n, LAPSYNTH, (32, 32), seed=4, rare_share=0.0, pools=pools)
    old = [int(np.random.default_rng([4, i]).integers(n)) for i in range(200)]
    assert [plain.frame_index(np.random.default_rng([4, i])) for i in range(200)] == old


def test_rare_pools_hold_the_frames_that_show_each_rare_class(tiny_dataset):
    samples = synthetic_samples(tiny_dataset, "render")
    pools = rare_pools(samples, LAPSYNTH, RARE_CLASSES, RARE_MIN_SHARE)
    for name, ids in RARE_CLASSES.items():
        expected = [i for i, s in enumerate(samples)
                    if np.isin(read_target(s, LAPSYNTH), ids).mean() >= RARE_MIN_SHARE]
        assert pools.get(name, []) == expected
    assert not any(samples[i].patient == "patient07" for i in pools.get("gallbladder", []))  # it has none
    assert "gallbladder" in pools  # patient01 shows it: the pool is not empty by accident


def test_amp_auto_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("LAPSYNTH_CPU_FLAGS", "fpu avx2 amx_bf16")
    assert bf16_autocast(cpu, "auto")[0] == torch.bfloat16 and precision_name(cpu, "auto") == "bf16"
    assert bf16_autocast(cpu, "none")[0] is None
    monkeypatch.setenv("LAPSYNTH_CPU_FLAGS", "fpu avx2")
    dtype, why = bf16_autocast(cpu, "auto")
    assert dtype is None and "float32" in why and precision_name(cpu, "auto") == "float32"
    assert bf16_autocast(cpu, "bf16")[0] == torch.bfloat16  # forced
    assert bf16_autocast(torch.device("cuda"), "auto")[0] == torch.bfloat16
    assert bf16_autocast(torch.device("cuda"), "none")[0] is None
    with pytest.raises(ValueError, match="amp 'fp8'"):
        bf16_autocast(cpu, "fp8")


class _Tiny(nn.Module):
    """A stand-in segmenter: 1x1 convolutions, so that two bf16 steps take milliseconds on any CPU."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.seen = []

    def forward(self, x):
        out = self.net(x)
        self.seen.append(out.dtype)
        return out


def _train(samples, opts, resume=None, model=None, every=0, on_checkpoint=None):
    torch.manual_seed(0)
    model = model or _Tiny()
    return train_model(model, samples, LAPSYNTH, (32, 32), opts, torch.device("cpu"), lambda *_: None, "t",
                       resume=resume, on_checkpoint=on_checkpoint, every=every)


def test_training_applies_the_schedule_and_resumes_exactly(tiny_dataset):
    samples = synthetic_samples(tiny_dataset, "render")
    opts = TrainOptions(6, 2, 1e-2, 3, amp="none", warmup=0.5)
    rates, saved = {}, {}

    def checkpoint(it, net, opt):
        rates[it] = opt.param_groups[0]["lr"]
        if it == 3:
            saved["model"], saved["opt"] = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())

    full = _train(samples, opts, every=1, on_checkpoint=checkpoint)
    assert rates == {i: pytest.approx(opts.lr_at(i)) for i in range(1, 6)}
    assert rates[1] < rates[2] < rates[3] > rates[4] > rates[5]  # 3 warm-up steps, then the cosine
    assert math.isclose(rates[3], 1e-2)
    resumed_model = _Tiny()
    resumed_model.load_state_dict(saved["model"])
    resumed = _train(samples, opts, resume={"iteration": 3, "optimizer": saved["opt"]}, model=resumed_model)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same frames, same rates, same AdamW state


def test_forced_bf16_runs_two_iterations_under_autocast(tiny_dataset):
    samples = synthetic_samples(tiny_dataset, "render")
    model = _train(samples, TrainOptions(2, 1, 1e-3, 0, amp="bf16", workers=0))
    assert torch.bfloat16 in model.seen and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("prog, bad, message", [
    ("segment", ["--warmup", "1"], "argument --warmup: 1: must be >= 0 and < 1"),
    ("segment", ["--rare-share", "-0.1"], "argument --rare-share: -0.1: must be >= 0 and < 1"),
    ("segment", ["--rare-share", "lots"], "argument --rare-share: 'lots' is not a number"),
    ("segment", ["--loss", "dice"], "argument --loss: invalid choice: 'dice'"),
    ("efficacy", ["--schedule", "step"], "argument --schedule: invalid choice: 'step'"),
    ("efficacy", ["--amp", "fp16"], "argument --amp: invalid choice: 'fp16'"),
])
def test_recipe_flags_refuse_bad_values_in_one_line(capsys, prog, bad, message):
    if prog == "segment":
        from backend.segment import main
        argv = ["train", "--regime", "synthetic", "--out", "x.pt", *bad]
    else:
        from backend.efficacy import main
        argv = ["--synthetic", "a", "--real-images", "b", "--real-masks", "c", "--split", "d", "--out", "e", *bad]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1], err
