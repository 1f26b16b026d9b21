"""The trajectory store's schema, ``lohp.trajectories`` version 1 (see docs/store.md).

Root attributes: ``schema``, ``schema_version``, ``init_complete``, ``compat`` (what every run
of the store shares: task family spec, target model spec, steps, record_every, batch size, seed),
``layout`` (the flat parameter layout), ``condition_dim``, ``config`` (the resolved collect config
that created it), ``provenance`` (versions, machine, command line, time).
"""

from __future__ import annotations

from lohp_cli.artifacts.run import (
    STATUS_COMPLETE,
    STATUS_RUNNING,
    RunStatus,
    parse_run_id,
    run_id,
    split_run_id,
)
from lohp_cli.artifacts.store import SCHEMA, SCHEMA_VERSION

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATUS_COMPLETE",
    "STATUS_RUNNING",
    "RunStatus",
    "parse_run_id",
    "run_id",
    "split_run_id",
]
