"""Stream matched sub-trajectories from a trajectory store for policy training.

Nothing loads the whole store: statistics are accumulated one run at a time, and batches read only
the runs they draw (through a cache bounded in megabytes), so memory is bounded by
batch size × (N+1) × P plus the cache, not by the store's size.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from lohp_cli.config import OPTIMIZERS
from lohp_cli.errors import CompatibilityError, ConfigError, DataError, StoreError
from lohp_cli.store.trajectory_store import TrajectoryStore
from lohp_cli.tasks.layout import ParamLayout
from lohp_cli.tasks.symmetry import ClassSymmetry


@dataclass(frozen=True)
class RunRef:
    run_id: str
    task_id: str
    optimizer: str
    states: int  # recorded states T + 1


@dataclass(frozen=True)
class NormStats:
    """Per-coordinate normalisation of weights and conditions, and the σ schedule.

    ``mean``/``std`` ``[P]``; ``cond_mean``/``cond_std`` ``[D]``; ``step_rms`` ``[N]``: the root
    mean square of the matched offline step ``x_{i+1} − x_i`` in normalised units, averaged over
    runs and coordinates.
    """

    mean: torch.Tensor
    std: torch.Tensor
    cond_mean: torch.Tensor
    cond_std: torch.Tensor
    step_rms: torch.Tensor

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.__dict__.items()}

    @classmethod
    def from_tensors(
        cls,
        t: dict[str, torch.Tensor],
        size: int | None = None,
        cond_dim: int | None = None,
        where: str = "normalization.safetensors",
    ) -> NormStats:
        """The statistics saved by :meth:`to_tensors`, checked: every tensor there, finite, 1-D,
        ``mean``/``std`` of ``size`` and ``cond_mean``/``cond_std`` of ``cond_dim`` entries
        (when given), scales positive; a CompatibilityError naming ``where`` otherwise."""
        shapes = {"mean": size, "std": size, "cond_mean": cond_dim, "cond_std": cond_dim,
                  "step_rms": None}  # fmt: skip
        for key, n in shapes.items():
            v = t.get(key)
            if v is None:
                raise CompatibilityError(f"{where} has no tensor '{key}'.")
            if v.ndim != 1 or (n is not None and v.shape[0] != n):
                want = f"[{n}]" if n is not None else "1-D"
                raise CompatibilityError(f"{where}: '{key}' is {list(v.shape)}, not {want}.")
            if not torch.isfinite(v).all() or (key.endswith("std") and not (v > 0).all()):
                raise CompatibilityError(f"{where}: '{key}' is not finite and positive.")
        return cls(**{k: t[k].float() for k in shapes})

    def normalize(self, theta: torch.Tensor) -> torch.Tensor:
        """Weights ``[..., P]`` -> normalised space."""
        return (theta - self.mean.to(theta)) / self.std.to(theta)

    def denormalize(self, s: torch.Tensor) -> torch.Tensor:
        """Normalised ``[..., P]`` -> weights."""
        return s * self.std.to(s) + self.mean.to(s)

    def normalize_condition(self, c: torch.Tensor) -> torch.Tensor:
        return (c - self.cond_mean.to(c)) / self.cond_std.to(c)


def select_runs(
    store: TrajectoryStore, optimizers: tuple[str, ...] | None, check: bool = True
) -> list[RunRef]:
    """Complete runs of the store, optionally only those of ``optimizers``.

    Which runs are selected depends only on validated attributes (:class:`RunMeta`, checked
    against each run's id and fingerprint). With ``check`` every selected run's weights and its
    task's condition are checked against the store's layout first (metadata only), so that a
    stage fails before it spends time, naming the run and the array."""
    runs = [RunRef(rid, a.task_id, a.optimizer, a.steps_written) for rid, a in store.iter_runs()]
    if not runs:
        raise StoreError(
            f"Store '{store.location}' has no complete runs; run 'lohp collect' first."
        )
    if optimizers is not None:
        have = sorted({r.optimizer for r in runs})
        runs = [r for r in runs if r.optimizer in optimizers]
        if not runs:
            raise ConfigError(
                f"No complete runs of optimizer(s) {', '.join(optimizers)} in '{store.location}'; "
                f"it has {', '.join(have)}."
            )
    unknown = next((r for r in runs if r.optimizer not in OPTIMIZERS), None)
    if unknown is not None:
        raise StoreError(
            f"Run {unknown.run_id} in '{store.location}' was collected with optimizer "
            f"{unknown.optimizer!r}, which this lohp does not know ({', '.join(OPTIMIZERS)}); "
            "upgrade lohp or choose --optimizers."
        )
    if check:
        check_runs(store, runs)
    return runs


def check_runs(store: TrajectoryStore, runs: list[RunRef]) -> None:
    """Every run's weights and its task's condition, checked against the store's layout
    (metadata only; a StoreError names the first run and array that does not fit)."""
    for ref in runs:
        store.check_run(ref.run_id, ref.task_id)


def matched_indices(states: int, k: int) -> list[int]:
    """Recorded-state indices 0, k, 2k, …, T of the online steps (k must divide T = states − 1)."""
    t = states - 1
    if t % k:
        divisors = [d for d in range(1, t + 1) if t % d == 0]
        raise ConfigError(
            f"k={k} does not divide T={t} recorded steps of the store; choose k in {divisors}."
        )
    return list(range(0, states, k))


CONSTANT_SCALE = 1e-4  # the normalisation scale of a coordinate that never moves
SCOPES = ("coordinate", "tensor")  # what one weight mean and scale is shared by


def pool_by_tensor(sums: np.ndarray, layout: ParamLayout) -> np.ndarray:
    """Per-coordinate sums ``[P]`` -> each tensor's mean of them, broadcast back to ``[P]``.

    Pooling the running sums of x and x² (over the same number of rows for every coordinate)
    this way turns the per-coordinate mean and variance into each tensor's pooled ones."""
    if layout.size != sums.shape[0]:
        raise CompatibilityError(
            f"The store's layout holds {layout.size} parameters, its runs {sums.shape[0]}."
        )
    out = np.empty_like(sums)
    for e in layout.entries:
        part = slice(e.offset, e.offset + e.numel)
        out[part] = sums[part].sum() / e.numel
    return out


def compute_stats(
    store: TrajectoryStore,
    runs: list[RunRef],
    k: int,
    normalize: str,
    eps: float = 1e-6,
    sym: ClassSymmetry | None = None,
    scope: str = "coordinate",
) -> NormStats:
    """One streaming pass over ``runs``: weight and condition z-scores and the σ schedule.

    With ``sym`` the statistics are averaged over class rows, so that reordering the classes
    commutes with normalisation (class augmentation relies on it). ``scope="tensor"`` gives
    every coordinate of a parameter tensor of the store's layout that tensor's pooled mean and
    scale (the same rows and fallbacks, pooled over its coordinates), still as ``[P]`` vectors.
    """
    if scope not in SCOPES:
        raise ConfigError(f"Unknown normalization scope {scope!r}; choose one of {SCOPES}.")
    n = s1 = s2 = None
    a1 = a2 = None  # sums over every matched state (for coordinates constant at θ_0)
    n_all = 0
    step_sq = None
    c1 = c2 = None
    cond_n = 0
    seen_tasks: set[str] = set()
    for ref in runs:
        w = store.weights(ref.run_id).astype(np.float64)  # [T+1, P]
        if not np.isfinite(w).all():
            raise DataError(f"Run {ref.run_id} in '{store.location}' has non-finite weights.")
        x = w[matched_indices(w.shape[0], k)]  # [N+1, P]
        rows = x[:1] if normalize == "init" else x
        if s1 is None:
            n, s1, s2 = 0, np.zeros(w.shape[1]), np.zeros(w.shape[1])
            a1, a2 = np.zeros(w.shape[1]), np.zeros(w.shape[1])
            step_sq = np.zeros((x.shape[0] - 1, w.shape[1]))
        n += rows.shape[0]
        s1 += rows.sum(0)
        s2 += (rows**2).sum(0)
        n_all += x.shape[0]
        a1 += x.sum(0)
        a2 += (x**2).sum(0)
        step_sq += np.diff(x, axis=0) ** 2
        if ref.task_id not in seen_tasks:
            seen_tasks.add(ref.task_id)
            c = store.condition(ref.task_id).astype(np.float64)
            c1 = c.copy() if c1 is None else c1 + c
            c2 = c**2 if c2 is None else c2 + c**2
            cond_n += 1
    if scope == "tensor":
        layout = ParamLayout.from_json(store.meta.layout)
        s1, s2, a1, a2 = (pool_by_tensor(v, layout) for v in (s1, s2, a1, a2))
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0)) + eps
    # Coordinates constant at θ_0 (batch-norm γ = 1, β = 0) take the scale of their spread over
    # the whole trajectories, so a unit step in normalised space is the size they really move; a
    # coordinate that never moves gets a tiny scale (it stays put) instead of a unit one, which
    # moved it by O(1) in weight space.
    amean = a1 / n_all
    spread = np.sqrt(np.maximum(a2 / n_all - amean**2, 0))
    std = np.where(std < 1e-4, np.maximum(spread, CONSTANT_SCALE), std)
    cmean = c1 / cond_n
    cstd = np.sqrt(np.maximum(c2 / cond_n - cmean**2, 0)) + 1e-3
    if sym is not None:
        mean, std = (sym.symmetrize(torch.from_numpy(a)).numpy() for a in (mean, std))
        cmean, cstd = (sym.symmetrize_cond(torch.from_numpy(a)).numpy() for a in (cmean, cstd))
    step_rms = np.sqrt((step_sq / len(runs) / std**2).mean(1))  # [N]
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return NormStats(f32(mean), f32(std), f32(cmean), f32(cstd), f32(step_rms))


