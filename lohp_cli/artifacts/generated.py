"""The generated store's attributes (schema ``lohp.generated``), written by ``lohp generate``
and read by ``lohp evaluate``; its layout is documented in :mod:`lohp_cli.store.generated`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from lohp_cli.artifacts.base import ArtifactModel, check_layout, newer, parse
from lohp_cli.errors import StoreError

GEN_SCHEMA = "lohp.generated"
GEN_SCHEMA_VERSION = 1


class GeneratedPolicy(ArtifactModel):
    """The policy that generated the weights."""

    path: str
    method: str
    k: int
    N: int
    store_fingerprint: dict[str, Any]
    trained_steps: int
    style: str | None = None  # the optimizer style of a policy with tokens


class GeneratedMeta(ArtifactModel):
    """The root attributes of a generated store."""

    schema_: str = Field(alias="schema")
    schema_version: int
    policy: GeneratedPolicy
    layout: list[dict[str, Any]]
    param_count: int
    store_location: str
    tasks: list[str]
    config: dict[str, Any]  # the resolved GenerateConfig (JSON)
    timing: dict[str, Any]
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _layout_fits(self) -> GeneratedMeta:
        check_layout(self.layout, self.param_count)
        return self


def read_generated_meta(attrs: Any, path: str) -> GeneratedMeta:
    """Check and validate a generated store's attributes (once, when it is opened)."""
    attrs = attrs if isinstance(attrs, dict) else {}
    if attrs.get("schema") != GEN_SCHEMA:
        raise StoreError(
            f"'{path}' is not a lohp generated store (schema {attrs.get('schema')!r})."
        )
    version = attrs.get("schema_version")
    if newer(version, GEN_SCHEMA_VERSION):
        raise StoreError(
            f"'{path}' has schema_version {version}; this lohp reads up to "
            f"{GEN_SCHEMA_VERSION}. Upgrade lohp."
        )
    return parse(GeneratedMeta, attrs, f"Generated store '{path}'", StoreError)


def new_generated_meta(**fields: Any) -> GeneratedMeta:
    """The attributes ``generate`` writes, validated."""
    data = {"schema": GEN_SCHEMA, "schema_version": GEN_SCHEMA_VERSION, **fields}
    return parse(GeneratedMeta, data, "The generated store's attributes", StoreError)
