"""The config of ``lohp train-policy``: the settings every training method shares
(``TrainConfig``, the union of the registered method configs) and the Lo-Hp family, which
registers its methods when this module is imported."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator

from lohp_cli import trainers
from lohp_cli.config.base import THREADS_HELP, ConfigModel, Seed
from lohp_cli.config.optim import check_optimizer_names

METHODS = ("lo-hp", "lo-op", "lo-di", "hypernetwork")


class PolicyConfig(ConfigModel):
    backbone: str = Field(
        "auto",
        description="auto: follow the store's target model, unet for a linear head (P = 325), "
        "rows for a whole network (mlp, cnn) or LoRA factors, resolved when training starts and "
        "saved in the policy; or one of the backbone registry (lohp_cli.policy.backbone): unet, "
        "a 1-D U-Net over the parameter vector (paper); mlp, a plain MLP; rows, attention over "
        "one token per neuron, equivariant to reordering hidden units and classes "
        "(docs/policy.md); coordinate, one small MLP shared by every coordinate (a "
        "coordinate-wise learned optimizer's form).",
    )
    hypernetwork_backbone: str = Field(
        "mlp",
        description="The hypernetwork's network: mlp, an MLP from the condition to θ_T (the "
        "paper's baseline); or a registered backbone (rows, unet, ...) applied once, from the "
        "zero state, so a one-shot baseline can have the iterative policy's architecture.",
    )
    channels: tuple[int, ...] = Field((32, 64, 128), description="U-Net channels per level.")
    patch: int = Field(8, ge=1, description="U-Net: coordinates per position (patch size).")
    hidden: int = Field(512, ge=1, description="Hidden width of the mlp backbone.")
    coordinate_hidden: int = Field(
        64, ge=1, description="Hidden width of the coordinate backbone (per coordinate)."
    )
    emb_dim: int = Field(128, ge=2, description="Size of the step/condition embedding.")
    time_embedding: bool = Field(
        True,
        description="Give each step its index i (the paper's time embedding); false: the step "
        "rule is stationary, the same at every index (σ and z stay per index).",
    )
    width: int = Field(
        32,
        ge=1,
        description="Token width of the rows backbone (32, the whole-network results' width, "
        "since backbone auto; 64 before).",
    )
    blocks: int = Field(
        1,
        ge=1,
        description="Attention blocks of the rows backbone (1 since backbone auto; 2 before).",
    )
    heads: int = Field(4, ge=1, description="Attention heads of the rows backbone (divide width).")
    sigma: Literal["schedule", "learned"] = Field(
        "schedule",
        description="schedule: σ_i from the mean matched offline step; learned: a scalar per step "
        "initialised there.",
    )
    sigma_scale: float = Field(1.0, gt=0, description="Multiplies the σ schedule.")
    sigma_min: float = Field(1e-4, gt=0, description="Lower bound of σ (normalised units).")
    sigma_floor: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Lower bound of σ_i as a fraction of the schedule's largest σ: runs that "
        "converge (full-batch fine-tuning) take steps hundreds of times smaller at the end, and "
        "β = 1/(2σ²) there would make the on-policy term demand a precision no policy reaches "
        "(0: no floor, as policies made before the option).",
    )
    backward: Literal["fixed", "learned"] = Field(
        "fixed", description="fixed: P_B is N(s_{i+1}, σ_i²); learned: its mean has a U-Net head."
    )
    coefficient: Literal["per_step", "mlp"] = Field(
        "per_step", description="Learnable coefficient z_i: a scalar per step, or an MLP of (i, c)."
    )
    beta: float | Literal["auto", "path"] = Field(
        "auto",
        description="Reward sharpness β; auto: β_t = 1/(2σ_t²) (balances f = Δ on one-step pairs); "
        "path: β per pair (t, n) from the matched offline sub-trajectory, so that f = Δ balances "
        "every pair (docs/policy.md). With sigma = learned, both use the σ schedule, not σ itself.",
    )
    optimizer_token: bool = Field(
        False, description="Condition on which optimizer's trajectory to imitate."
    )
    state_input: Literal["none", "support", "grad"] = Field(
        "none",
        description="Our extensions (LOHP.md), head and mlp target models: support, also condition "
        "each step on what the current weights predict on the task's support set (class-mean "
        "softmax, forward only); grad, also give each step the support-loss gradient at the "
        "current weights (direction per coordinate, log norm): a learned optimizer with gradient "
        "access, not the paper's gradient-free policy.",
    )
    normalization: Literal["coordinate", "tensor"] = Field(
        "coordinate",
        description="What one weight mean and scale of the z-score is shared by: coordinate, "
        "each coordinate its own (as before); tensor, every coordinate of a parameter tensor of "
        "the target model its tensor's pooled mean and scale (saved broadcast per coordinate).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PolicyConfig:
        if self.width % self.heads:
            raise ValueError(
                f"policy.heads = {self.heads} does not divide policy.width = {self.width}; "
                "choose heads among the divisors of width"
            )
        return self

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("beta must be positive, 'auto' or 'path'")
        return v


class LossConfig(ConfigModel):
    lam: float = Field(0.9, gt=0, le=1, description="λ: pair (m, n) weight λ^(n−m).")
    pairs: Literal["lambda", "equal"] = Field("lambda", description="Pair weighting.")
    max_len: int | None = Field(None, ge=1, description="Only pairs with n − m ≤ max_len.")
    w_off: float = Field(1.0, ge=0, description="Weight of the off-policy SubTB term.")
    w_on: float = Field(1.0, ge=0, description="Weight of the on-policy SubTB term.")
    hybrid_start: float = Field(
        0.5, ge=0, le=1, description="Probability that an on-policy rollout starts at θ_{k·m}."
    )
    on_policy_grad: Literal["detached", "pathwise"] = Field(
        "pathwise",
        description="detached: sampled states are constants (score-function gradients only); "
        "pathwise: gradients also flow through the reparameterised rollout.",
    )
    lodi_noise: float = Field(0.1, ge=0, description="Lo-Di: noise added to inputs (× σ_i).")
    w_step: float = Field(
        0.0,
        ge=0,
        description="Weight of the recorded steps' likelihood (lo-hp): the mean over the "
        "off-policy window of ||Δ_i − f_i||² / (2σ_i² P), the Gaussian negative log-likelihood of "
        "each offline step under P_F per coordinate. It pins every coordinate's step, which the "
        "balance residuals (one scalar per pair) do not (docs/policy.md, the cnn section).",
    )
    dagger: float = Field(
        0.0,
        ge=0,
        description="Weight of the DAgger term: the policy's mean step at states its own rollouts "
        "visit, pulled toward the recorded optimizer's step from there (0 = off; lo-hp, lo-op).",
    )
    dagger_states: int = Field(
        4, ge=1, description="DAgger: states relabelled per batch (each costs k·r optimizer steps)."
    )
    dagger_warmup: int = Field(
        30,
        ge=0,
        description="DAgger: the optimizer's state (Adam's moments) at a state of index m is "
        "warmed by min(m·k·r, this) steps from it, the weights then put back; 0 = fresh state.",
    )


DEFAULT_METHOD = "lo-hp"
TC = TypeVar("TC", bound="TrainConfig")

# every field of the one TrainConfig of lohp 0.1.0, which policy directories of that time store
# whole (config.json's train_config): a field of another method's config is dropped on reading
LEGACY_TRAIN_KEYS = frozenset(
    {
        *("store", "out", "method", "k", "steps", "batch_size", "lr", "weight_decay"),
        *("grad_clip", "optimizers", "normalize", "augment", "window", "checkpoint_every"),
        *("log_every", "max_minutes", "seed", "device", "amp", "compile", "cache_mb"),
        *("overwrite", "policy", "loss", "l2o"),
    }
)


class TrainConfig(ConfigModel):
    """The settings every training method shares; the union of the registered method configs.

    ``TrainConfig.model_validate(data)`` validates ``data`` as the discriminated union (by
    ``method``, default lo-hp) of the configs in :mod:`lohp_cli.trainers` and returns an instance
    of the method's subclass, which carries only that method's fields.
    """

    store: str = Field("runs/fmnist.zarr", description="Trajectory store to learn from.")
    out: str = Field("policies/fmnist-k2", description="Output policy directory.")
    method: str = Field(
        DEFAULT_METHOD, description="Training method (one registered in lohp_cli.trainers)."
    )
    steps: int = Field(3000, ge=1, description="Policy training steps.")
    batch_size: int = Field(32, ge=1, description="Trajectories per step (per process).")
    lr: float = Field(1e-3, gt=0, description="Learning rate (above 1e-3 tends to diverge).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between checkpoints.")
    log_every: int = Field(10, ge=1, description="Steps between metrics lines.")
    max_minutes: float | None = Field(None, gt=0, description="Stop (resumable) after this time.")
    seed: Seed = Field(0, description="Seed of initialisation and sampling.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")
    threads: int | None = Field(None, ge=1, description=THREADS_HELP)
    overwrite: bool = Field(False, description="Replace a policy made from another store.")
    log: Literal["jsonl", "tensorboard"] = Field(
        "jsonl",
        description="Where the scalars go besides metrics.jsonl: jsonl, nowhere else; "
        "tensorboard, also TensorBoard event files in POLICY/tensorboard/ (the extra "
        "lohp[tensorboard]).",
    )

    def __init__(self, **data: Any) -> None:
        if type(self) is TrainConfig:
            raise TypeError(
                "TrainConfig is the union of the method configs: use "
                "TrainConfig.model_validate(data) or a method's config class"
            )
        super().__init__(**data)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if cls is not TrainConfig:
            return super().model_validate(obj, **kwargs)
        if isinstance(obj, TrainConfig):
            return obj
        if isinstance(obj, dict) and "method" not in obj:
            obj = {**obj, "method": DEFAULT_METHOD}
        try:
            return trainers.adapter().validate_python(obj, **kwargs)
        except ValidationError as exc:
            raise _method_errors(exc, obj) from None

    @classmethod
    def from_stored(cls: type[TC], data: Any) -> TC:
        """Validate the ``train_config`` of a policy directory, also one of an older lohp."""
        return cls.model_validate(stored_train_config(data))


def _method_errors(exc: ValidationError, data: Any) -> ValidationError:
    """The union's errors as the method's config reports them: keys without the tag in front,
    an unknown method or another method's key said in words; with an unknown method, also the
    other problems as the config that fits ``data`` best reports them."""
    method = data.get("method") if isinstance(data, dict) else None
    errors: list[Any] = []
    for err in exc.errors():
        if err["type"] not in ("union_tag_invalid", "union_tag_not_found"):
            errors.append(_in_words(err, err["loc"][1:], method))
            continue
        msg = f"unknown method, choose from {', '.join(trainers.method_names())}"
        errors.append(_said(("method",), method, msg))
        errors += [_in_words(e, e["loc"], method) for e in _closest_errors(data)]
    return ValidationError.from_exception_data(exc.title, errors)


def _said(loc: tuple[Any, ...], value: Any, message: str) -> dict[str, Any]:
    """An error at ``loc`` that says ``message`` (a value error, as a validator's)."""
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


def _in_words(err: Any, loc: tuple[Any, ...], method: Any) -> Any:
    """One error of a method's config at ``loc``; another method's key says whose it is."""
    owners = trainers.owners(str(loc[0])) if len(loc) == 1 else ()
    if err["type"] == "extra_forbidden" and owners:
        msg = f"belongs to the methods {', '.join(owners)}, not to {method}"
        return _said(loc, err["input"], msg)
    return {**{k: err[k] for k in ("type", "input", "ctx") if k in err}, "loc": loc}


def _closest_errors(data: Any) -> list[Any]:
    """The errors (but the method's) of the registered config that fits ``data`` best: the fewest
    keys it does not have, then the fewest errors (the first registered on a tie)."""
    if not isinstance(data, dict):
        return []
    found = []
    for config in trainers.config_classes():
        try:
            config.model_validate({**data, "method": config.model_fields["method"].default})
            return []
        except ValidationError as exc:
            errors = [e for e in exc.errors() if e["loc"] != ("method",)]
        foreign = sum(e["type"] == "extra_forbidden" for e in errors)
        found.append((foreign, len(errors), len(found), errors))
    return min(found)[-1] if found else []


def stored_train_config(data: Any) -> Any:
    """``data`` without the fields another method's config has (old policies store them all)."""
    spec = trainers.get(data.get("method", DEFAULT_METHOD)) if isinstance(data, dict) else None
    if spec is None:
        return data
    policy = data.get("policy")
    if isinstance(policy, dict) and "sigma_floor" not in policy:
        data = {**data, "policy": {**policy, "sigma_floor": 0.0}}  # built before the floor
    other = LEGACY_TRAIN_KEYS.union(*(c.model_fields for c in trainers.config_classes()))
    own = spec.config.model_fields
    return {k: v for k, v in data.items() if k in own or k not in other}


class LoHpTrainConfig(TrainConfig):
    """Lo-Hp and its ablations: lo-hp, lo-op (on-policy only), lo-di, hypernetwork."""

    method: Literal["lo-hp", "lo-op", "lo-di", "hypernetwork"] = Field(
        "lo-hp",
        description="lo-hp, lo-op (on-policy only), lo-di (denoising), hypernetwork.",
    )
    k: int = Field(2, ge=1, description="Matching factor: N = T / k policy steps.")
    optimizers: tuple[str, ...] | None = Field(
        None, description="Learn only from runs of these optimizers (default: all in the store)."
    )
    normalize: Literal["init", "all"] = Field(
        "init",
        description="Per-coordinate z-score from θ_0 of all runs (s_0 ~ N(0, I) then looks like "
        "the optimizers' starts) or from every recorded state.",
    )
    augment: Literal["auto", "classes", "none"] = Field(
        "auto",
        description="classes: reorder the classes of each drawn run at random (output rows of "
        "every state and the condition's class blocks), a valid run of the reordered task; auto: "
        "classes where the store's tasks and model have that structure, else none.",
    )
    window: int | None = Field(
        None, ge=1, description="Online steps per sampled sub-trajectory (default: all N)."
    )
    amp: bool = Field(False, description="bfloat16 autocast (CUDA only).")
    compile: bool = Field(False, description="torch.compile the backbone (CUDA only).")
    cache_mb: float = Field(32.0, ge=0, description="Cache of decoded runs, in MB.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Policy architecture.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Loss settings.")
    val_tasks: int = Field(
        0,
        ge=0,
        description="Hold out this many of the store's tasks (chosen from the seed) as a "
        "validation split: none of their runs is trained on or enters the normalisation; 0: "
        "no validation (docs/policy.md).",
    )
    val_every: int | None = Field(
        None, ge=1, description="Steps between validations (default: checkpoint_every)."
    )
    val_metric: Literal["auto", "accuracy", "loss"] = Field(
        "auto",
        description="What chooses the best policy: accuracy, the held-out tasks' test accuracy "
        "of the weights generated for them (stores whose tasks can be rebuilt); loss, the "
        "objective's loss on the held-out runs; auto: accuracy where available, else loss.",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many validations without improvement (None: train all "
        "the steps); needs val_tasks.",
    )

    @model_validator(mode="after")
    def _some_loss_term(self) -> LoHpTrainConfig:
        lc = self.loss
        if (self.method == "lo-op" and lc.w_on == 0) or (
            self.method == "lo-hp" and lc.w_off == 0 and lc.w_on == 0
        ):
            raise ValueError(
                f"method {self.method} with loss.w_off={lc.w_off} and loss.w_on={lc.w_on} has no "
                "loss term; give one of them a positive weight"
            )
        return self

    @model_validator(mode="after")
    def _validation_settings(self) -> LoHpTrainConfig:
        if self.val_tasks == 0:
            given = [k for k in ("val_every", "patience") if getattr(self, k) is not None]
            if self.val_metric != "auto":
                given.append("val_metric")
            if given:
                raise ValueError(
                    f"{', '.join(given)} need(s) a validation split; set val_tasks "
                    "(--val-tasks N) too"
                )
        return self

    @field_validator("optimizers")
    @classmethod
    def _subset(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("the optimizer subset is empty; list at least one of sgd, adam, sam")
        return check_optimizer_names(v)


trainers.register(
    trainers.TrainMethod(METHODS, LoHpTrainConfig, "lohp_cli.policy.fit:train_policy")
)
