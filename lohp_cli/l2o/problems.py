"""Optimizees of the learned optimizers: batches of problems with a differentiable batched loss.

An :class:`Optimizee` is ``B`` problems of one size ``P`` optimised side by side:
``loss(theta [B, P], step) -> [B]`` (differentiable; ``step`` picks the minibatch of image
problems, synthetic problems ignore it), ``init() -> [B, P]`` and ``metrics(theta) -> {name: [B]}``
(the numbers a report shows: the loss, and test accuracy for image tasks).

A :class:`ProblemFamily` makes optimizees deterministically from ``(split, index, seed)``; a
*task* is what one optimizee's problems share (a condition-number/scale draw for ``quadratic``, a
λ draw for ``lasso``, a class subset and label order for image families), so that M-L2O can adapt to
one task with some problems and be scored on others of the same task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from lohp_cli.errors import CompatibilityError, ConfigError, StoreError
from lohp_cli.l2o.config import LassoConfig, QuadraticConfig
from lohp_cli.runtime import derive_seed


class Optimizee(Protocol):
    size: int
    batch: int

    def init(self) -> torch.Tensor:
        """Initial parameters ``[B, P]`` (a fresh copy)."""

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        """Training loss ``[B]`` of ``theta [B, P]`` (minibatch ``step`` for image problems)."""

    def metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation numbers ``{name: [B]}`` of ``theta [B, P]`` (no gradients)."""


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))  # type: ignore[arg-type]


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


