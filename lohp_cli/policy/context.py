"""What a policy needs of its tasks at run time: the task family, target model and frozen parts
of its store (:class:`TaskContext`), support-set probe banks for state-aware policies, and task
lists. Task ids are opaque here: only the family turns one into a task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from lohp_cli.artifacts.base import first_difference, parse
from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.config import ModelConfig, TaskConfig
from lohp_cli.errors import CompatibilityError, ConfigError, StoreError
from lohp_cli.policy.state import ProbeBank
from lohp_cli.store.frozen import load_frozen
from lohp_cli.store.sampler import NormStats
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks import Task, TaskFamily, make_family
from lohp_cli.tasks.families import SPLITS, TaskTensors
from lohp_cli.tasks.models import Frozen, build_target


@dataclass
class TaskContext:
    """The task family, target model and its frozen parts a policy was trained for."""

    family: TaskFamily
    model_cfg: ModelConfig
    frozen: Frozen
    store: TrajectoryStore

    def task(self, task_id: str) -> Task:
        """The family's task of this id (a ConfigError naming it if the family has none)."""
        return self.family.task(task_id)

    def task_data(self, task_id: str, device: str = "cpu") -> TaskTensors:
        """The tensors of one task for the store's target model."""
        return self.task(task_id).data(self.model_cfg, self.frozen, device)

    def build_target(self) -> torch.nn.Module:
        """A fresh target model of the store with its frozen parts (global torch RNG)."""
        return build_target(self.model_cfg, self.family.input_shape, self.family.ways, self.frozen)


def task_context(
    meta: PolicyMeta, store_location: str | None = None, data_root: str | None = None
) -> TaskContext:
    """Rebuild the family/model of a policy from its config; refuse a mismatched data set."""
    location = store_location or meta.store_location
    store = TrajectoryStore.open(location, mode="r")
    diff = first_difference(
        meta.store_compat.to_json(), store.meta.compat.to_json(), "",
        "the policy's store has", "this one",
    )  # fmt: skip
    if diff:
        raise CompatibilityError(
            f"Store '{location}' does not match the policy's store ({diff}); pass the store the "
            "policy was trained on with --store."
        )
    return store_task_context(store, data_root)


def store_task_context(store: TrajectoryStore, data_root: str | None = None) -> TaskContext:
    """The task family, target model and frozen parts of an open store; refuse a data set that
    differs from the one it was collected on."""
    compat = store.meta.compat
    fam = compat.family.to_json()
    stored_cfg = store.meta.config.get("task")
    stored_root = stored_cfg.get("data_root") if isinstance(stored_cfg, dict) else None
    where = f"Store '{store.location}' task family (compat.family)"
    task_cfg = parse(
        TaskConfig,
        {
            "family": fam["name"],
            **{k: v for k, v in fam.items() if k in TaskConfig.model_fields and k != "family"},
            "data_root": data_root if data_root is not None else stored_root,
        },
        where,
        StoreError,
    )
    family = make_family(task_cfg)
    if family.describe().get("data_fingerprint") != fam.get("data_fingerprint"):
        source = getattr(getattr(family, "data", None), "source", "?")
        raise CompatibilityError(
            f"The '{fam['name']}' data set found ({source}) differs from the one the "
            "policy's store was collected on (data fingerprint); point --data-root at that copy."
        )
    where = f"Store '{store.location}' target model (compat.model)"
    model_cfg = parse(ModelConfig, compat.model.to_json(), where, StoreError)
    return TaskContext(family, model_cfg, load_frozen(store, model_cfg, family), store)


def probe_bank(
    ctx: TaskContext,
    supports: dict[str, tuple[torch.Tensor, torch.Tensor]],
    stats: NormStats,
    device: str,
) -> ProbeBank:
    """Support sets ``{task_id: (x [M, *in], y [M])}`` for a state-aware policy."""
    bank = ProbeBank(ctx.build_target(), stats.mean, stats.std)
    for task_id, (x, y) in supports.items():
        bank.add(task_id, x, y, ctx.family.ways)
    return bank.to(device)


def support_probe_bank(
    ctx: TaskContext, task_ids: Iterable[str], stats: NormStats, device: str
) -> ProbeBank:
    """The support sets of ``task_ids`` (each built once, without its train/test tensors)."""
    supports = {}
    for tid in sorted(set(task_ids)):
        x, y, _ = ctx.task(tid).support_set(ctx.model_cfg, ctx.frozen)
        supports[tid] = (x, y)
    return probe_bank(ctx, supports, stats, device)


def policy_probe(
    model: torch.nn.Module,
    ctx: TaskContext,
    tasks: dict[str, TaskTensors],
    stats: NormStats,
    device: str,
) -> ProbeBank | None:
    """A probe bank when ``model`` is a state-aware policy, else None."""
    if not getattr(model, "needs_probe", False):
        return None
    return probe_bank(ctx, {k: (t.x_support, t.y_support) for k, t in tasks.items()}, stats, device)


def resolve_tasks(spec: str, family: TaskFamily, n: int) -> list[Task]:
    """Tasks from a split name, comma-separated ids, or ``@FILE`` (one id per line, # comments)."""
    if spec in SPLITS:
        return family.tasks(spec, n)  # type: ignore[arg-type]
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"Cannot read task list '{path}': {exc.strerror}.") from None
        ids = [ln.split("#", 1)[0].strip() for ln in lines]
    else:
        ids = [t.strip() for t in spec.split(",")]
    tasks = [family.task(t) for t in ids if t]
    if not tasks:
        raise ConfigError(f"No task ids in {spec!r}.")
    return tasks
