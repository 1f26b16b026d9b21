"""An exported model's ``config.json`` (format ``lohp.exported``), written by ``lohp export`` and
read by ``lohp predict`` and ``lohp inspect`` (:mod:`lohp_cli.tasks.exported`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lohp_cli.artifacts.base import ArtifactModel, newer, parse
from lohp_cli.errors import CompatibilityError

EXPORT_FORMAT = "lohp.exported"
EXPORT_VERSION = 1


class ExportedInput(ArtifactModel):
    """What the model takes: images ``[B, *shape]``, float32 in ``range`` (uint8 / 255)."""

    shape: list[int]
    layout: str = "NCHW"
    dtype: str = "float32"
    range: list[float] = Field(default_factory=lambda: [0.0, 1.0])
    note: str | None = None


class ExportedFiles(ArtifactModel):
    weights: str = "model.safetensors"
    program: str | None = None  # model.pt2, or None when torch.export could not trace it


class ExportedMeta(ArtifactModel):
    """An exported model directory's config.json."""

    format: str
    format_version: int
    task_id: str
    classes: list[Any]  # the data set's class (identity) of each label, in label order
    class_names: list[str] | None = None
    input: ExportedInput
    output: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any]  # the target model's ModelConfig (JSON)
    frozen_parts: list[str] = Field(default_factory=list)
    standardisation: dict[str, Any] = Field(default_factory=dict)
    test_accuracy: float | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    files: ExportedFiles = Field(default_factory=ExportedFiles)
    provenance: dict[str, Any] = Field(default_factory=dict)


def read_exported_meta(data: Any, where: str) -> ExportedMeta:
    """Check and validate an exported model's config.json (``where``: its directory)."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise CompatibilityError(f"'{where}' is not a model exported by 'lohp export'.")
    version = data.get("format_version")
    if newer(version, EXPORT_VERSION):
        raise CompatibilityError(
            f"'{where}' is format version {version}; this lohp reads up to {EXPORT_VERSION}. "
            "Upgrade lohp."
        )
    return parse(ExportedMeta, data, f"Exported model '{where}' config.json", CompatibilityError)


def new_exported_meta(**fields: Any) -> ExportedMeta:
    """The config.json ``export`` writes, validated."""
    data = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, **fields}
    return parse(ExportedMeta, data, "The exported model's config.json", CompatibilityError)
