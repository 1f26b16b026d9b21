"""The trajectory store's schema, ``lohp.trajectories`` version 1 (see docs/store.md).

Root attributes: ``schema``, ``schema_version``, ``init_complete``, ``compat`` (what every run
of the store shares: task family spec, target model spec, steps, record_every, batch size, seed),
``layout`` (the flat parameter layout), ``condition_dim``, ``config`` (the resolved collect config
that created it), ``provenance`` (versions, machine, command line, time).
"""

from __future__ import annotations

from typing import Literal

from lohp_cli.artifacts.store import SCHEMA, SCHEMA_VERSION

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATUS_COMPLETE",
    "STATUS_RUNNING",
    "parse_run_id",
    "run_id",
]

RunStatus = Literal["running", "complete"]
STATUS_RUNNING: RunStatus = "running"
STATUS_COMPLETE: RunStatus = "complete"


def run_id(task_id: str, optimizer: str, replicate: int) -> str:
    """Deterministic run id ``<task_id>-<optimizer>-s<replicate>`` so that re-runs resume."""
    return f"{task_id}-{optimizer}-s{replicate}"


def parse_run_id(rid: str) -> tuple[str, str, int]:
    """Inverse of :func:`run_id`: ``(task_id, optimizer, replicate)``."""
    task_id, optimizer, rep = rid.rsplit("-", 2)
    return task_id, optimizer, int(rep.removeprefix("s"))
