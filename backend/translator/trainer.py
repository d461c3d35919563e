"""One training iteration of the asymmetric MUNIT: discriminator update, generator update, lr step.

`gen_update` reads like the loss equation of the method (docs/training.md); every weight is the
config key of the same name.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from . import losses as L
from .config import TrainConfig
from .graphs import GraphedUpdate
from .networks import build_networks
from .precision import DTYPES, autocast_dtype


class TrainingDiverged(RuntimeError):
    pass


def _unwrap(m: nn.Module) -> nn.Module:
    """The plain network inside DistributedDataParallel and/or torch.compile wrappers, so that
    checkpoints hold the same keys however the run was made."""
    while True:
        if isinstance(m, torch.nn.parallel.DistributedDataParallel):
            m = m.module
        elif hasattr(m, "_orig_mod"):
            m = m._orig_mod
        else:
            return m


class Trainer:
    def __init__(self, cfg: TrainConfig, device: torch.device, wrap=None, amp_on_cpu: bool = False, cpu_flags=None,
                 graph_emulation: bool = False):
        """The autocast precision is cfg.amp on CUDA and cfg.cpu_amp on the CPU (auto: bf16 only where the
        CPU has bf16 matrix instructions, judged from `cpu_flags`, default this machine's; precision.py).
        amp_on_cpu: honour cfg.amp (fp16 included) on the CPU instead, so tests exercise the CUDA
        mixed-precision path (casts, fp16 scaler, overflow skips) on machines without CUDA.
        graph_emulation: take cfg.cuda_graphs's code path on the CPU too, without capturing (graphs.py), so
        tests check it on machines without CUDA."""
        self.cfg, self.device = cfg, device
        nets = self.build_networks(cfg)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if device.type == "cuda":  # fixed crop size: let cuDNN time its algorithms once (NVlabs/MUNIT does too)
            torch.backends.cudnn.benchmark = True
        for m in nets.values():
            m.to(device, memory_format=self.memory_format)
        if cfg.compile:
            nets = {k: torch.compile(m) for k, m in nets.items()}
        if wrap is not None:  # DistributedDataParallel
            nets = {k: wrap(m) for k, m in nets.items()}
        for name, m in nets.items():  # self.gen_a, self.dis_b, ... (cut.py: self.gen, self.heads, self.dis)
            setattr(self, name, m)
        self.nets = nets
        betas = (cfg.beta1, cfg.beta2)
        gen_params, dis_params = self.params("gen"), self.params("dis")
        # fused Adam on CUDA: one kernel per step instead of a handful per parameter tensor (same maths)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.gen_opt = torch.optim.Adam(gen_params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **fused)
        self.dis_opt = torch.optim.Adam(dis_params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **fused)
        gamma = cfg.gamma if cfg.lr_policy == "step" else 1.0
        self.gen_sched = torch.optim.lr_scheduler.StepLR(self.gen_opt, cfg.step_size, gamma)
        self.dis_sched = torch.optim.lr_scheduler.StepLR(self.dis_opt, cfg.step_size, gamma)
        if amp_on_cpu and device.type == "cpu":
            self.amp_dtype, self.precision = DTYPES[cfg.amp], f"{cfg.amp} (amp on the CPU, a test hook)"
        else:
            self.amp_dtype, self.precision = autocast_dtype(device, cfg.amp, cfg.cpu_amp, cpu_flags)
        # fp16: one loss scaler per optimiser, each updated once per iteration after its own step (one shared
        # scaler was updated twice an iteration, and a generator overflow lowered the discriminator's scale)
        fp16 = self.amp_dtype == torch.float16
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=fp16) for name in ("dis", "gen")}
        # a skipped (non-finite) step leaves the optimiser unstepped on purpose; torch would warn about it
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        self.bad_steps = 0  # non-finite steps in a row
        self.skipped_total = 0
        self.fakes = None  # the last gen_update's translations, detached (dis_fakes: reuse)
        self.graphs = self._make_graphs(cfg, device, wrap, graph_emulation)

    # ------------------------------------------------------------------ helpers

    GEN_NETS, DIS_NETS = ("gen_a", "gen_b"), ("dis_a", "dis_b")  # what each optimiser trains

    def build_networks(self, cfg: TrainConfig) -> dict[str, nn.Module]:
        return build_networks(cfg)

    def params(self, which: str) -> list[nn.Parameter]:
        names = self.GEN_NETS if which == "gen" else self.DIS_NETS
        return [p for name in names for p in self.nets[name].parameters()]

    def _make_graphs(self, cfg: TrainConfig, device: torch.device, wrap, emulate: bool) -> dict | None:
        """cuda_graphs: one GraphedUpdate per optimiser (graphs.py), on CUDA in one process. Elsewhere the key
        is ignored with a note (a config may move between machines)."""
        self.graph_note = None
        if not cfg.cuda_graphs:
            return None
        if device.type != "cuda" and not emulate:
            self.graph_note = f"cuda_graphs ignored on {device.type}: updates run eagerly"
            return None
        if wrap is not None:  # DDP's gradient hooks all-reduce outside any graph we capture
            self.graph_note = "cuda_graphs ignored under torchrun (DistributedDataParallel): updates run eagerly"
            return None
        stream = None if emulate else torch.cuda.Stream(device)  # one for both: warm-up fakes pass between them
        return {which: GraphedUpdate(getattr(self, f"_{which}_losses"), self.params(which), device, emulate, stream)
                for which in ("gen", "dis")}

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # autocast's cache of cast weights would be baked into a captured graph: off with cuda_graphs
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype,
                              cache_enabled=not self.cfg.cuda_graphs)

    def _style_for_a_to_b(self, real_style: torch.Tensor) -> torch.Tensor:
        """s ~ N(0, I), replaced by the real image's (detached) style with probability style_replace_p."""
        s = torch.randn_like(real_style)
        replace = torch.rand(s.shape[0], 1, device=s.device) < self.cfg.style_replace_p
        return torch.where(replace, real_style.detach(), s)

    def _step(self, loss: torch.Tensor, opt, params, scaler: torch.amp.GradScaler) -> bool:
        """Backward and step unless the loss or a gradient is not finite (then nothing changes but the
        scale of `scaler`, this optimiser's own, which is updated exactly once per call)."""
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad.detach() for p in params if p.grad is not None]
        # one fused norm over all gradients and one host sync: inf or nan anywhere makes the sum non-finite
        norms = torch.stack(torch._foreach_norm(grads, float("inf"))) if grads else loss.new_zeros(1)
        finite = bool(torch.isfinite(loss.detach().float() + norms.float().sum()))
        if not finite:
            opt.zero_grad(set_to_none=True)
            scaler.update()
            return False
        scaler.step(opt)
        scaler.update()
        return True

    def _update(self, which: str, inputs: tuple) -> tuple[bool, dict, float, tuple]:
        """One optimiser's update: its losses (self._gen_losses / self._dis_losses), gradients and step.
        Returns (stepped, {term: value}, total, extras); extras are what the losses hand on (the translations).
        With cuda_graphs the losses and gradients replay from a captured graph (graphs.py) and the step
        follows here, taken only when the graph's finiteness flag says so."""
        opt, params, scaler = (self.gen_opt, self.params("gen"), self.scalers["gen"]) if which == "gen" else \
            (self.dis_opt, self.params("dis"), self.scalers["dis"])
        graph = self.graphs[which] if self.graphs else None
        replayed = graph.run(inputs) if graph is not None else None
        if replayed is None:  # eager (no graphs, a warm-up, or a shape not captured)
            with graph.eager_context() if graph is not None else contextlib.nullcontext():
                total, terms, extras = getattr(self, f"_{which}_losses")(*inputs)
                ok = self._step(total.float(), opt, params, scaler)
                values = torch.stack([v.detach().float() for v in terms.values()] + [total.detach().float()]).tolist()
            names = list(terms)
        else:
            flat, grads, extras = replayed
            values = flat.tolist()  # one host sync: the log values and the finiteness flag
            ok = values.pop() == 1.0
            names = graph.names()
            if ok:
                for p, g, used in zip(params, grads, graph.used):
                    p.grad = g if used else None
                opt.step()
            opt.zero_grad(set_to_none=True)  # the graph owns those tensors; the next replay rewrites them
        return ok, dict(zip(names, values[:-1])), values[-1], extras

    # ------------------------------------------------------------------ updates

    def _layout(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return [x.contiguous(memory_format=self.memory_format) for x in xs]

    def translations(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_ab, x_ba) made anew without gradients, for the discriminators (dis_fakes: fresh)."""
        with torch.no_grad(), self.autocast():
            c_a = self.gen_a(x_a, mode="encode")
            c_b, s_b = self.gen_b(x_b, mode="encode")
            x_ab = self.gen_b(content=c_a, style=self._style_for_a_to_b(s_b.float()), mode="decode")
            x_ba = self.gen_a(content=c_b, mode="decode")
        return x_ab, x_ba

    def _dis_losses(self, x_a: torch.Tensor, x_b: torch.Tensor, *fakes: torch.Tensor):
        """-> (total, terms, ()); fakes: the generator update's (x_ab, x_ba), or none to make them anew."""
        x_ab, x_ba = fakes if fakes else self.translations(x_a, x_b)
        with self.autocast():
            loss_a = L.lsgan_dis(self.dis_a(x_a), self.dis_a(x_ba.detach()))
            loss_b = L.lsgan_dis(self.dis_b(x_b), self.dis_b(x_ab.detach()))
            total = self.cfg.gan_w * (loss_a + loss_b)
        return total, {"a": loss_a, "b": loss_b}, ()

    def dis_update(self, x_a: torch.Tensor, x_b: torch.Tensor, fakes: tuple | None = None) -> dict:
        """fakes: the generator update's own translations (dis_fakes: reuse); None makes them anew."""
        x_a, x_b = self._layout(x_a, x_b)
        ok, terms, total, _ = self._update("dis", (x_a, x_b, *(fakes or ())))
        return {"dis/total": total, **{f"dis/{k}": v for k, v in terms.items()}, "dis/ok": ok}

    def _gen_losses(self, x_a: torch.Tensor, x_b: torch.Tensor):
        """-> (total, terms, (x_ab, x_ba)): the loss equation of the method (docs/training.md)."""
        cfg = self.cfg
        no_sync = [m.no_sync() for m in (self.dis_a, self.dis_b) if hasattr(m, "no_sync")]
        with contextlib.ExitStack() as stack, self.autocast():
            for ctx in no_sync:  # D gradients of this pass are discarded: skip their all-reduce
                stack.enter_context(ctx)
            c_a = self.gen_a(x_a, mode="encode")
            c_b, s_b = self.gen_b(x_b, mode="encode")
            s_ab = self._style_for_a_to_b(s_b.float()).to(s_b.dtype)
            # within-domain reconstruction
            x_a_rec = self.gen_a(content=c_a, mode="decode")
            x_b_rec = self.gen_b(content=c_b, style=s_b, mode="decode")
            # translation
            x_ab = self.gen_b(content=c_a, style=s_ab, mode="decode")
            x_ba = self.gen_a(content=c_b, mode="decode")
            # re-encode and cycle
            c_a_rec, s_ab_rec = self.gen_b(x_ab, mode="encode")
            c_b_rec = self.gen_a(x_ba, mode="encode")
            x_aba = self.gen_a(content=c_a_rec, mode="decode")
            x_bab = self.gen_b(content=c_b_rec, style=s_b, mode="decode")
            adv_a = L.lsgan_gen(self.dis_a(x_ba))
            adv_b = L.lsgan_gen(self.dis_b(x_ab))
        terms = {
            "adv_a": adv_a, "adv_b": adv_b,
            "recon_x_a": L.recon(x_a_rec, x_a), "recon_x_b": L.recon(x_b_rec, x_b),
            "recon_c_a": L.recon(c_a_rec, c_a), "recon_c_b": L.recon(c_b_rec, c_b),
            "recon_s_b": L.recon(s_ab_rec, s_ab),
            "cyc_x_a": L.recon(x_aba, x_a), "cyc_x_b": L.recon(x_bab, x_b),
            "ms_ssim_a": L.structure_loss(x_a, x_ab), "ms_ssim_b": L.structure_loss(x_b, x_ba),
        }
        t = terms
        total = (cfg.gan_w * (t["adv_a"] + t["adv_b"])
                 + cfg.recon_x_w * (t["recon_x_a"] + t["recon_x_b"])
                 + cfg.recon_c_w * (t["recon_c_a"] + t["recon_c_b"])
                 + cfg.recon_s_w * t["recon_s_b"]
                 + cfg.recon_x_cyc_w * (t["cyc_x_a"] + t["cyc_x_b"])
                 + cfg.ms_ssim_a_w * t["ms_ssim_a"]
                 + cfg.ms_ssim_b_w * t["ms_ssim_b"])
        return total, terms, (x_ab.detach(), x_ba.detach())

    def gen_update(self, x_a: torch.Tensor, x_b: torch.Tensor) -> dict:
        x_a, x_b = self._layout(x_a, x_b)
        ok, terms, total, self.fakes = self._update("gen", (x_a, x_b))
        return {**{f"gen/{k}": v for k, v in terms.items()}, "gen/total": total, "gen/ok": ok}

    def display_rows(self, x_a: torch.Tensor, x_b: torch.Tensor) -> list[torch.Tensor]:
        """A | A->B random style | A->B real style | A recon | B | B->A | B recon (eval mode, no gradients)."""
        g_a, g_b = self.gen_a, self.gen_b
        c_a = g_a(x_a, mode="encode", noise=True)
        c_b, s_b = g_b(x_b, mode="encode", noise=True)
        s_rand = torch.randn_like(s_b)
        return [x_a, g_b(content=c_a, style=s_rand, mode="decode"), g_b(content=c_a, style=s_b, mode="decode"),
                g_a(content=c_a, mode="decode"), x_b, g_a(content=c_b, mode="decode"),
                g_b(content=c_b, style=s_b, mode="decode")]

    def step(self, x_a: torch.Tensor, x_b: torch.Tensor) -> dict:
        """One iteration. dis_fakes reuse (default): the generator update, then the discriminator update on
        the translations the generator update made (computed before its optimiser step, so the discriminator
        sees this iteration's generator, as in NVlabs/MUNIT; CycleGAN trains in this order). fresh:
        NVlabs/MUNIT's order, discriminator first on translations made anew: one more forward pass of both
        generators per iteration, without gradients."""
        for m in self.nets.values():
            m.train()
        if self.cfg.dis_fakes == "reuse":
            log = self.gen_update(x_a, x_b)
            log.update(self.dis_update(x_a, x_b, fakes=self.fakes))
        else:
            log = self.dis_update(x_a, x_b)
            log.update(self.gen_update(x_a, x_b))
        self.fakes = None  # not kept between iterations (memory; never in a checkpoint)
        self.gen_sched.step()
        self.dis_sched.step()
        if log["dis/ok"] and log["gen/ok"]:
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            self.skipped_total += 1
            if self.bad_steps >= self.cfg.nan_patience:
                raise TrainingDiverged(
                    f"{self.bad_steps} steps in a row had a non-finite loss or gradient (last: "
                    f"dis {log['dis/total']:.4g}, gen {log['gen/total']:.4g}); stopped, the last good "
                    f"checkpoint is kept; lower lr or check the data")
        log["lr"] = self.gen_opt.param_groups[0]["lr"]
        log["skipped_steps"] = self.skipped_total
        return log

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            **{k: _unwrap(m).state_dict() for k, m in self.nets.items()},
            "gen_opt": self.gen_opt.state_dict(), "dis_opt": self.dis_opt.state_dict(),
            "gen_sched": self.gen_sched.state_dict(), "dis_sched": self.dis_sched.state_dict(),
            "dis_scaler": self.scalers["dis"].state_dict(), "gen_scaler": self.scalers["gen"].state_dict(),
            "skipped_total": self.skipped_total, "bad_steps": self.bad_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.nets.items():
            _unwrap(m).load_state_dict(state[k])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.dis_opt.load_state_dict(state["dis_opt"])
        self.gen_sched.load_state_dict(state["gen_sched"])
        self.dis_sched.load_state_dict(state["dis_sched"])
        for name, scaler in self.scalers.items():
            # checkpoints before the split hold one shared "scaler": both optimisers continue from its scale
            saved = state.get(f"{name}_scaler", state.get("scaler"))
            if saved:
                scaler.load_state_dict(saved)
        self.skipped_total = int(state.get("skipped_total", 0))
        self.bad_steps = int(state.get("bad_steps", 0))  # non-finite steps in a row count across a resume