@dataclass
class Batch:
    """A batch of matched trajectories in normalised space."""

    x: torch.Tensor  # [B, N+1, P] matched offline states θ_{k·i}, normalised
    cond: torch.Tensor  # [B, D] normalised task conditions
    opt: torch.Tensor  # [B] optimizer index (into OPTIMIZERS)
    run_ids: list[str]
    task_ids: list[str]
    perms: torch.Tensor | None = None  # [B, C] class reordering of each row (augmentation)

    def to(self, device: str) -> Batch:
        return Batch(
            self.x.to(device),
            self.cond.to(device),
            self.opt.to(device),
            self.run_ids,
            self.task_ids,
            self.perms,
        )


class TrajectorySampler:
    """Draws batches of matched trajectories; a run is read from the store on first use."""

    def __init__(
        self,
        store: TrajectoryStore,
        runs: list[RunRef],
        k: int,
        stats: NormStats,
        cache_mb: float = 32.0,
        sym: ClassSymmetry | None = None,
    ) -> None:
        self.store = store
        self.sym = sym
        self.runs = runs
        self.k = k
        self.stats = stats
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_bytes = 0
        self.cache_limit = int(cache_mb * 2**20)
        self.reads = 0

    def run(self, ref: RunRef) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [N+1, P], c [D])`` of one run, normalised."""
        hit = self.cache.get(ref.run_id)
        if hit is not None:
            self.cache.move_to_end(ref.run_id)
            return hit
        idx = matched_indices(ref.states, self.k)
        w = torch.from_numpy(self.store.weights(ref.run_id)[idx])  # [N+1, P]
        if not torch.isfinite(w).all():
            raise DataError(f"Run {ref.run_id} in '{self.store.location}' has non-finite weights.")
        c = torch.from_numpy(self.store.condition(ref.task_id))
        item = (self.stats.normalize(w), self.stats.normalize_condition(c))
        self.reads += 1
        size = item[0].numel() * 4
        if size <= self.cache_limit:
            self.cache[ref.run_id] = item
            self.cache_bytes += size
            while self.cache_bytes > self.cache_limit:
                _, (old, _) = self.cache.popitem(last=False)
                self.cache_bytes -= old.numel() * 4
        return item

    def batch(self, size: int, gen: torch.Generator) -> Batch:
        """``size`` runs drawn uniformly with replacement using ``gen``.

        With a class symmetry, each drawn run gets its classes reordered by a random permutation.
        """
        pick = torch.randint(0, len(self.runs), (size,), generator=gen).tolist()
        return self.take([self.runs[i] for i in pick], gen)

    def take(self, refs: list[RunRef], gen: torch.Generator | None = None) -> Batch:
        """A batch of the runs ``refs``, in that order; with a class symmetry and ``gen``, each
        run's classes reordered at random (without ``gen``: as recorded, e.g. validation)."""
        items = [self.run(r) for r in refs]
        x = torch.stack([x for x, _ in items])  # [B, N+1, P]
        cond = torch.stack([c for _, c in items])  # [B, D]
        perms = None
        if self.sym is not None and gen is not None:
            perms = self.sym.random_perms(len(refs), gen)
            x, cond = self.sym.permute(x, cond, perms)
        return Batch(
            x,
            cond,
            torch.tensor([OPTIMIZERS.index(r.optimizer) for r in refs]),
            [r.run_id for r in refs],
            [r.task_id for r in refs],
            perms,
        )
