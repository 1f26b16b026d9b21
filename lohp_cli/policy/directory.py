"""The policy directory as an artifact: the fingerprint of the store it learned from, building
and loading the model, and the generation contract every method shares (the start state s_0 and
the optimizer style token). Writing one (the training run directory) is
:mod:`lohp_cli.policy.rundir`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from lohp_cli import trainers
from lohp_cli.artifacts.policy import PolicyMeta, read_policy_header, read_policy_meta
from lohp_cli.checkpoint import load_tensors, read_json
from lohp_cli.config import OPTIMIZERS, LoHpTrainConfig, TrainConfig
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.policy.gaussian import HyperNetwork, LoHpPolicy
from lohp_cli.runtime import derive_seed
from lohp_cli.store.sampler import NormStats
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.layout import ParamLayout


def store_fingerprint(store: TrajectoryStore) -> dict[str, Any]:
    """What identifies the store a policy was trained on (independent of its location)."""
    meta = store.meta
    compat = json.dumps(meta.compat.to_json(), sort_keys=True)
    return {
        "schema": meta.schema_,
        "schema_version": meta.schema_version,
        "compat_sha": hashlib.sha256(compat.encode()).hexdigest()[:16],
        "created_at": meta.created_at,
    }


def build_model(
    cfg: LoHpTrainConfig,
    size: int,
    cond_dim: int,
    n_steps: int,
    stats: NormStats,
    classes: int = 0,
    layout: ParamLayout | None = None,
) -> nn.Module:
    """The network a method trains (initialised from ``cfg.seed``); ``classes``: C of the tasks;
    ``layout``: the target model's parameter layout, handed to the policy's backbone builder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        if cfg.method == "hypernetwork":
            return HyperNetwork(size, cond_dim, cfg.policy, classes, layout)
        sigma = stats.step_rms * cfg.policy.sigma_scale  # [N]
        sigma = sigma.clamp_min(cfg.policy.sigma_floor * float(sigma.max()))
        return LoHpPolicy(size, cond_dim, n_steps, sigma, cfg.policy, classes, layout=layout)


def open_policy_dir(path: str | Path, train_with: str) -> tuple[Path, dict[str, Any], str]:
    """``(directory, config.json, method)`` of a policy directory; a missing directory or a
    config without a readable header is a CompatibilityError (``train_with``: the command to
    make one)."""
    out = Path(path)
    if not out.is_dir():
        raise CompatibilityError(f"No policy directory at '{out}'; train one with '{train_with}'.")
    data = read_json(out / "config.json")
    return out, data, read_policy_header(data, out).method


def load_weights(model: nn.Module, out: Path) -> None:
    """``model.safetensors`` of a policy directory into ``model``; a mismatch is named."""
    try:
        model.load_state_dict(load_tensors(out / "model.safetensors"))
    except RuntimeError as exc:
        raise CompatibilityError(
            f"Policy weights in '{out}' do not fit its config ({exc})."
        ) from None


def check_sample_steps(out: Path, method: str, n: int | str = "N") -> None:
    """A ConfigError unless a policy of ``method`` chooses its steps when generating (a number
    of sampling steps was asked of it); ``n``: the steps it was trained for."""
    spec = trainers.get(method)
    if spec is None or not spec.chooses_steps:
        raise ConfigError(
            f"Policy '{out}' ({method}) takes the N = {n} steps it was trained for; only "
            "a policy that chooses its steps when generating (diffusion) takes a number of "
            "sampling steps: leave out --sample-steps (or the @S of --policy NAME@S=DIR)."
        )


def check_policy_dir(path: str | Path, sample_steps: int | None) -> None:
    """What can be checked of a policy directory without loading it: there, with a readable
    config.json header, and (when a number of sampling steps is asked) of a method that takes
    one. ``evaluate`` checks its ``--policy`` directories so before it builds anything."""
    out, data, method = open_policy_dir(path, "lohp train-policy")
    if sample_steps is not None:
        check_sample_steps(out, method, data.get("N", "N"))


