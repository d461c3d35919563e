"""--device: one meaning for every backend program; a GPU that is not there is a clear error."""
import subprocess
import sys

import pytest
import torch

from backend.common.devices import DeviceError, resolve_device
from conftest import ROOT


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for text in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=f"--device {text}: no usable CUDA GPU here"):
            resolve_device(text)
    for text in ("gpu", "cuda:x", ""):
        with pytest.raises(DeviceError, match="not a device"):
            resolve_device(text)


def test_cuda_gets_an_index_from_local_rank(monkeypatch):
    # torch.cuda.set_device refuses an index-less "cuda"; torchrun's LOCAL_RANK picks the GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda", 0) == resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1) == resolve_device("auto")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="GPU 2 asked for, 2 visible"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "3")  # more processes per node than GPUs
    with pytest.raises(DeviceError, match="--device auto: GPU 3 asked for, 2 visible"):
        resolve_device("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("module, args", [
    ("backend.train", ["--renders", "{tmp}/A", "--real", "{tmp}", "--out", "{tmp}/run"]),
    ("backend.translate", ["--checkpoint", "{tmp}/none.pt", "--data", "{tmp}/A"]),
    ("backend.segment", ["train", "--regime", "real", "--real-images", "{tmp}", "--real-masks", "{tmp}",
                         "--out", "{tmp}/seg.pt"]),
    ("backend.evaluate", ["--data", "{tmp}/A", "--out", "{tmp}/q"]),
])
def test_programs_refuse_a_missing_gpu_and_write_nothing(tmp_path, module, args):
    proc = subprocess.run([sys.executable, "-m", module, *[a.format(tmp=tmp_path) for a in args], "--device", "cuda"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"python -m {module}: error: --device cuda: no usable CUDA GPU here" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
