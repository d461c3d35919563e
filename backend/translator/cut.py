"""A one-sided translator (`model: cut`): one generator render -> real, trained with a patch contrastive loss.

After the idea of contrastive unpaired translation (Park et al., ECCV 2020), written for this project:
- the generator is generator A's architecture (content encoder with the method's input noise against
  steganography and the 8-channel squeeze, instance-norm decoder), trained to map renders to real frames;
- PatchNCE: a translation's features at several content-encoder taps must match the render's features at
  the same places better than at other places of the same image (InfoNCE over `nce_patches` random places
  per tap, a small projection head per tap, temperature `nce_t`); with `nce_idt_w` the same on a real frame
  and its own translation (the generator should leave real frames alone);
- the method's brightness MS-SSIM between render and translation (`ms_ssim_a_w`), and an LSGAN loss with
  one multi-scale discriminator on real frames against translations.
No cycle, no second generator, no style code: several outputs per render come from the encoder noise
seed only (docs/training.md, One-sided model).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .config import TrainConfig
from .networks import GeneratorA, MultiScaleDiscriminator, _noisy, init_weights
from .trainer import Trainer


class CutGenerator(GeneratorA):
    """Generator A's networks (same state-dict keys) with two more modes for the contrastive loss:
    "encode_taps" -> (features at `taps`, content code) and "taps" -> (features, None), which stops at
    the deepest tap."""

    def forward(self, x=None, content=None, mode: str = "encode", noise: bool | None = None,
                taps: list[int] | None = None):
        if mode in ("encode_taps", "taps"):
            noise = self.training if noise is None else noise
            return self.enc.taps(_noisy(x, self.noise_std, noise), taps, full=mode == "encode_taps")
        return super().forward(x, content, mode, noise)


class PatchHeads(nn.Module):
    """One projection head per tap: C -> dim -> dim (ReLU between), then unit length. Built from the
    known tap widths (no lazy layers), so DDP and checkpoints see every parameter from the start."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(c, dim), nn.ReLU(), nn.Linear(dim, dim))
                                    for c in channels])

    def forward(self, feats: list[torch.Tensor], places: list[torch.Tensor]) -> list[torch.Tensor]:
        """feats[i] (B, C, H, W) sampled at the flat positions places[i] (P,) -> (B, P, dim), unit rows."""
        out = []
        for head, f, idx in zip(self.heads, feats, places):
            patches = f.flatten(2)[:, :, idx].transpose(1, 2)  # (B, P, C)
            out.append(F.normalize(head(patches).float(), dim=-1))
        return out


def build_cut_networks(cfg: TrainConfig) -> dict[str, nn.Module]:
    gen = CutGenerator(cfg.gen, cfg.noise_std)
    channels = gen.enc.tap_channels(cfg.input_dim_a)
    heads = PatchHeads([channels[i] for i in cfg.cut.layer_ids()], cfg.cut.nce_mlp_dim)
    dis = MultiScaleDiscriminator(cfg.dis)
    init_weights(gen, cfg.init)
    init_weights(heads, cfg.init)
    init_weights(dis, "gaussian")
    return {"gen": gen, "heads": heads, "dis": dis}


class CutTrainer(Trainer):
    """The one-sided model's iteration, with the MUNIT Trainer's machinery (optimisers, schedulers, fp16
    scalers, non-finite skips, autocast, DDP wrapping, state dict)."""

    GEN_NETS, DIS_NETS = ("gen", "heads"), ("dis",)  # the heads learn with the generator's optimiser

    def build_networks(self, cfg: TrainConfig) -> dict[str, nn.Module]:
        return build_cut_networks(cfg)

    def _places(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """nce_patches random positions per tap (all of them where the map is smaller), the same for every
        image of the batch and for render and translation (drawn from the global RNG: resumable)."""
        n = self.cfg.cut.nce_patches
        return [torch.randperm(f.shape[-2] * f.shape[-1], device=f.device)[:n] for f in feats]

    def _nce(self, src_feats, out_feats) -> torch.Tensor:
        """Per image: PatchNCE averaged over taps (queries: the translation's patches; keys: the source's)."""
        places = self._places(src_feats)
        keys = self.heads(src_feats, places)
        queries = self.heads(out_feats, places)
        per_tap = [L.patch_nce(q, k, self.cfg.cut.nce_t) for q, k in zip(queries, keys)]
        return torch.stack(per_tap).mean(dim=0)

    def translate(self, x_a: torch.Tensor, noise: bool | None = None) -> torch.Tensor:
        return self.gen(content=self.gen(x_a, mode="encode", noise=noise), mode="decode")

    def _dis_losses(self, x_a: torch.Tensor, x_b: torch.Tensor, *fakes: torch.Tensor):
        """-> (total, terms, ()); fakes: (x_ab,) from the generator update (dis_fakes: reuse), or none."""
        if fakes:
            (x_ab,) = fakes
        else:
            with torch.no_grad(), self.autocast():
                x_ab = self.translate(x_a)
        with self.autocast():
            total = self.cfg.gan_w * L.lsgan_dis(self.dis(x_b), self.dis(x_ab.detach()))
        return total, {}, ()

    def dis_update(self, x_a: torch.Tensor, x_b: torch.Tensor, fakes: tuple | None = None) -> dict:
        x_a, x_b = self._layout(x_a, x_b)
        ok, _, total, _ = self._update("dis", (x_a, x_b, *(fakes or ())))
        return {"dis/total": total, "dis/b": total, "dis/ok": ok}

    def _gen_losses(self, x_a: torch.Tensor, x_b: torch.Tensor):
        cfg, c = self.cfg, self.cfg.cut
        n, idt = x_a.shape[0], c.nce_idt_w > 0
        taps = c.layer_ids()
        with contextlib.ExitStack() as stack, self.autocast():
            if hasattr(self.dis, "no_sync"):  # D gradients of this pass are discarded: skip their all-reduce
                stack.enter_context(self.dis.no_sync())
            # renders and (for the identity term) real frames in one batch: instance norm keeps them apart
            x = torch.cat([x_a, x_b]) if idt else x_a
            src_feats, content = self.gen(x, mode="encode_taps", taps=taps)
            out = self.gen(content=content, mode="decode")
            out_feats, _ = self.gen(out, mode="taps", taps=taps)
            x_ab = out[:n]
            adv = L.lsgan_gen(self.dis(x_ab))
            nce = self._nce(src_feats, out_feats)
        terms = {"adv": adv, "nce": nce[:n].mean(), "ms_ssim": L.structure_loss(x_a, x_ab)}
        if idt:
            terms["nce_idt"] = nce[n:].mean()
        total = (cfg.gan_w * terms["adv"] + c.nce_w * terms["nce"] + cfg.ms_ssim_a_w * terms["ms_ssim"]
                 + (c.nce_idt_w * terms["nce_idt"] if idt else 0.0))
        return total, terms, (x_ab.detach(),)

    def gen_update(self, x_a: torch.Tensor, x_b: torch.Tensor) -> dict:
        x_a, x_b = self._layout(x_a, x_b)
        ok, terms, total, self.fakes = self._update("gen", (x_a, x_b))
        return {**{f"gen/{k}": v for k, v in terms.items()}, "gen/total": total, "gen/ok": ok}

    def display_rows(self, x_a: torch.Tensor, x_b: torch.Tensor) -> list[torch.Tensor]:
        """A | A->B (one noise draw) | A->B (another) | B | B->B (what it does to a real frame)."""
        return [x_a, self.translate(x_a, True), self.translate(x_a, True), x_b, self.translate(x_b, True)]