def load_policy(
    path: str | Path, device: str = "cpu", sample_steps: int | None = None
) -> tuple[nn.Module, PolicyMeta, NormStats]:
    """Load a policy directory: ``(model in eval mode, its config.json, normalisation stats)``;
    the config is validated here, once (a CompatibilityError names a missing or bad field).

    ``sample_steps``: the generation steps S of a policy that chooses them when generating (a
    diffusion sampler; the returned config's N is then S); None keeps the policy's own. A
    ConfigError for a policy whose N is fixed by training, or an S it cannot take.
    """
    out, data, method = open_policy_dir(path, "lohp train-policy")
    spec = trainers.get(method)
    if spec is None or not spec.generates_weights:
        what = f"a {spec.kind} ({method})" if spec else f"a policy of an unknown method {method!r}"
        use = (
            spec.use
            if spec and spec.use
            else (f"this lohp generates with {', '.join(trainers.weight_generators())}")
        )
        raise CompatibilityError(f"'{out}' is {what}, not a weight generator; {use}.")
    meta = read_policy_meta(data, out)
    try:
        cfg = TrainConfig.from_stored(meta.train_config)
    except ValidationError as exc:
        raise CompatibilityError(
            f"Policy '{out}' has a train config this lohp cannot read ({exc.error_count()} "
            "problem(s)); it was made by another version."
        ) from None
    norm = out / meta.normalization
    stats = NormStats.from_tensors(load_tensors(norm), meta.param_count, meta.condition_dim, norm)
    layout = ParamLayout.from_json(meta.layout)
    if layout.size != meta.param_count:
        raise CompatibilityError(
            f"Policy '{out}' config.json: its layout has {layout.size} parameters and its "
            f"param_count {meta.param_count}; the policy weights do not fit its config."
        )
    build = spec.build_function() or build_model
    model = build(
        cfg, meta.param_count, meta.condition_dim, meta.N, stats, meta.store_compat.classes, layout
    )
    load_weights(model, out)
    if sample_steps is not None:
        check_sample_steps(out, method, meta.N)
        model.set_sample_steps(sample_steps)
        meta = meta.model_copy(update={"N": sample_steps})
    return model.to(device).eval(), meta, stats


def local_steps(meta: PolicyMeta) -> bool:
    """Whether the policy's N steps are local steps along a trajectory (Lo-Hp, Lo-Op, Lo-Di), which
    evaluate's cosine and local-policy checks compare with an optimizer's: not a hypernetwork's
    one map, nor the denoising steps of a policy that chooses its steps (diffusion)."""
    spec = trainers.get(meta.method)
    return not meta.hypernetwork and not (spec is not None and spec.chooses_steps)


def initial_state(seed: int, task_id: str, sample: int, size: int) -> torch.Tensor:
    """s_0 ~ N(0, I) ``[P]`` of one (task, sample) of a per-run store (see :class:`StartRule`)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, task_id, sample))
    return torch.randn(size, generator=gen)


@dataclass(frozen=True)
class StartRule:
    """Where sample j of task t starts: ``generate``'s s_0, and the θ₀ of every method of
    ``evaluate`` (optimizer baselines, other policies, learned optimizers, the local-policy check).

    A per-run store (``theta0`` None): s_0 ~ N(0, I) seeded by (seed, t, j), θ₀ = denormalise(s_0),
    like the runs' own random starts. A shared-init store: every start is the store's θ₀ itself,
    s_0 = normalise(θ₀); samples then differ only where a method draws noise (``--mode sample``,
    an optimizer's minibatches).
    """

    seed: int
    size: int
    theta0: torch.Tensor | None = None  # [P] the store's shared θ₀ (init = "shared")

    @property
    def shared(self) -> bool:
        return self.theta0 is not None

    def s0(self, task_id: str, sample: int, stats: NormStats) -> torch.Tensor:
        """The normalised start ``[P]`` for a policy with normalisation ``stats`` (each policy
        reads a per-run draw in its own normalisation)."""
        if self.theta0 is not None:
            return stats.normalize(self.theta0)
        return initial_state(self.seed, task_id, sample, self.size)

    def weights(self, task_id: str, sample: int, stats: NormStats) -> torch.Tensor:
        """The start in weight space ``[P]``: the shared θ₀ exactly, else denormalise(s_0)."""
        if self.theta0 is not None:
            return self.theta0.clone()
        return stats.denormalize(initial_state(self.seed, task_id, sample, self.size))


def start_rule(store: TrajectoryStore, seed: int) -> StartRule:
    """The starts of generation and evaluation on ``store`` (its shared θ₀, if it has one)."""
    theta0 = store.shared_init()
    return StartRule(
        seed, store.meta.param_count, None if theta0 is None else torch.from_numpy(theta0)
    )


def learned_optimizers(meta: PolicyMeta) -> list[str]:
    """The optimizers whose runs the policy learned from: its subset, else the store's, else all
    (a policy that recorded neither)."""
    return meta.learned_optimizers or list(OPTIMIZERS)


def style_token(meta: PolicyMeta, style: str | None) -> int | None:
    """The optimizer-token index a policy generates with, or None for a policy without tokens.

    A policy trained with ``policy.optimizer_token`` always saw a token; it imitates ``style``
    (default: Adam when it learned from Adam runs, else the first optimizer it learned from).
    """
    if not meta.has_tokens:
        if style is not None:
            raise ConfigError(
                f"--style {style}: the policy was trained without policy.optimizer_token, so it "
                "has one style only; leave --style out."
            )
        return None
    learned = learned_optimizers(meta)
    if style is None:
        style = "adam" if "adam" in learned else learned[0]
    if style not in learned:
        raise ConfigError(
            f"--style {style}: the policy learned from {', '.join(learned)} runs only."
        )
    return OPTIMIZERS.index(style)
