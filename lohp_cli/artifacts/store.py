"""The trajectory store's root attributes (schema ``lohp.trajectories``; docs/store.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lohp_cli.artifacts.base import ArtifactModel, check_layout, newer, parse
from lohp_cli.errors import StoreError

SCHEMA = "lohp.trajectories"
SCHEMA_VERSION = 2


class FamilySpec(ArtifactModel):
    """The task family of a store (``TaskFamily.describe()``: name, ways, sizes, fingerprint…)."""

    name: str
    ways: int | None = None
    test_domain: int | None = None  # a domain family's held-out domain


class ModelSpec(ArtifactModel):
    """The target model of a store (the resolved ``ModelConfig``)."""

    name: str


class Compat(ArtifactModel):
    """What every run of a store shares; ``collect`` refuses runs made with anything else."""

    family: FamilySpec
    model: ModelSpec
    steps: int
    record_every: int
    batch_size: int
    seed: int
    # Absent from per-run stores (and from every store made before the option), so their compat and
    # fingerprint are unchanged; "shared": every run starts from the store's ``init/theta0``.
    init: Literal["per_run", "shared"] = "per_run"
    init_seed: int | None = None  # the seed the shared θ₀ was drawn from

    @model_validator(mode="after")
    def _shared_has_seed(self) -> Compat:
        if self.init == "shared" and self.init_seed is None:
            raise ValueError("init 'shared' needs init_seed")
        return self

    @property
    def shared_init(self) -> bool:
        """Whether every run of the store starts from one θ₀ (``init/theta0``)."""
        return self.init == "shared"

    @property
    def states(self) -> int:
        """Recorded states per run, T + 1."""
        return self.steps // self.record_every + 1

    @property
    def classes(self) -> int:
        """C of the store's class-subset tasks (0 for a family without classes)."""
        return int(self.family.ways or 0)


class StoreMeta(ArtifactModel):
    """The root attributes of a trajectory store."""

    schema_: str = Field(alias="schema")
    schema_version: int
    init_complete: bool = False
    compat: Compat
    layout: list[dict[str, Any]]  # ParamLayout.to_json(): {name, shape, offset} per tensor
    param_count: int
    condition_dim: int
    config: dict[str, Any] = Field(default_factory=dict)  # the resolved CollectConfig (JSON)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _layout_fits(self) -> StoreMeta:
        check_layout(self.layout, self.param_count)
        return self

    @property
    def created_at(self) -> str | None:
        return self.provenance.get("created_at")


def read_store_meta(attrs: Any, location: str) -> StoreMeta:
    """Check and validate a store's root attributes (once, when it is opened)."""
    attrs = attrs if isinstance(attrs, dict) else {}
    if attrs.get("schema") != SCHEMA:
        raise StoreError(
            f"'{location}' is not a lohp trajectory store (schema {attrs.get('schema')!r}, "
            f"expected {SCHEMA!r})."
        )
    version = attrs.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"'{location}' has no valid schema_version.")
    if newer(version, SCHEMA_VERSION):
        raise StoreError(
            f"Store '{location}' has schema_version {version}; this lohp reads up to "
            f"{SCHEMA_VERSION}. Upgrade lohp or re-run 'lohp collect'."
        )
    return parse(StoreMeta, attrs, f"Store '{location}' root attributes", StoreError)


def new_store_meta(attrs: dict[str, Any], location: str) -> StoreMeta:
    """The root attributes a new store starts with (``init_complete`` false), validated."""
    data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "init_complete": False, **attrs}
    return parse(StoreMeta, data, f"Store '{location}' root attributes", StoreError)
