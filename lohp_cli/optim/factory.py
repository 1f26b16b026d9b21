"""Build the real optimizers lohp collects trajectories with, and take one training step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lohp_cli.config import OPTIMIZERS, OptimizersConfig
from lohp_cli.errors import ConfigError
from lohp_cli.optim.sam import SAM, bn_frozen


def _sgd_kwargs(cfg: OptimizersConfig) -> dict[str, Any]:
    c = cfg.sgd
    return dict(lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)


def _adam(cfg: OptimizersConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    c = cfg.adam
    cls = torch.optim.AdamW if c.decoupled else torch.optim.Adam
    return cls, dict(lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)


def optimizer_hparams(name: str, cfg: OptimizersConfig) -> dict[str, Any]:
    """Every hyperparameter that shapes ``name``'s trajectory (recorded in each run's attrs)."""
    if name == "sgd":
        return {"optimizer": "sgd", **cfg.sgd.model_dump(mode="json")}
    if name == "adam":
        return {"optimizer": "adam", **cfg.adam.model_dump(mode="json")}
    if name == "sam":
        base = cfg.sgd if cfg.sam.base == "sgd" else cfg.adam
        return {
            "optimizer": "sam",
            **cfg.sam.model_dump(mode="json"),
            "base_hparams": base.model_dump(mode="json"),
            "bn_running_stats": "first pass only",
        }
    raise ConfigError(f"Unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}.")


def build_optimizer(name: str, params, cfg: OptimizersConfig) -> torch.optim.Optimizer:
    """An optimizer over ``params`` configured from ``cfg``."""
    if name == "sgd":
        return torch.optim.SGD(params, **_sgd_kwargs(cfg))
    if name == "adam":
        cls, kw = _adam(cfg)
        return cls(params, **kw)
    if name == "sam":
        if cfg.sam.base == "sgd":
            base, kw = torch.optim.SGD, _sgd_kwargs(cfg)
        else:
            base, kw = _adam(cfg)
        return SAM(params, base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, **kw)
    raise ConfigError(f"Unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}.")


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a minibatch; returns (loss, accuracy) of the weights before the step.

    SAM takes its two passes here; its second pass leaves batch-norm running statistics alone.
    """
    logits = model(xb)  # [B, classes]
    loss = nn.functional.cross_entropy(logits, yb)
    acc = (logits.argmax(1) == yb).float().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if isinstance(opt, SAM):
        opt.first_step()
        opt.zero_grad(set_to_none=True)
        with bn_frozen(model):
            nn.functional.cross_entropy(model(xb), yb).backward()
        opt.second_step()
    else:
        opt.step()
    return loss.detach(), acc.detach()
