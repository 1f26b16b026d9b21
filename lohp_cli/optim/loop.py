"""The minibatch training loop every optimizer run shares (collect's runs, evaluate's baselines)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lohp_cli.optim.factory import train_step
from lohp_cli.tasks.models import flat_params


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
    n = y.shape[0]
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for t in range(steps + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        b = perm[pos : pos + batch_size]
        pos += batch_size
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
