"""The endpoints of a store's runs: the final recorded weights of each complete run, with the
conditions of their tasks. What memorisation baselines copy, average and perturb."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lohp_cli.errors import DataError
from lohp_cli.store.sampler import RunRef, select_runs
from lohp_cli.store.trajectory_store import TrajectoryStore


@dataclass(frozen=True)
class Endpoints:
    """Endpoints of R runs over Q distinct tasks.

    ``weights [R, P]``: the last recorded state θ_T of each run, in run-id order;
    ``task_of_run [R]``: index of each run's task into ``task_ids`` (Q, sorted);
    ``conditions [Q, D]``: the stored (raw, unnormalised) condition of each task.
    """

    runs: tuple[RunRef, ...]
    weights: torch.Tensor
    task_ids: tuple[str, ...]
    task_of_run: torch.Tensor
    conditions: torch.Tensor

    def first_run(self, task: int) -> int:
        """The first run (in run-id order) of task ``task`` (an index into ``task_ids``)."""
        return self.task_of_run.tolist().index(task)


def load_endpoints(store: TrajectoryStore, optimizers: list[str] | None) -> Endpoints:
    """The endpoints of the store's complete runs of ``optimizers`` (None: every optimizer).

    A store without such runs is a ConfigError naming the optimizers it has (``select_runs``).
    """
    refs = select_runs(store, tuple(optimizers) if optimizers else None)
    rows = []
    for ref in refs:
        w = store.weights(ref.run_id, ref.states - 1, ref.states)  # [1, P]
        if w.shape[0] != 1 or not np.isfinite(w).all():
            raise DataError(
                f"Run {ref.run_id} in '{store.location}' has no finite final state; "
                "check the store with 'lohp inspect --verify'."
            )
        rows.append(w[0])
    task_ids = tuple(sorted({r.task_id for r in refs}))
    index = {t: q for q, t in enumerate(task_ids)}
    conditions = np.stack([store.condition(t) for t in task_ids])  # [Q, D]
    return Endpoints(
        tuple(refs),
        torch.from_numpy(np.stack(rows)).float(),
        task_ids,
        torch.tensor([index[r.task_id] for r in refs]),
        torch.from_numpy(conditions).float(),
    )
