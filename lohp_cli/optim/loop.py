"""The minibatch training loop every optimizer run shares (collect's runs, evaluate's baselines),
and the minibatch schedule it shares with the batched trainer (:mod:`lohp_cli.optim.batched`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lohp_cli.optim.factory import train_step
from lohp_cli.tasks.layout import flat_params


def train_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    record_every: int,
    batch_size: int,
    gen: torch.Generator,
    record: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> None:
    """Train for ``steps`` minibatch steps (epoch-shuffled batches drawn with ``gen``).

    ``record(θ_t [P], loss, acc)`` is called for t = 0, r, 2r, …, steps with the weights *before*
    step t and their loss/accuracy on the minibatch of step t (for t = steps, one extra batch).
    """
    schedule = BatchSchedule(y.shape[0], batch_size, gen)
    for t in range(steps + 1):
        b = schedule.take(1)[0]
        xb, yb = x[b], y[b]
        recording = record is not None and t % record_every == 0
        theta = flat_params(model) if recording else None
        if t == steps:
            if recording:
                with torch.no_grad():
                    logits = model(xb)
                    loss = nn.functional.cross_entropy(logits, yb)
                    acc = (logits.argmax(1) == yb).float().mean()
                record(theta, loss, acc)  # type: ignore[misc]
            break
        loss, acc = train_step(model, opt, xb, yb)
        if recording:
            record(theta, loss, acc)  # type: ignore[misc]


class BatchSchedule:
    """The minibatch indices one run draws (``train_loop``'s, and each run's in the batched
    trainer): an epoch-shuffled permutation from ``gen``, a fresh one whenever the next batch
    would not fit."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.perm = torch.randperm(n, generator=gen)
        self.pos = 0

    @property
    def width(self) -> int:
        """Examples per batch: ``batch_size``, or all ``n`` when fewer."""
        return min(self.n, self.batch_size)

    def take(self, m: int) -> torch.Tensor:
        """The indices ``[m, width]`` of the next ``m`` batches (one slice per permutation)."""
        n, bs, parts, left = self.n, self.batch_size, [], m
        while left:
            if self.pos + bs > n:
                self.perm, self.pos = torch.randperm(n, generator=self.gen), 0
            k = min(max((n - self.pos) // bs, 1), left)  # whole batches left in this permutation
            parts.append(self.perm[self.pos : self.pos + k * bs].view(k, self.width))
            self.pos += k * bs
            left -= k
        return torch.cat(parts) if len(parts) > 1 else parts[0]
