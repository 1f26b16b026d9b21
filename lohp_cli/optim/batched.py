"""Many runs of one model and one optimizer trained together: the batched twin of ``train_loop``.

R runs hold their trainable parameters stacked, one leaf ``[R, *shape]`` per parameter tensor, and
step together: the forward pass is ``torch.vmap`` over ``torch.func.functional_call`` of one
template module, the per-run mean losses are summed (so each run's gradient is its own), and one
optimizer steps the stacked leaves. SGD (momentum, Nesterov, weight decay) and Adam/AdamW are
elementwise, so ``torch.optim`` over stacked leaves is each run's own optimizer; SAM needs each
run's own gradient norm, so its ascent step is taken here, per run, around the base optimizer.

Each run draws its minibatches with its own generator exactly as ``train_loop`` does (the same
indices, in the same order), from its own data (runs of different tasks in one batch).

Models with buffers (BatchNorm: ``cnn``) or frozen parameters inside the module (``lora``) are not
batched: :func:`batchable` says so and callers take the one-run path for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from lohp_cli.config import OptimizersConfig
from lohp_cli.optim.factory import build_optimizer
from lohp_cli.optim.loop import BatchSchedule
from lohp_cli.tasks.layout import ParamLayout

# record(θ [R, P], loss [R], acc [R]) at t = 0, r, 2r, …, steps (θ before step t)
BatchedRecord = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def batchable(module: nn.Module) -> bool:
    """Whether runs of ``module`` can be trained stacked: no buffers (BatchNorm running stats)
    and no frozen parameters (a LoRA backbone); the rest takes the one-run path."""
    return not any(True for _ in module.buffers()) and all(
        p.requires_grad for p in module.parameters()
    )


class StackedData:
    """The training sets of R runs (runs of one task share its tensors) for batched gathers."""

    def __init__(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        slot: dict[int, int] = {}
        uniq: list[tuple[torch.Tensor, torch.Tensor]] = []
        index = []
        for x, y in zip(xs, ys, strict=True):
            if id(x) not in slot:
                slot[id(x)] = len(uniq)
                uniq.append((x, y))
            index.append(slot[id(x)])
        self.sizes = [int(y.shape[0]) for y in ys]  # N of each run's task
        n = max(self.sizes)
        x0, y0 = uniq[0]
        if len(uniq) == 1:
            self.x, self.y = x0.unsqueeze(0), y0.unsqueeze(0)  # [1, N, ...], [1, N]
        else:  # padded to the largest task; a run's indices stay below its own N
            self.x = x0.new_zeros((len(uniq), n, *x0.shape[1:]))  # [U, N, ...]
            self.y = y0.new_zeros((len(uniq), n))  # [U, N]
            for u, (x, y) in enumerate(uniq):
                self.x[u, : y.shape[0]] = x
                self.y[u, : y.shape[0]] = y
        self.task = torch.tensor(index, device=x0.device)  # [R] slot of each run's task

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's minibatch from indices ``idx [R, B]``: ``x [R, B, ...]``, ``y [R, B]``."""
        t = self.task[:, None]  # [R, 1]
        return self.x[t, idx], self.y[t, idx]


