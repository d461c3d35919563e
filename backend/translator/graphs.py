"""One translator update (forward, losses, gradients) captured as a CUDA graph and replayed (`cuda_graphs`).

At the paper's batch of 1 a training step is a few milliseconds of GPU arithmetic spread over thousands
of small kernels; both NVlabs/MUNIT and our eager trainer spend most of the step launching them from
Python (docs/evaluation.md, GPU runs). A CUDA graph launches the whole update at once.

What is captured: the update's forward pass, its loss terms, the gradients of its own parameters
(torch.autograd.grad, so nothing accumulates into another optimiser's .grad), and one vector of the
log values with a finiteness flag last. What stays eager: the optimiser step. It is a few fused kernels,
and it must be skipped when the loss or a gradient is not finite, exactly as the eager path skips it;
the flag is read in the same host sync as the log values.

A graph is captured for one set of input shapes after WARMUP eager updates at those shapes (cuDNN
autotuning and lazy initialisation happen there, on the stream the capture uses). An input of other
shapes (a short last batch) runs eagerly. Randomness inside the graph (encoder noise, the style draw)
comes from the default CUDA generator, which advances on every replay.

`emulate=True` runs the same code path without CUDA: "capture" records nothing and "replay" re-runs the
function into the static buffers. Tests use it on the CPU to check the restructured update (gradients
by torch.autograd.grad, static inputs and outputs, the flag) against the eager one.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

WARMUP = 3  # eager updates at a shape before it is captured


def _shape_key(inputs: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.stride()) for t in inputs)


class GraphedUpdate:
    """losses(*inputs) -> (total, terms: dict of scalar tensors, extras: tuple of tensors to hand on).

    run(inputs) returns (values, grads, extras) for the current inputs, where values is a float32 vector
    [*terms, total, finite]; grads[i] is the gradient of params[i] (zeros where the update does not reach
    it, and used[i] False). None means: not captured for these shapes yet, run the update eagerly (and count
    a warm-up). A capture that fails raises RuntimeError naming the first error."""

    def __init__(self, losses: Callable, params: list[torch.nn.Parameter], device: torch.device,
                 emulate: bool = False, stream=None):
        self.losses, self.params, self.device, self.emulate = losses, params, device, emulate
        self.graph = None
        self.key = None
        self.warmups: dict[tuple, int] = {}
        self.static_in: tuple[torch.Tensor, ...] = ()
        self.out = None  # (values, grads, extras, names)
        self.stream = stream  # the capture's stream (CUDA), shared by a trainer's updates
        self.failed: str | None = None  # why a capture failed (then run() raised)
        self.used: list[bool] = []  # which params the update reaches

    # the eager warm-ups run on the capture's stream, so that its per-stream lazy state (cuBLAS workspace,
    # cuDNN plans) exists before capture
    def eager_context(self):
        if self.emulate or self.stream is None:
            return contextlib.nullcontext()
        return _on_stream(self.stream)

    def names(self) -> list[str]:
        return self.out[3] if self.out else []

    def _compute(self, inputs):
        total, terms, extras = self.losses(*inputs)
        grads = torch.autograd.grad(total.float(), self.params, allow_unused=True)
        # a parameter this update does not reach keeps no gradient, as in eager training (Adam then skips it)
        self.used = [g is not None for g in grads]
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        norms = torch.stack(torch._foreach_norm(grads, float("inf")))
        finite = torch.isfinite(total.detach().float() + norms.float().sum())
        values = torch.stack([v.detach().float() for v in terms.values()]
                             + [total.detach().float(), finite.float()])
        extras = tuple(e.detach() for e in extras)
        return values, grads, extras, list(terms)

    def run(self, inputs: tuple[torch.Tensor, ...]):
        if self.failed:
            raise RuntimeError(f"cuda_graphs: an earlier capture failed ({self.failed}); train with cuda_graphs: false")
        key = _shape_key(inputs)
        if key != self.key:
            seen = self.warmups.get(key, 0)
            if seen < WARMUP:
                self.warmups[key] = seen + 1
                return None
            self._capture(inputs, key)
        for dst, src in zip(self.static_in, inputs):
            dst.copy_(src)
        if self.emulate:
            self.out = self._compute(self.static_in)
        else:
            self.graph.replay()
        values, grads, extras, _ = self.out
        return values, grads, extras

    def _capture(self, inputs, key) -> None:
        # filled by run() before every replay (capturing runs no kernel)
        self.static_in = tuple(torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                               for t in inputs)
        if self.emulate:
            self.graph, self.key = "emulated", key
            return
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            # thread_local: the data loader's pin-memory thread may call CUDA while this thread captures
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                out = self._compute(self.static_in)
        except Exception as e:
            # An operation that cannot be captured (a host sync, say). The capture's end then raises too, and
            # the first error is its context. No eager fallback: a broken capture leaves the CUDA generator in
            # capture mode, and every later random draw of the process fails.
            first = e.__context__ or e
            self.failed = f"{type(first).__name__}: {first}".splitlines()[0][:300]
            raise RuntimeError(f"cuda_graphs: this update could not be captured as a CUDA graph ({self.failed}); "
                               f"train with cuda_graphs: false") from first
        self.graph, self.out, self.key = graph, out, key


@contextlib.contextmanager
def _on_stream(stream):
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)
