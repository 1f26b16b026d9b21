"""The optimizers collect runs and evaluate compares, and their hyperparameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lohp_cli.config.base import ConfigModel

OPTIMIZERS = ("sgd", "adam", "sam")


def check_optimizer_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Raise ``ValueError`` naming the first unknown optimizer."""
    unknown = [o for o in names if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    return names


class SGDConfig(ConfigModel):
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Heavy-ball momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0")
        return self


class AdamConfig(ConfigModel):
    lr: float = Field(0.01, gt=0, description="Learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam (beta1, beta2).")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    decoupled: bool = Field(False, description="Decoupled weight decay (AdamW).")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {list(v)}")
        return v


class SAMConfig(ConfigModel):
    base: Literal["sgd", "adam"] = Field(
        "sgd", description="Base optimizer; its hyperparameters come from that optimizer's section."
    )
    rho: float = Field(0.05, gt=0, description="Neighbourhood radius of the ascent step.")
    adaptive: bool = Field(False, description="ASAM: scale the ascent step by |w|.")


class OptimizersConfig(ConfigModel):
    sgd: SGDConfig = Field(default_factory=SGDConfig, description="SGD hyperparameters.")
    adam: AdamConfig = Field(default_factory=AdamConfig, description="Adam hyperparameters.")
    sam: SAMConfig = Field(default_factory=SAMConfig, description="SAM hyperparameters.")
