"""The Zarr trajectory store: schema, writer, reader."""

from lohp_cli.store.schema import SCHEMA, SCHEMA_VERSION, parse_run_id, run_id
from lohp_cli.store.trajectory_store import TrajectoryStore, codecs_for
from lohp_cli.store.writer import RunWriter

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "RunWriter",
    "TrajectoryStore",
    "codecs_for",
    "parse_run_id",
    "run_id",
]
