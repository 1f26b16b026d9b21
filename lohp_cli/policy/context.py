"""What a policy needs of its tasks at run time: the task family, target model and extractor of
its store (:class:`TaskContext`), support-set probe banks for state-aware policies, and task lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lohp_cli.config import ModelConfig, TaskConfig
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.policy.state import ProbeBank
from lohp_cli.store.extractor import load_extractor
from lohp_cli.store.sampler import NormStats
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks import TaskFamily, TaskSpec, make_family
from lohp_cli.tasks.families import SPLITS
from lohp_cli.tasks.inputs import TaskTensors, support_set
from lohp_cli.tasks.models import FeatureExtractor, build_target


@dataclass
class TaskContext:
    """The task family, target model and extractor a policy was trained for."""

    family: TaskFamily
    model_cfg: ModelConfig
    extractor: FeatureExtractor | None
    store: TrajectoryStore


def task_context(
    meta: dict[str, Any], store_location: str | None = None, data_root: str | None = None
) -> TaskContext:
    """Rebuild the family/model of a policy from its config; refuse a mismatched data set."""
    location = store_location or meta["store_location"]
    store = TrajectoryStore.open(location, mode="r")
    compat = store.attrs.get("compat", {})
    if compat != meta["store_compat"]:
        raise CompatibilityError(
            f"Store '{location}' does not match the policy's store (task family, model or "
            "trajectory settings differ); pass the store the policy was trained on with --store."
        )
    fam = dict(compat["family"])
    stored_cfg = store.attrs.get("config", {}).get("task", {})
    task_cfg = TaskConfig.model_validate(
        {
            "family": fam["name"],
            **{k: v for k, v in fam.items() if k in TaskConfig.model_fields and k != "family"},
            "data_root": data_root if data_root is not None else stored_cfg.get("data_root"),
        }
    )
    family = make_family(task_cfg)
    if family.data.fingerprint() != fam["data_fingerprint"]:
        raise CompatibilityError(
            f"The '{fam['name']}' data set found ({family.data.source}) differs from the one the "
            "policy's store was collected on (data fingerprint); point --data-root at that copy."
        )
    model_cfg = ModelConfig.model_validate(compat["model"])
    return TaskContext(family, model_cfg, load_extractor(store, model_cfg, family), store)


def probe_bank(
    ctx: TaskContext,
    supports: dict[str, tuple[torch.Tensor, torch.Tensor]],
    stats: NormStats,
    device: str,
) -> ProbeBank:
    """Support sets ``{task_id: (x [M, *in], y [M])}`` for a state-aware policy."""
    net = build_target(ctx.model_cfg, ctx.family.data.image_shape, ctx.family.cfg.ways)
    bank = ProbeBank(net, stats.mean, stats.std)
    for task_id, (x, y) in supports.items():
        bank.add(task_id, x, y, ctx.family.cfg.ways)
    return bank.to(device)


def support_probe_bank(
    ctx: TaskContext, task_ids: Iterable[str], stats: NormStats, device: str
) -> ProbeBank:
    """The support sets of ``task_ids`` (each built once, without its train/test tensors)."""
    supports = {}
    for tid in sorted(set(task_ids)):
        x, y, _ = support_set(ctx.family, TaskSpec.from_id(tid), ctx.model_cfg, ctx.extractor)
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


def resolve_tasks(spec: str, family: TaskFamily, n: int) -> list[TaskSpec]:
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
    specs = [TaskSpec.from_id(t) for t in ids if t]
    if not specs:
        raise ConfigError(f"No task ids in {spec!r}.")
    nclass = family.data.num_classes
    for s in specs:
        if (
            len(s.classes) != family.cfg.ways
            or len(set(s.classes)) != len(s.classes)
            or not all(0 <= c < nclass for c in s.classes)
        ):
            raise ConfigError(
                f"Task '{s.task_id}' is not a {family.cfg.ways}-way task of distinct classes "
                f"0..{nclass - 1} of '{family.name}'."
            )
    return specs
