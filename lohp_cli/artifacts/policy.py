"""A policy directory's ``config.json`` (kind ``lohp.policy``; docs/policy.md): the header every
policy has, a weight generator's config (:class:`PolicyMeta`, Lo-Hp, Lo-Op, Lo-Di, hypernetwork)
and a learned optimizer's (:class:`L2OPolicyMeta`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lohp_cli.artifacts.base import ArtifactModel, check_layout, newer, parse
from lohp_cli.artifacts.store import Compat
from lohp_cli.errors import CompatibilityError

POLICY_KIND = "lohp.policy"
POLICY_FORMAT = 1


class PolicyHeader(ArtifactModel):
    """What every policy's config.json says: what it is, and what it was trained on and with."""

    kind: str
    format: int
    method: str
    store_fingerprint: dict[str, Any] | None = None
    train_config: dict[str, Any] = Field(default_factory=dict)  # as written (any lohp version)
    trained_steps: int = 0
    complete: bool = False
    provenance: dict[str, Any] = Field(default_factory=dict)
    # train-policy --val-tasks: held-out tasks, metric, best step and score, stop reason
    validation: dict[str, Any] | None = None

    @property
    def optimizers(self) -> list[str] | None:
        """The optimizer subset it was trained on (None: every optimizer of its store)."""
        return self.train_config.get("optimizers")


class PolicyMeta(PolicyHeader):
    """A weight generator's config.json, written by ``policy_config_json``."""

    k: int
    N: int
    T: int | None = None
    param_count: int
    condition_dim: int
    layout: list[dict[str, Any]]
    store_compat: Compat
    store_fingerprint: dict[str, Any]
    store_location: str
    store_optimizers: list[str] | None = None  # the store's optimizers (lohp ≥ 0.2)
    runs_used: int | None = None
    normalization: str
    train_config: dict[str, Any]
    trained_steps: int

    @model_validator(mode="after")
    def _layout_fits(self) -> PolicyMeta:
        check_layout(self.layout, self.param_count)
        return self

    @property
    def hypernetwork(self) -> bool:
        return self.method == "hypernetwork"

    @property
    def has_tokens(self) -> bool:
        """Whether it was trained with ``policy.optimizer_token`` (and so needs a token)."""
        return bool(self._policy_settings.get("optimizer_token", False))

    @property
    def state_input(self) -> str:
        return str(self._policy_settings.get("state_input", "none"))

    @property
    def learned_optimizers(self) -> list[str] | None:
        """The optimizers whose runs it learned from (its subset, else the store's; None when
        neither is recorded)."""
        found = self.optimizers or self.store_optimizers
        return list(found) if found else None

    @property
    def _policy_settings(self) -> dict[str, Any]:
        return self.train_config.get("policy") or {}


class L2OPolicyMeta(PolicyHeader):
    """A learned optimizer's config.json (``lohp_cli.l2o.fit``)."""

    family: dict[str, Any]  # the problem family it was meta-trained on (describe())
    teacher: dict[str, Any] | None = None
    store_location: str | None = None  # image families only
    store_compat: Compat | None = None
    param_count: int | None = None

    @property
    def family_name(self) -> str | None:
        return self.family.get("name")


def _where(out: Path) -> str:
    return f"Policy '{out}' config.json"


def read_policy_header(data: Any, out: Path) -> PolicyHeader:
    """The header of a policy's config.json: refuses another kind or a newer format."""
    if not isinstance(data, dict) or data.get("kind") != POLICY_KIND:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise CompatibilityError(f"'{out}' is not a lohp policy (kind {kind!r}).")
    version = data.get("format")
    if newer(version, POLICY_FORMAT):
        raise CompatibilityError(
            f"Policy '{out}' has format {version}; this lohp reads up to {POLICY_FORMAT}."
        )
    return parse(PolicyHeader, data, _where(out), CompatibilityError)


def stored_method(path: str | Path) -> str | None:
    """The ``method`` a policy directory's config.json names, unvalidated (to pick the loader
    that then validates it), or None when it is unreadable."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    method = data.get("method") if isinstance(data, dict) else None
    return method if isinstance(method, str) else None


def read_policy_meta(data: Any, out: Path) -> PolicyMeta:
    """A weight generator's config.json, validated (after :func:`read_policy_header`)."""
    return parse(PolicyMeta, data, _where(out), CompatibilityError)


def read_l2o_meta(data: Any, out: Path) -> L2OPolicyMeta:
    """A learned optimizer's config.json, validated (after :func:`read_policy_header`)."""
    return parse(L2OPolicyMeta, data, _where(out), CompatibilityError)


def new_policy_meta(**fields: Any) -> PolicyMeta:
    """The config.json ``train-policy`` writes for a weight generator, validated."""
    data = {"kind": POLICY_KIND, "format": POLICY_FORMAT, **fields}
    return parse(PolicyMeta, data, "The policy's config.json", CompatibilityError)


def new_l2o_meta(**fields: Any) -> L2OPolicyMeta:
    """The config.json ``train-policy`` writes for a learned optimizer, validated."""
    data = {"kind": POLICY_KIND, "format": POLICY_FORMAT, **fields}
    return parse(L2OPolicyMeta, data, "The policy's config.json", CompatibilityError)
