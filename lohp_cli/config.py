"""Stage configs as frozen pydantic models, and how they are resolved.

Precedence: model defaults < ``--config FILE.toml`` < repeatable ``--set a.b=value`` <
explicit flags.
The highest layer gives the value, but every given value is validated, also one a later
``--set`` or flag replaces. Every error of a resolution is reported at once, on one line, each
naming its key.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lohp_cli import trainers
from lohp_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "sam")


def check_optimizer_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Raise ``ValueError`` naming the first unknown optimizer."""
    unknown = [o for o in names if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    return names


class Frozen(BaseModel):
    """Base of every config model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SGDConfig(Frozen):
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Heavy-ball momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0")
        return self


class AdamConfig(Frozen):
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


class SAMConfig(Frozen):
    base: Literal["sgd", "adam"] = Field(
        "sgd", description="Base optimizer; its hyperparameters come from that optimizer's section."
    )
    rho: float = Field(0.05, gt=0, description="Neighbourhood radius of the ascent step.")
    adaptive: bool = Field(False, description="ASAM: scale the ascent step by |w|.")


class OptimizersConfig(Frozen):
    sgd: SGDConfig = Field(default_factory=SGDConfig, description="SGD hyperparameters.")
    adam: AdamConfig = Field(default_factory=AdamConfig, description="Adam hyperparameters.")
    sam: SAMConfig = Field(default_factory=SAMConfig, description="SAM hyperparameters.")


class TaskConfig(Frozen):
    family: str = Field("fmnist", description="Task family (see `lohp collect --help`).")
    ways: int = Field(5, ge=2, description="Classes per task (C-way tasks).")
    train_per_class: int = Field(100, ge=1, description="Training images per class and task.")
    test_per_class: int = Field(100, ge=1, description="Test images per class and task.")
    support_per_class: int = Field(
        10, ge=1, description="Labelled support images per class for the condition vector."
    )
    holdout_classes: tuple[int, ...] = Field(
        (), description="Classes never used by source tasks nor the feature extractor."
    )
    target_fraction: float = Field(
        0.2, gt=0, lt=1, description="Fraction of class combinations reserved for target tasks."
    )
    split_seed: int = Field(0, description="Seed of the source/target split and example choice.")
    data_root: str | None = Field(
        None, description="Directory with the data set files; default: the usual system places."
    )
    download: bool = Field(
        False, description="Let torchvision download a missing data set into data_root."
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        from lohp_cli.tasks.families import FAMILIES

        if v not in FAMILIES:
            raise ValueError(
                f"unknown task family {v!r}; choose from {', '.join(sorted(FAMILIES))}"
            )
        return v


class ModelConfig(Frozen):
    name: Literal["head", "mlp", "cnn"] = Field(
        "head", description="Target model: head (over a frozen extractor), mlp or cnn."
    )
    hidden: int = Field(32, ge=1, description="Hidden width of the mlp / channels of the cnn.")
    feature_dim: int = Field(64, ge=1, description="Feature size of the frozen extractor (head).")
    extractor_steps: int = Field(
        600, ge=1, description="Training steps of the frozen feature extractor (head)."
    )


class StoreCodecConfig(Frozen):
    codec: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = Field(
        "blosc-zstd", description="Compression of trajectory chunks."
    )
    level: int = Field(5, ge=0, le=9, description="Compression level.")
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = Field(
        "shuffle", description="Blosc shuffle filter."
    )
    chunk_steps: int = Field(
        64, ge=1, description="Recorded states per chunk (time axis); default: a run in one chunk."
    )
    transpose: bool = Field(
        True, description="Store each chunk coordinate-major (zarr TransposeCodec): better ratio."
    )
    checksum: bool = Field(
        True,
        description="End every chunk with a crc32c checksum (zarr v3 codec): damage is detected.",
    )


class CollectConfig(Frozen):
    out: str = Field("runs/fmnist.zarr", description="Output store (path or fsspec URL).")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Task family settings.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Target model settings.")
    optimizers: tuple[str, ...] = Field(OPTIMIZERS, description="Optimizers to run on each task.")
    optim: OptimizersConfig = Field(
        default_factory=OptimizersConfig, description="Per-optimizer hyperparameters."
    )
    store: StoreCodecConfig = Field(default_factory=StoreCodecConfig, description="Store codec.")
    tasks: int = Field(32, ge=1, description="Number of source tasks.")
    seeds: int = Field(2, ge=1, description="Replicates (seeds) per task and optimizer.")
    steps: int = Field(200, ge=1, description="Optimizer steps per run.")
    record_every: int = Field(5, ge=1, description="Record the weights every this many steps.")
    batch_size: int = Field(64, ge=1, description="Minibatch size.")
    seed: int = Field(0, description="Base seed; per-run seeds derive from it.")
    workers: int = Field(1, ge=1, description="Worker processes writing disjoint runs.")
    threads_per_worker: int = Field(
        1, ge=1, description="Torch threads per worker (fixed so results do not depend on it)."
    )
    shard: tuple[int, int] | None = Field(
        None, description="(i, n) or 'i/n': do only the i-th of n deterministic shares of the runs."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")

    @field_validator("optimizers")
    @classmethod
    def _known_optimizers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one optimizer")
        check_optimizer_names(v)
        if len(set(v)) != len(v):
            raise ValueError(f"optimizer listed twice in {list(v)}")
        return v

    @field_validator("shard", mode="before")
    @classmethod
    def _shard_from_text(cls, v: Any) -> Any:
        """Accept ``"i/n"`` (the ``--shard`` flag's form) as well as ``[i, n]``."""
        if not isinstance(v, str):
            return v
        try:
            i, n = (int(x) for x in v.split("/"))
        except ValueError:
            raise ValueError("not of the form i/n (e.g. 0/4)") from None
        return (i, n)

    @field_validator("shard")
    @classmethod
    def _shard_in_range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (v[1] >= 1 and 0 <= v[0] < v[1]):
            raise ValueError(f"shard {v[0]}/{v[1]} is out of range; use i/n with 0 <= i < n")
        return v

    @model_validator(mode="after")
    def _record_every_divides_steps(self) -> CollectConfig:
        if self.steps % self.record_every:
            raise ValueError(
                f"record_every={self.record_every} does not divide steps={self.steps}; "
                "pick values with steps % record_every == 0"
            )
        return self

    @property
    def recorded_states(self) -> int:
        """T + 1: number of recorded weight vectors per run (θ_0 … θ_T)."""
        return self.steps // self.record_every + 1


M = TypeVar("M", bound=BaseModel)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a dict; errors name the file and the problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{p}' does not exist.") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file '{p}' is not readable TOML: {exc}.") from None


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: JSON when it parses (numbers, true, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


KeyPath = tuple[str, ...]


def _parse_set(item: str) -> tuple[KeyPath, Any]:
    """``"a.b=value"`` -> ``(("a", "b"), parsed value)``; ``ConfigError`` when not key=value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} is not of the form key=value (e.g. optim.sgd.lr=0.05).")
    return tuple(key.strip().split(".")), parse_value(raw)


def _put(data: dict[str, Any], path: KeyPath, value: Any, item: str) -> None:
    """Set ``data[a][b]... = value`` in place, creating sections; a value on the way is an error."""
    node = data
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section.")
        node = nxt
    node[path[-1]] = value


def _has(data: dict[str, Any], path: KeyPath) -> bool:
    """Whether ``data`` holds a value (or section) at ``path``."""
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(data)


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied."""
    out = _copy(data)
    for item in sets:
        path, value = _parse_set(item)
        _put(out, path, value, item)
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``; nested dicts merge, other values replace."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def shadowed_paths(base: dict[str, Any], extra: dict[str, Any]) -> list[KeyPath]:
    """Paths of ``base`` whose value ``deep_merge(base, extra)`` replaces: never validated there."""
    out: list[KeyPath] = []
    for k, v in extra.items():
        if k not in base:
            continue
        if isinstance(v, dict) and isinstance(base[k], dict):
            out.extend((k, *p) for p in shadowed_paths(base[k], v))
        else:
            out.append((k,))
    return out


def _error_lines(exc: ValidationError, under: list[KeyPath] | None = None) -> list[str]:
    """One ``key: problem`` line per error; with ``under``, only errors at or below those paths."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        if under is not None and not any(loc[: len(p)] == p for p in under):
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown config key"
        elif not isinstance(err.get("input"), dict):
            msg += f" (got {err['input']!r})"
        lines.append(f"{'.'.join(loc) or 'config'}: {msg}")
    return lines


def _invalid(problems: list[str]) -> str:
    """The one message of a resolution: every problem once, in the order found."""
    unique = list(dict.fromkeys(p.rstrip(".") for p in problems))
    return "Invalid config: " + "; ".join(unique) + "."


def format_validation_error(exc: ValidationError) -> str:
    """All problems of a validation at once, joined on one line."""
    return _invalid(_error_lines(exc))


def _shadowed_errors(
    model: type[BaseModel], data: dict[str, Any], paths: list[KeyPath]
) -> list[str]:
    """The errors of ``data``'s values at ``paths``, which a later layer replaces.

    A bad value is an error even when a ``--set`` or a flag overrides it. Errors of a whole
    section (a model validator over several keys) sit above ``paths`` and are left out.
    """
    if not paths:
        return []
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return _error_lines(exc, under=paths)
    return []


def resolve(
    model: type[M],
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> M:
    """Build a config: defaults < TOML file < ``--set`` < explicit flags (None = unset).

    The value wins by precedence, but every given value is validated, also one that a later
    ``--set`` or a flag replaces; all problems (malformed ``--set``, bad or unknown keys from
    the file, ``--set`` and flags) are raised together in one ``ConfigError``, each naming its key.
    """
    problems: list[str] = []
    data: dict[str, Any] = load_toml(config_file) if config_file else {}
    for item in sets or []:
        try:
            path, value = _parse_set(item)
            after = _copy(data)
            _put(after, path, value, item)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        problems += _shadowed_errors(model, data, [path] if _has(data, path) else [])
        data = after
    explicit: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = explicit
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    problems += _shadowed_errors(model, data, shadowed_paths(data, explicit))
    data = deep_merge(data, explicit)
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_invalid([*problems, *_error_lines(exc)])) from None
    if problems:
        raise ConfigError(_invalid(problems))
    return cfg


METHODS = ("lo-hp", "lo-op", "lo-di", "hypernetwork")


class PolicyConfig(Frozen):
    backbone: Literal["unet", "mlp"] = Field(
        "unet", description="unet: 1-D U-Net over the parameter vector (paper); mlp: plain MLP."
    )
    channels: tuple[int, ...] = Field((32, 64, 128), description="U-Net channels per level.")
    patch: int = Field(8, ge=1, description="U-Net: coordinates per position (patch size).")
    hidden: int = Field(512, ge=1, description="Hidden width of the mlp backbone.")
    emb_dim: int = Field(128, ge=2, description="Size of the step/condition embedding.")
    sigma: Literal["schedule", "learned"] = Field(
        "schedule",
        description="schedule: σ_i from the mean matched offline step; learned: a scalar per step "
        "initialised there.",
    )
    sigma_scale: float = Field(1.0, gt=0, description="Multiplies the σ schedule.")
    sigma_min: float = Field(1e-4, gt=0, description="Lower bound of σ (normalised units).")
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
    state_input: Literal["none", "support"] = Field(
        "none",
        description="Our extension (LOHP.md): also condition each step on what the current "
        "weights predict on the task's support set (class-mean softmax, forward only); head and "
        "mlp target models.",
    )

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("beta must be positive, 'auto' or 'path'")
        return v


class LossConfig(Frozen):
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


class TrainConfig(Frozen):
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
    seed: int = Field(0, description="Seed of initialisation and sampling.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")
    overwrite: bool = Field(False, description="Replace a policy made from another store.")

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


class GenerateConfig(Frozen):
    policy: str = Field("policies/fmnist-k2", description="Policy directory.")
    out: str = Field("gen/fmnist-k2.zarr", description="Output generated-weights store (a path).")
    tasks: str = Field(
        "target",
        description="A split (target, target-hard, source), comma-separated task ids, or @FILE "
        "with one task id per line.",
    )
    num_tasks: int = Field(20, ge=1, description="How many tasks of a split.")
    samples: int = Field(4, ge=1, description="Weight vectors per task.")
    mode: Literal["mean", "sample"] = Field("mean", description="Mean steps or sampled steps.")
    seed: int = Field(0, description="Seed of s_0 and of sampled steps.")
    style: str | None = Field(
        None,
        description="For a policy trained with policy.optimizer_token: whose steps to imitate "
        "(default: adam when the policy learned from Adam runs, else its first optimizer).",
    )
    batch_size: int = Field(256, ge=1, description="Trajectories generated at once.")
    save_paths: bool = Field(False, description="Also store every state [S, N+1, P].")
    store: str | None = Field(
        None, description="Trajectory store of the policy (default: where it was trained)."
    )
    data_root: str | None = Field(None, description="Data set directory (default: the store's).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")
    overwrite: bool = Field(False, description="Replace an existing output.")


DEFAULT_BASELINES = ("sgd", "adam", "sam", "hypernetwork")
BASELINES = (*DEFAULT_BASELINES, "l2o", "l2o-tt", "l2o-flat", "m-l2o")


class EvaluateConfig(Frozen):
    generated: str = Field("gen/fmnist-k2.zarr", description="Output of 'lohp generate'.")
    out: str = Field("reports/fmnist", description="Report directory.")
    baselines: tuple[str, ...] = Field(
        DEFAULT_BASELINES,
        description="Baselines on the same tasks: sgd, adam, sam (each for T·r and for N "
        "optimizer steps), hypernetwork (trained here on the policy's store unless given in "
        "policies) and the learned optimizers l2o, l2o-tt, l2o-flat, m-l2o (each needs its "
        "policy in policies under the same name).",
    )
    hypernetwork_steps: int = Field(1500, ge=1, description="Training steps of that hypernetwork.")
    policies: dict[str, str] = Field(
        default_factory=dict,
        description="More trained policies to compare, name -> directory (e.g. hypernetwork, "
        "lo-di, lo-op, k=1); generated here on the same tasks and seeds.",
    )
    latency_repeats: int = Field(20, ge=1, description="Timed repetitions per method (median).")
    cosine_runs: int = Field(
        16, ge=0, description="Source runs for the cosine to the store's recorded steps."
    )
    locality_tasks: int = Field(
        10,
        ge=0,
        description="Held-out tasks of the local-policy check along each optimizer's "
        "own path (0: off).",
    )
    locality_source_tasks: int = Field(
        10, ge=0, description="Source tasks of that check, for contrast (0: none)."
    )
    locality_branches: int = Field(
        4, ge=2, description="Minibatch seeds per state: the seed-averaged step and the ceiling."
    )
    plots: bool = Field(True, description="Write PNG plots (needs matplotlib).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in v if b not in BASELINES]
        if unknown:
            raise ValueError(
                f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)} (other "
                "trained policies go in --policy NAME=DIR)"
            )
        return v
