"""Which trainer a config's `model` names: the method's asymmetric MUNIT (trainer.py) or the one-sided
contrastive translator (cut.py). Apart from both, so neither imports the other's module."""
from __future__ import annotations

import torch

from .config import TrainConfig
from .cut import CutTrainer
from .trainer import Trainer

TRAINERS = {"munit": Trainer, "cut": CutTrainer}  # the keys are config.MODELS (a test keeps them equal)


def make_trainer(cfg: TrainConfig, device: torch.device, wrap=None, **kw) -> Trainer:
    return TRAINERS[cfg.model](cfg, device, wrap, **kw)
