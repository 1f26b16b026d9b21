"""lohp's artifacts as typed models: the trajectory store's root attributes (:mod:`.store`), its
runs' attributes and run index entries (:mod:`.run`), a policy directory's ``config.json``
(:mod:`.policy`), the generated store's attributes (:mod:`.generated`) and what is read of an
evaluate report (:mod:`.report`). Each is validated
where it is read; a newer schema or format, a missing field or a field of the wrong type is
refused naming it. Pydantic only: every layer may import these modules.
"""

from lohp_cli.artifacts.generated import GEN_SCHEMA, GEN_SCHEMA_VERSION, GeneratedMeta
from lohp_cli.artifacts.policy import (
    POLICY_FORMAT,
    POLICY_KIND,
    L2OPolicyMeta,
    PolicyHeader,
    PolicyMeta,
)
from lohp_cli.artifacts.report import ReportMeta
from lohp_cli.artifacts.run import IndexEntry, RunMeta
from lohp_cli.artifacts.store import SCHEMA, SCHEMA_VERSION, Compat, StoreMeta

__all__ = [
    "GEN_SCHEMA",
    "GEN_SCHEMA_VERSION",
    "POLICY_FORMAT",
    "POLICY_KIND",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Compat",
    "GeneratedMeta",
    "IndexEntry",
    "L2OPolicyMeta",
    "PolicyHeader",
    "PolicyMeta",
    "ReportMeta",
    "RunMeta",
    "StoreMeta",
]
