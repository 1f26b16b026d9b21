"""What ``lohp inspect`` says of a policy directory: its config.json (the header every policy has
and a weight generator's fields), its training progress (the last line of metrics.jsonl), and
with ``verify`` whether its weights load into the model its config describes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lohp_cli.artifacts.policy import read_policy_header, read_policy_meta
from lohp_cli.checkpoint import read_json
from lohp_cli.errors import LohpError


def last_metrics(path: Path) -> dict[str, Any] | None:
    """The last readable line of a policy's metrics.jsonl (None without one)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def summarize_policy(path: str, verify: bool = False) -> dict[str, Any]:
    """A policy directory's summary (CompatibilityError for a directory that is none); with
    ``verify``, ``problems`` lists what keeps it from loading (empty: it loads)."""
    out = Path(path)
    data = read_json(out / "config.json")
    header = read_policy_header(data, out)
    cfg = header.train_config
    s: dict[str, Any] = {
        "kind": "policy",
        "policy": str(out),
        "method": header.method,
        "trained_steps": header.trained_steps,
        "steps": cfg.get("steps"),
        "complete": header.complete,
        "optimizers": header.optimizers,
        "backbone": (cfg.get("policy") or {}).get("backbone"),
        "created_at": header.provenance.get("created_at"),
        "lohp_version": header.provenance.get("lohp_version"),
        "threads": header.provenance.get("threads"),
    }
    if isinstance(data, dict) and "param_count" in data and "layout" in data:
        meta = read_policy_meta(data, out)
        s.update(
            k=meta.k, N=meta.N, T=meta.T, param_count=meta.param_count,
            condition_dim=meta.condition_dim, runs_used=meta.runs_used,
            store_location=meta.store_location, family=meta.store_compat.family.name,
            model=meta.store_compat.model.name,
        )  # fmt: skip
    v = header.validation
    if v:  # train-policy --val-tasks: the held-out split and the best policy kept
        s.update(
            val_tasks=v.get("tasks"), val_metric=v.get("metric"), best_step=v.get("best_step"),
            best_score=v.get("best_score"), best_scores=v.get("best_scores"),
            stop_reason=v.get("stop_reason"),
        )  # fmt: skip
    last = last_metrics(out / "metrics.jsonl")
    s["last_metrics"] = last
    s["files"] = sorted(p.name for p in out.iterdir())
    if verify:
        s["problems"] = _load_problems(out)
        s["verified"] = not s["problems"]
    return s


def _load_problems(out: Path) -> list[str]:
    """Why the policy does not load (empty when ``load_policy`` builds it and loads its weights)."""
    from lohp_cli.policy.directory import load_policy

    try:
        load_policy(out, "cpu")
    except LohpError as exc:
        return [str(exc)]
    return []