@dataclass
class LeastSquares:
    """``B`` problems f(x) = ½‖A x − b‖² / m + λ ‖x‖₁ (λ = 0: a quadratic).

    ``a [B, m, P]``, ``b [B, m]``, ``x0 [B, P]``, ``lam [B]``.
    """

    a: torch.Tensor
    b: torch.Tensor
    x0: torch.Tensor
    lam: torch.Tensor
    scale_rows: bool = True

    @property
    def size(self) -> int:
        return self.a.shape[-1]

    @property
    def batch(self) -> int:
        return self.a.shape[0]

    def init(self) -> torch.Tensor:
        return self.x0.clone()

    def loss(self, theta: torch.Tensor, step: int = 0) -> torch.Tensor:
        r = torch.einsum("bmp,bp->bm", self.a, theta) - self.b  # [B, m]
        m = self.a.shape[1] if self.scale_rows else 1
        return 0.5 * (r**2).sum(-1) / m + self.lam * theta.abs().sum(-1)  # [B]

    @torch.no_grad()
    def metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(theta)}

    def subset(self, rows: slice) -> LeastSquares:
        """The problems ``rows`` of this batch."""
        return LeastSquares(
            self.a[rows], self.b[rows], self.x0[rows], self.lam[rows], self.scale_rows
        )

    def to(self, device: str) -> LeastSquares:
        return LeastSquares(
            self.a.to(device), self.b.to(device), self.x0.to(device), self.lam.to(device),
            self.scale_rows,
        )  # fmt: skip

    @torch.no_grad()
    def optimum(self, iters: int = 3000) -> torch.Tensor:
        """min f ``[B]`` (float64): least squares exactly; with λ > 0, by FISTA."""
        a, b = self.a.double(), self.b.double()
        m = a.shape[1] if self.scale_rows else 1
        if not bool((self.lam > 0).any()):
            x = torch.linalg.lstsq(a, b[..., None]).solution[..., 0]
            return LeastSquares(a, b, x, self.lam.double(), self.scale_rows).loss(x)
        lip = torch.linalg.matrix_norm(a, ord=2) ** 2 / m  # [B]
        step, lam = (1.0 / lip)[:, None], self.lam.double()[:, None]
        x = torch.zeros_like(a[:, 0, :])
        y, t = x.clone(), 1.0
        for _ in range(iters):
            grad = torch.einsum("bmp,bm->bp", a, torch.einsum("bmp,bp->bm", a, y) - b) / m
            z = y - step * grad
            x_new = torch.sign(z) * (z.abs() - step * lam).clamp_min(0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = x_new + (t - 1) / t_new * (x_new - x)
            x, t = x_new, t_new
        return LeastSquares(a, b, x, self.lam.double(), self.scale_rows).loss(x)


class ProblemFamily:
    """Makes optimizees: ``sample(split, index, seed, instances, shift)``."""

    name: str = ""

    def sample(
        self, split: str, index: int, seed: int, instances: int, shift: float = 0.0
    ) -> Optimizee:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What identifies the family (a policy is only run on the family it was trained for)."""
        raise NotImplementedError


def _orthonormal(gen: torch.Generator, b: int, n: int, k: int) -> torch.Tensor:
    """``[b, n, k]`` with orthonormal columns (QR of a Gaussian matrix)."""
    q, r = torch.linalg.qr(torch.randn(b, n, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]


class QuadraticFamily(ProblemFamily):
    """Random ill-conditioned quadratics f(x) = ½‖Ax − b‖²/m.

    A task draws κ = cond(AᵀA) and the largest singular value σ of A/√m (log-uniform in the
    configured ranges); its problems draw A = √m·U diag(s) Vᵀ with s log-spaced from σ down to
    σ/√κ, x* ~ N(0, I), b = A x* + noise, and start at x0 ~ N(0, I). ``shift`` moves both ranges
    up: log10 κ by ``shift`` and log10 σ by ``shift / 2`` (out-of-distribution tasks).
    """

    name = "quadratic"

    def __init__(self, cfg: QuadraticConfig) -> None:
        self.cfg = cfg

    def sample(
        self, split: str, index: int, seed: int, instances: int, shift: float = 0.0
    ) -> LeastSquares:
        c = self.cfg
        gen = _gen(seed, "quadratic", split, index)
        log_cond = _uniform(gen, *c.log10_cond) + shift
        log_scale = _uniform(gen, *c.log10_scale) + shift / 2
        r = min(c.rows, c.dim)
        s = 10**log_scale * torch.logspace(0, -log_cond / 2, r, dtype=torch.float64)  # [r]
        u = _orthonormal(gen, instances, c.rows, r)  # [B, m, r]
        v = _orthonormal(gen, instances, c.dim, r)  # [B, P, r]
        a = math.sqrt(c.rows) * (u * s) @ v.transpose(1, 2)  # [B, m, P]
        x_star = torch.randn(instances, c.dim, generator=gen, dtype=torch.float64)
        noise = c.noise * torch.randn(instances, c.rows, generator=gen, dtype=torch.float64)
        b = torch.einsum("bmp,bp->bm", a, x_star) + noise  # [B, m]
        x0 = torch.randn(instances, c.dim, generator=gen, dtype=torch.float64)
        lam = torch.zeros(instances, dtype=torch.float64)
        return LeastSquares(a.float(), b.float(), x0.float(), lam.float())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.cfg.model_dump(mode="json")}


class LassoFamily(ProblemFamily):
    """Random sparse regression f(x) = ½‖Ax − b‖² + λ‖x‖₁ (no 1/m: the usual LASSO scaling).

    A task draws λ; its problems draw A with N(0, 1/m) entries, a sparse x* (``sparsity·P``
    non-zeros, N(0, 1)), b = A x* + noise, and start at x0 = 0. ``shift`` scales A by
    10^(shift/2) and λ by (1 + shift).
    """

    name = "lasso"

    def __init__(self, cfg: LassoConfig) -> None:
        self.cfg = cfg

    def sample(
        self, split: str, index: int, seed: int, instances: int, shift: float = 0.0
    ) -> LeastSquares:
        c = self.cfg
        gen = _gen(seed, "lasso", split, index)
        lam = _uniform(gen, *c.lam) * (1 + shift)
        a = torch.randn(instances, c.rows, c.dim, generator=gen) / math.sqrt(c.rows)
        a = a * 10 ** (shift / 2)
        nnz = max(1, round(c.sparsity * c.dim))
        keep = torch.rand(instances, c.dim, generator=gen).argsort(-1) < nnz  # [B, P]
        x_star = torch.randn(instances, c.dim, generator=gen) * keep
        b = torch.einsum("bmp,bp->bm", a, x_star)
        b = b + c.noise * torch.randn(instances, c.rows, generator=gen)
        x0 = torch.zeros(instances, c.dim)
        return LeastSquares(a, b, x0, torch.full((instances,), lam), scale_rows=False)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.cfg.model_dump(mode="json")}


@dataclass
class ImageProblems:
    """``B`` target-model trainings: row i trains ``net`` on task ``tasks[i]`` from ``x0[i]``.

    The loss of step t is the cross-entropy on minibatch t of that row's task (indices drawn from
    a generator seeded by (seed, row, t), so a loss can be re-evaluated exactly).
    """

    net: nn.Module
    tasks: list[Any]  # TaskTensors per row
    x0: torch.Tensor  # [B, P]
    batch_size: int
    seed: int

    @property
    def size(self) -> int:
        return self.x0.shape[1]

    @property
    def batch(self) -> int:
        return self.x0.shape[0]

    def init(self) -> torch.Tensor:
        return self.x0.clone()

    def subset(self, rows: slice) -> ImageProblems:
        """The problems ``rows`` of this batch (with their own minibatch stream)."""
        seed = derive_seed(self.seed, "subset", rows.start, rows.stop)
        return ImageProblems(self.net, self.tasks[rows], self.x0[rows], self.batch_size, seed)

    def _minibatch(self, row: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.tasks[row]
        n = data.y_train.shape[0]
        gen = _gen(self.seed, "minibatch", row, step)
        idx = torch.randint(0, n, (min(self.batch_size, n),), generator=gen).to(data.y_train.device)
        return data.x_train[idx], data.y_train[idx]

    def loss(self, theta: torch.Tensor, step: int = 0) -> torch.Tensor:
        from lohp_cli.tasks.layout import functional_forward

        self.net.train()
        out = []
        for i in range(theta.shape[0]):
            xb, yb = self._minibatch(i, step)
            logits = functional_forward(self.net, theta[i], xb)  # [b, classes]
            out.append(nn.functional.cross_entropy(logits, yb))
        return torch.stack(out)  # [B]

    @torch.no_grad()
    def metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        from lohp_cli.tasks.scoring import accuracy

        acc, test_loss, train_loss = [], [], []
        for i in range(theta.shape[0]):
            a, lo = accuracy(self.net, theta[i], self.tasks[i], "test")
            acc.append(a)
            test_loss.append(lo)
            train_loss.append(accuracy(self.net, theta[i], self.tasks[i], "train")[1])
        return {
            "loss": torch.tensor(train_loss),
            "test_loss": torch.tensor(test_loss),
            "test_acc": torch.tensor(acc),
        }


class ImageProblemFamily(ProblemFamily):
    """The store's image family and target model: tasks from its splits, fresh initial weights.

    ``source`` tasks are the store's tasks; ``target`` tasks are the family's held-out split (as
    ``lohp evaluate`` uses). Initial weights come from the target model's own initialisation,
    seeded per (seed, split, task, instance).
    """

    name = "store"

    def __init__(self, store_location: str, data_root: str | None = None, batch_size: int = 0):
        from lohp_cli.policy.context import store_task_context
        from lohp_cli.store.trajectory_store import TrajectoryStore

        store = TrajectoryStore.open(store_location, mode="r")
        compat = store.meta.compat
        fam = compat.family.name
        from lohp_cli.tasks.families import FAMILIES

        if fam not in FAMILIES:
            raise StoreError(
                f"Store '{store_location}' holds task family {fam!r}, which has no data set to "
                f"train optimizees on; L2O needs a store of {', '.join(sorted(FAMILIES))} "
                "(or --family quadratic|lasso)."
            )
        self.ctx = store_task_context(store, data_root)
        self.store = store
        self.compat = compat
        self.batch_size = batch_size or compat.batch_size
        self._data: dict[str, Any] = {}
        self.net = self._build(0)
        self.source_ids = store.task_ids()
        if not self.source_ids:
            raise StoreError(f"Store '{store_location}' has no tasks; run 'lohp collect' first.")

    def _build(self, seed: int) -> nn.Module:
        from lohp_cli.tasks.models import build_target

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fam = self.ctx.family
            cfg = self.ctx.model_cfg
            return build_target(cfg, fam.data.image_shape, fam.cfg.ways, self.ctx.frozen)

    def task_data(self, task_id: str) -> Any:
        if task_id not in self._data:
            self._data[task_id] = self.ctx.task_data(task_id)
        return self._data[task_id]

    def task_ids(self, split: str, index: int) -> str:
        if split in ("source", "tune"):
            return self.source_ids[index % len(self.source_ids)]
        return self.ctx.family.tasks(split, index + 1)[index].id  # type: ignore[arg-type]

    def initial(self, seed: int, *parts: object) -> torch.Tensor:
        from lohp_cli.tasks.layout import flat_params

        return flat_params(self._build(derive_seed(seed, "init", *parts)))

    def sample(
        self, split: str, index: int, seed: int, instances: int, shift: float = 0.0
    ) -> ImageProblems:
        if shift:
            raise ConfigError("shift applies to synthetic families only; image tasks use splits.")
        tid = self.task_ids(split, index)
        x0 = torch.stack([self.initial(seed, split, tid, j) for j in range(instances)])
        data = [self.task_data(tid)] * instances
        return ImageProblems(self.net, data, x0, self.batch_size, derive_seed(seed, split, index))

    def sample_stored(
        self, optimizer: str, index: int, seed: int, instances: int
    ) -> tuple[ImageProblems, torch.Tensor, int]:
        """Problems started from stored runs of ``optimizer``, with their recorded states.

        Returns ``(problems, states [T+1, B, P], record_every)``.
        """
        import numpy as np

        runs = [(rid, a) for rid, a in self.store.iter_runs() if a.optimizer == optimizer]
        if not runs:
            have = sorted({a.optimizer for _, a in self.store.iter_runs()})
            raise ConfigError(
                f"Store '{self.store.location}' has no complete {optimizer} runs to imitate; it "
                f"has {', '.join(have) or 'none'}. Set l2o.teacher to one of those."
            )
        gen = _gen(seed, "stored", index)
        pick = torch.randint(0, len(runs), (instances,), generator=gen).tolist()
        states, data = [], []
        for j in pick:
            rid, meta = runs[j]
            w = self.store.weights(rid)
            if not np.isfinite(w).all():
                raise StoreError(f"Run {rid} in '{self.store.location}' has non-finite weights.")
            states.append(torch.from_numpy(np.asarray(w, dtype=np.float32)))
            data.append(self.task_data(meta.task_id))
        st = torch.stack(states, 1)  # [T+1, B, P]
        r = self.compat.record_every
        prob = ImageProblems(
            self.net, data, st[0].clone(), self.batch_size, derive_seed(seed, index)
        )
        return prob, st, r

    def describe(self) -> dict[str, Any]:
        return {"name": "store", "store_compat": self.compat.to_json()}


def make_problem_family(
    l2o_cfg: Any, store: str | None = None, data_root: str | None = None
) -> ProblemFamily:
    """The optimizee family an :class:`~lohp_cli.l2o.config.L2OConfig` names."""
    if l2o_cfg.family == "quadratic":
        return QuadraticFamily(l2o_cfg.quadratic)
    if l2o_cfg.family == "lasso":
        return LassoFamily(l2o_cfg.lasso)
    if store is None:
        raise ConfigError("l2o.family=store needs --store (or use --family quadratic|lasso).")
    return ImageProblemFamily(store, data_root, l2o_cfg.image_batch)


def check_same_family(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Raise :class:`CompatibilityError` when two family descriptions differ."""
    if a != b:
        keys = sorted(set(a) | set(b))
        diff = next((k for k in keys if a.get(k) != b.get(k)), "name")
        raise CompatibilityError(
            f"{what} was trained on another optimizee family ({diff}: {a.get(diff)!r} vs "
            f"{b.get(diff)!r}); compare learned optimizers of one family at a time."
        )
