"""The training run directory of a policy (Lo-Hp, its ablations, diffusion, L2O): the check of
``--out`` before a run (resume, refuse, or ``--overwrite``), the policy's ``config.json``, what
every training loop does at the end of a step (metrics.jsonl, checkpoint), and the run's result.
Loading and using a trained policy is :mod:`lohp_cli.policy.directory`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from lohp_cli.artifacts.policy import POLICY_KIND, new_policy_meta, read_policy_header
from lohp_cli.checkpoint import append_metrics, read_json, state_dir
from lohp_cli.config import TrainConfig, stored_train_config
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.runtime import provenance
from lohp_cli.store.location import absolute_location
from lohp_cli.store.trajectory_store import TrajectoryStore

# the files and folders a training run writes into its directory
OWN_FILES = {
    "normalization.safetensors",
    "metrics.jsonl",
    "model.safetensors",
    "state",
    "state.old",
    "state.tmp",
    "curves.png",
    "tensorboard",
}

# settings that may change between a run and its resumption without changing what is learned
RESUMABLE_KEYS = {
    "out",  # a policy directory that was moved resumes where it is
    "steps",
    "max_minutes",
    "device",
    "overwrite",
    "checkpoint_every",
    "log_every",
    "cache_mb",
    "store",
    "threads",  # the intra-op threads change the speed (and the last bits), not what is learned
    "log",  # where the scalars also go
    # a stop rule, like steps: a run stopped by patience goes on when it is raised (val_tasks,
    # val_metric and val_every change which policy is kept, so they are not resumable)
    "patience",
}


@dataclass(frozen=True)
class TrainResult:
    policy: str
    step: int
    complete: bool
    final_loss: float | None
    wall_time_s: float
    stop_reason: str | None = None  # with --val-tasks: steps, patience or time

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in RESUMABLE_KEYS}


def config_differences(there: Any, here: Any, key: str = "config") -> list[str]:
    """``key: X there, Y here`` for each (dotted) key whose value differs between two configs
    as JSON (a missing key reads as ``None``)."""
    if not (isinstance(there, dict) and isinstance(here, dict)):
        return [] if there == here else [f"{key}: {there!r} there, {here!r} here"]
    prefix = "" if key == "config" else key + "."
    out: list[str] = []
    for k in sorted(set(there) | set(here)):
        out += config_differences(there.get(k), here.get(k), prefix + k)
    return out


def check_out_dir(out: Path, cfg: TrainConfig, fingerprint: dict[str, Any]) -> bool:
    """True when ``out`` holds a compatible run to resume; raise if it holds something else."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; give a directory for the policy.")
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        # a crash can leave the files written before config.json; anything else is not ours
        foreign = [
            p.name
            for p in (out.iterdir() if out.exists() else [])
            if p.name not in OWN_FILES and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        ]
        if foreign:
            raise ConfigError(
                f"Output '{out}' is a non-empty directory without a lohp policy (it holds "
                f"{foreign[0]!r}); choose another --out."
            )
        return False
    data = read_json(cfg_path)
    if not isinstance(data, dict) or data.get("kind") != POLICY_KIND:
        raise CompatibilityError(f"'{cfg_path}' is not a lohp policy config.")
    old = read_policy_header(data, out)
    same_store = old.store_fingerprint == fingerprint
    stored = stored_train_config(old.train_config)
    try:  # validated, so a field added since (at its default) compares equal to its absence
        stored = TrainConfig.from_stored(stored).model_dump(mode="json")
    except ValidationError:
        pass  # not a config of this lohp: other settings
    diffs = config_differences(_comparable(stored), _comparable(cfg.model_dump(mode="json")))
    if same_store and not diffs:
        return state_dir(out) is not None
    if not cfg.overwrite:
        shown = "; ".join(diffs[:3]) + ("; …" if len(diffs) > 3 else "")
        why = "another store" if not same_store else f"other settings ({shown})"
        raise CompatibilityError(
            f"'{out}' holds a policy trained on {why}; pass --overwrite to replace it or choose "
            "another --out."
        )
    for name in ("model.safetensors", "normalization.safetensors", "config.json", "metrics.jsonl",
                 "curves.png"):  # fmt: skip
        (out / name).unlink(missing_ok=True)
    for name in ("state", "state.old", "state.tmp", "tensorboard"):
        shutil.rmtree(out / name, ignore_errors=True)
    return False


def policy_config_json(
    cfg: TrainConfig,
    store: TrajectoryStore,
    fingerprint: dict[str, Any],
    n_steps: int,
    t_steps: int,
    device: str,
    runs: int,
    step: int,
    complete: bool,
    k: int | None = None,
    validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The policy's config.json (a validated :class:`PolicyMeta`, as JSON); ``k``: the matching
    factor of a method whose config has none (default ``cfg.k``); ``validation``: the held-out
    split and the best policy so far (:meth:`lohp_cli.policy.validation.Validator.record`)."""
    a = store.meta
    return new_policy_meta(
        method=cfg.method,
        k=getattr(cfg, "k") if k is None else k,  # noqa: B009 - Lo-Hp configs only have it
        N=n_steps,
        T=t_steps,
        param_count=a.param_count,
        condition_dim=a.condition_dim,
        layout=a.layout,
        store_compat=a.compat.to_json(),
        store_fingerprint=fingerprint,
        store_location=absolute_location(store.location),
        store_optimizers=a.config.get("optimizers"),
        runs_used=runs,
        normalization="normalization.safetensors",
        train_config=cfg.model_dump(mode="json"),
        trained_steps=step,
        complete=complete,
        provenance=provenance(device),
        **({} if validation is None else {"validation": validation}),
    ).to_json()


def end_of_step(
    step: int,
    cfg: Any,
    out: Path,
    terms: dict[str, Any],
    t_start: float,
    deadline: float | None,
    emit: Callable[[dict[str, Any]], None],
    write_policy: Callable[[int, bool], None],
    writer: bool = True,
) -> bool:
    """What every training loop does after step ``step`` (1-based) of ``cfg.steps``: every
    ``cfg.log_every`` steps and at the end, append ``{step, **terms, time_s}`` to metrics.jsonl
    (tensors in ``terms`` as floats, read only then) and emit it as a log event; every
    ``cfg.checkpoint_every`` steps, at the end and once past ``deadline`` (perf_counter
    seconds), write the policy (``writer``: this process writes files, rank 0). Returns True
    when past the deadline (stop training)."""
    if writer and (step % cfg.log_every == 0 or step == cfg.steps):
        values = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in terms.items()}
        line = {"step": step, **values, "time_s": round(time.perf_counter() - t_start, 3)}
        append_metrics(out / "metrics.jsonl", line)
        emit({"event": "log", **line, "steps": cfg.steps})
    timed_out = deadline is not None and time.perf_counter() > deadline
    if writer and (step % cfg.checkpoint_every == 0 or step == cfg.steps or timed_out):
        write_policy(step, step == cfg.steps)
    if timed_out:
        emit({"event": "timeout", "step": step})
    return timed_out
