"""Config models of the L2O baselines (their train config with its ``l2o`` section, and
evaluate-l2o).

Only pydantic here, so that registering the methods (:mod:`lohp_cli.l2o`) imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lohp_cli.config import ConfigModel, Seed, TrainConfig


class QuadraticConfig(ConfigModel):
    dim: int = Field(20, ge=1, description="Optimizee size P (coordinates of x).")
    rows: int = Field(20, ge=1, description="Rows of A in f(x) = ½‖Ax − b‖² / rows.")
    log10_cond: tuple[float, float] = Field(
        (1.0, 2.0),
        description="Range of log10 of the condition number of AᵀA, drawn per task (a task is "
        "a batch of problems sharing it).",
    )
    log10_scale: tuple[float, float] = Field(
        (-0.5, 0.5), description="Range of log10 of the largest singular value of A, per task."
    )
    noise: float = Field(0.1, ge=0, description="Std of the noise in b = A x* + noise.")

    @field_validator("log10_cond", "log10_scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"range must be (low, high) with low <= high, got {list(v)}")
        return v


class LassoConfig(ConfigModel):
    dim: int = Field(20, ge=1, description="Optimizee size P (coordinates of x).")
    rows: int = Field(15, ge=1, description="Measurements: rows of A (fewer than dim: sparse).")
    sparsity: float = Field(0.2, gt=0, le=1, description="Fraction of non-zeros in x*.")
    lam: tuple[float, float] = Field(
        (0.05, 0.1), description="Range of the ℓ1 weight λ, drawn per task."
    )
    noise: float = Field(0.01, ge=0, description="Std of the noise in b = A x* + noise.")


class L2OConfig(ConfigModel):
    """Settings of the learned optimizers (methods l2o, l2o-tt, l2o-flat, m-l2o)."""

    family: Literal["store", "quadratic", "lasso"] = Field(
        "store",
        description="Optimizee family: store (the image family and target model of --store) or "
        "a synthetic family generated on the fly (no store needed).",
    )
    quadratic: QuadraticConfig = Field(
        default_factory=QuadraticConfig, description="Random ill-conditioned quadratics."
    )
    lasso: LassoConfig = Field(default_factory=LassoConfig, description="Random sparse regression.")
    arch: Literal["dm", "rnnprop"] = Field(
        "dm",
        description="dm: log-magnitude/sign gradient preprocessing (L2O-DM); rnnprop: Adam-like "
        "normalised m/v inputs and a tanh output.",
    )
    hidden: int = Field(20, ge=1, description="LSTM hidden units per coordinate.")
    layers: int = Field(2, ge=1, description="Stacked LSTM layers.")
    out_scale: float = Field(0.1, gt=0, description="Output multiplier of the update.")
    objective: Literal["ratio", "log"] = Field(
        "log",
        description="Meta-loss: mean over the unroll of f(θ_t)/f(θ_0) (ratio, L2O-DM up to "
        "scale) or of log(f(θ_t)/f(θ_0)) (log: every decade of progress counts alike, so late "
        "steps near the optimum still get a gradient).",
    )
    horizon: int = Field(100, ge=1, description="Optimizee steps per meta-training episode.")
    unroll: int = Field(20, ge=1, description="Truncated-BPTT length (one meta-update each).")
    instances: int = Field(
        0, ge=0, description="Problems per episode; 0: use batch_size of the train config."
    )
    second_order: bool = Field(
        False,
        description="Back-propagate through the optimizee gradients (L2O-DM drops these terms).",
    )
    progressive: tuple[int, ...] = Field(
        (5, 10, 20),
        description="l2o-tt: unroll lengths of successive stages (seed 002's progressive "
        "training); stages split the episodes evenly.",
    )
    imitation_weight: float = Field(
        0.1,
        ge=0,
        description="l2o-tt: initial weight of the imitation loss (a guide next to the meta-loss: "
        "the tuned teacher is a worse optimizer than the trained student, see docs/l2o.md).",
    )
    imitation_decay: float = Field(
        0.5,
        ge=0,
        le=1,
        description="l2o-tt: fraction of the episodes over which that weight decays linearly to 0.",
    )
    teacher: Literal["adam", "sgd", "sam"] = Field(
        "adam",
        description="Analytical optimizer to imitate: the store's runs of it (image families) or "
        "an on-the-fly run at the tuned learning rate (synthetic families; sam: not there).",
    )
    lr_grid: tuple[float, ...] = Field(
        (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
        description="Learning rates tried when tuning the Adam/SGD teacher and references.",
    )
    hessian_weight: float = Field(0.1, ge=0, description="l2o-flat: weight of the Hessian term.")
    hessian: Literal["trace", "eig"] = Field(
        "trace", description="l2o-flat: Hutchinson trace or top eigenvalue (power iteration)."
    )
    hessian_probes: int = Field(2, ge=1, description="Rademacher probes of the trace estimate.")
    power_iters: int = Field(5, ge=1, description="Power iterations of the eigenvalue estimate.")
    entropy_weight: float = Field(
        0.1, ge=0, description="l2o-flat: weight of the local-entropy term."
    )
    langevin_steps: int = Field(5, ge=1, description="Langevin steps of the local-entropy term.")
    langevin_lr: float = Field(0.01, gt=0, description="Langevin step size.")
    langevin_noise: float = Field(1e-3, ge=0, description="Langevin noise scale (temperature).")
    entropy_gamma: float = Field(1.0, gt=0, description="Coupling γ of the local-entropy term.")
    adapt_steps: int = Field(5, ge=0, description="m-l2o: self-adaptation steps (inner loop).")
    adapt_lr: float = Field(1e-3, gt=0, description="m-l2o: step size of the adaptation.")
    adapt_unroll: int = Field(10, ge=1, description="m-l2o: unroll length of one adaptation step.")
    image_batch: int = Field(
        0, ge=0, description="Image optimizees: minibatch size; 0: the store's batch size."
    )

    @field_validator("progressive", "lr_grid")
    @classmethod
    def _non_empty_positive(cls, v: tuple) -> tuple:
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"needs at least one value, all positive (got {list(v)})")
        return v


class L2OTrainConfig(TrainConfig):
    """``train-policy`` of a learned optimizer: the shared settings and the ``l2o`` section."""

    method: Literal["l2o", "l2o-tt", "l2o-flat", "m-l2o"] = Field(
        "l2o",
        description="Learned optimizers (docs/l2o.md): l2o, l2o-tt, l2o-flat, m-l2o (a step is "
        "one episode).",
    )
    l2o: L2OConfig = Field(default_factory=L2OConfig, description="Learned-optimizer settings.")


class L2OEvaluateConfig(ConfigModel):
    """``lohp evaluate-l2o``: learned optimizers vs tuned Adam/SGD on held-out tasks."""

    policies: dict[str, str] = Field(
        default_factory=dict,
        validate_default=True,
        description="Learned optimizers to compare, name -> policy directory.",
    )
    out: str = Field("reports/l2o", description="Report directory.")
    baselines: tuple[Literal["adam", "sgd"], ...] = Field(
        ("adam", "sgd"), description="Analytical optimizers (lr tuned on source tasks)."
    )
    tasks: int = Field(8, ge=1, description="Held-out tasks.")
    instances: int = Field(8, ge=1, description="Problems (or initial weights) per task.")
    steps: int = Field(100, ge=1, description="Optimizee steps of every method.")
    shift: float = Field(
        0.0,
        ge=0,
        description="Synthetic families: distribution shift of the held-out tasks (0: the "
        "training distribution; 1: one decade more ill-conditioned and larger, see docs/l2o.md).",
    )
    adapt_steps: int | None = Field(
        None, ge=0, description="Self-adaptation steps on each task (default: the policy's)."
    )
    adapt_all: bool = Field(
        True, description="Also report every non-m-l2o policy after the same adaptation."
    )
    tune_tasks: int = Field(4, ge=1, description="Source tasks used to tune the baselines' lr.")
    seed: Seed = Field(0, description="Seed of the held-out tasks and instances.")
    store: str | None = Field(None, description="Image families: the store, if it moved.")
    data_root: str | None = Field(None, description="Image families: the data set directory.")
    plots: bool = Field(True, description="Write loss_curves.png (needs matplotlib).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")

    @field_validator("policies")
    @classmethod
    def _some_policy(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("no learned optimizer given; pass --policy NAME=DIR")
        return v