class BatchedTrainer:
    """R runs of ``module``'s architecture with optimizer ``name``, from starts ``theta0 [R, P]``.

    ``module`` is a template only (its own parameters are never used nor changed).
    """

    def __init__(
        self, module: nn.Module, name: str, cfg: OptimizersConfig, theta0: torch.Tensor
    ) -> None:
        if not batchable(module):
            raise ValueError("a model with buffers or frozen parameters cannot be batched")
        self.module = module
        self.layout = ParamLayout.of(module)
        self.runs = theta0.shape[0]
        self.leaves = [  # [R, *shape] each
            theta0[:, e.offset : e.offset + e.numel]
            .reshape(self.runs, *e.shape)
            .clone()
            .requires_grad_(True)
            for e in self.layout.entries
        ]
        self.names = [e.name for e in self.layout.entries]
        self.sam = cfg.sam if name == "sam" else None
        self.opt = build_optimizer(cfg.sam.base if self.sam else name, self.leaves, cfg)
        self._forward = torch.vmap(self._one_forward)

    def _one_forward(self, leaves: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, dict(zip(self.names, leaves, strict=True)), (x,))

    def theta(self) -> torch.Tensor:
        """The current weights ``[R, P]`` (a detached copy)."""
        return torch.cat([p.detach().reshape(self.runs, -1) for p in self.leaves], 1)

    def losses(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run mean cross-entropy ``[R]`` and logits ``[R, B, classes]`` of ``xb [R, B, ...]``
        and ``yb [R, B]``. The log-softmax runs over dim 1 of ``[R, classes, B]``: on CPU, one over
        a last dim of a few classes is ten times slower, and one over the classes of all runs'
        rows at once (``[classes, R·B]``) would round a row by its place among them, so a run's
        numbers would depend on the runs beside it; per-run blocks do not."""
        logits = self._forward(tuple(self.leaves), xb)  # [R, B, classes]
        logp = torch.log_softmax(logits.transpose(1, 2).contiguous(), 1)  # [R, classes, B]
        ce = -logp.gather(1, yb.unsqueeze(1)).squeeze(1)  # [R, B]
        return ce.mean(1), logits

    def _backward(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for p in self.leaves:
            p.grad = None
        loss, logits = self.losses(xb, yb)
        loss.sum().backward()  # the sum's gradient in run r's leaves is run r's own gradient
        return loss.detach(), logits.detach()

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every run; returns per-run (loss [R], acc [R]) before the step."""
        loss, logits = self._backward(xb, yb)
        acc = (logits.argmax(-1) == yb).float().mean(1)  # [R]
        if self.sam is not None:
            self._sam_ascent_and_descent(xb, yb)
        self.opt.step()
        return loss, acc

    def _sam_ascent_and_descent(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """SAM's two passes per run (``SAM.first_step``/``second_step`` with each run's own
        gradient norm): move to w + e_r, take the gradient there, come back to w."""
        rho, adaptive = self.sam.rho, self.sam.adaptive  # type: ignore[union-attr]
        with torch.no_grad():
            scaled = [(torch.abs(p) if adaptive else 1.0) * p.grad for p in self.leaves]
            # per run and leaf, as SAM._grad_norm: a row-wise norm of [R, n] reduces in an order
            # that depends on R, so a run's numbers would depend on the size of its group
            norm = torch.stack(
                [torch.stack([g[r].norm(p=2) for g in scaled]).norm(p=2) for r in range(self.runs)]
            )  # [R]
            scale = rho / (norm + 1e-12)  # [R]
            es = []
            for p in self.leaves:
                s = scale.view(self.runs, *(1,) * (p.dim() - 1))
                e = (torch.pow(p, 2) if adaptive else 1.0) * p.grad * s
                p.add_(e)
                es.append(e)
        self._backward(xb, yb)
        with torch.no_grad():
            for p, e in zip(self.leaves, es, strict=True):
                p.sub_(e)

    @torch.no_grad()
    def evaluate(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run (loss [R], acc [R]) on ``xb`` without stepping."""
        loss, logits = self.losses(xb, yb)
        return loss, (logits.argmax(-1) == yb).float().mean(1)


def train_batched(
    module: nn.Module,
    name: str,
    cfg: OptimizersConfig,
    theta0: torch.Tensor,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    steps: int,
    record_every: int,
    batch_size: int,
    gens: Sequence[torch.Generator],
    record: BatchedRecord | None = None,
    block: int = 64,
) -> torch.Tensor:
    """Train R runs together as R calls of ``train_loop`` would; returns the final θ ``[R, P]``.

    Run r starts at ``theta0[r]`` (``[R, P]``, on the training device), trains on ``xs[r]
    [N_r, ...]``, ``ys[r] [N_r]`` and draws its batches with ``gens[r]``. ``record(θ [R, P],
    loss [R], acc [R])`` is called as ``train_loop`` calls it, once per recorded step for all runs.
    Batch indices are drawn ``block`` steps at a time.
    """
    runs = theta0.shape[0]
    if not (len(xs) == len(ys) == len(gens) == runs):
        raise ValueError(f"{runs} starts but {len(xs)} inputs and {len(gens)} generators")
    data = StackedData(xs, ys)
    schedules = [BatchSchedule(n, batch_size, g) for n, g in zip(data.sizes, gens, strict=True)]
    if len({s.width for s in schedules}) > 1:
        raise ValueError("runs of one batch need tasks with at least batch_size examples each")
    trainer = BatchedTrainer(module, name, cfg, theta0)
    device = theta0.device
    idx = torch.empty(0)
    for t in range(steps + 1):
        i = t % block
        if i == 0:
            m = min(block, steps + 1 - t)
            idx = torch.stack([s.take(m) for s in schedules], 1).to(device)  # [m, R, B]
        xb, yb = data.batch(idx[i])  # [R, B, ...], [R, B]
        recording = record is not None and t % record_every == 0
        theta = trainer.theta() if recording else None
        if t == steps:
            if recording:
                record(theta, *trainer.evaluate(xb, yb))  # type: ignore[misc]
            break
        loss, acc = trainer.step(xb, yb)
        if recording:
            record(theta, loss, acc)  # type: ignore[misc]
    return trainer.theta()
