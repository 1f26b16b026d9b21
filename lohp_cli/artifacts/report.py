"""What readers take from an evaluate report's ``report.json`` (schema ``lohp.report``,
written by :mod:`lohp_cli.report.document`): the fields ``lohp report-dg`` merges, validated
where it reads them. Other keys are kept as they are."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from lohp_cli.artifacts.base import ArtifactModel, newer, parse
from lohp_cli.errors import DataError

REPORT_SCHEMA = "lohp.report"
REPORT_VERSION = 1


class ReportMethod(ArtifactModel):
    """A row of the report: a method's accuracy over the held-out tasks × samples (None, with
    ``n`` 0, for a method that was not applicable: its ``note`` says why)."""

    name: StrictStr
    kind: StrictStr
    acc_mean: float | None = Field(allow_inf_nan=False)
    acc_std: float | None = Field(ge=0, allow_inf_nan=False)
    n: StrictInt = Field(ge=0)
    note: StrictStr | None = None


class ReportMeta(ArtifactModel):
    """The fields of report.json that other commands read."""

    schema_: Literal["lohp.report"] = Field(alias="schema")
    schema_version: StrictInt = 1
    family: StrictStr
    model: StrictStr
    test_domain: StrictInt | None = None  # a domain family's held-out domain
    tasks: list[StrictStr]
    samples_per_task: StrictInt = Field(ge=1)
    methods: list[ReportMethod]


def read_report_meta(data: Any, path: str) -> ReportMeta:
    """A report.json (``path`` names it), validated: a DataError names the first bad field."""
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise DataError(f"'{path}' is not a lohp evaluate report (schema {REPORT_SCHEMA}).")
    version = data.get("schema_version")
    if newer(version, REPORT_VERSION):
        raise DataError(
            f"'{path}' has schema_version {version}; this lohp reads up to {REPORT_VERSION}. "
            "Upgrade lohp."
        )
    return parse(ReportMeta, data, f"Report '{path}'", DataError)
