"""Where ``train-policy`` also sends its scalars (``--log``): TensorBoard event files in the policy
directory's ``tensorboard/``, written from the progress events every training method emits (the
logged loss terms, the validation scores), the way torchtune's metric loggers sit beside the
training loop. TensorBoard is an extra (``pip install 'lohp[tensorboard]'``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lohp_cli.errors import ConfigError

Progress = Callable[[dict[str, Any]], None]
NOT_SCALARS = {"event", "step", "steps", "time_s", "best", "best_step", "bad"}


class TensorBoardLog:
    """A progress callback writing scalars with ``torch.utils.tensorboard.SummaryWriter``:
    ``train/<term>`` of every ``log`` event, ``val/loss`` and ``val/acc`` of every
    ``validation`` event, at their step. A resumed run (a ``resume`` event at step s) purges the
    events after s that an interrupted run left, so the curves have each step once."""

    def __init__(self, out: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--log tensorboard needs the tensorboard package, which is not installed: "
                "pip install 'lohp[tensorboard]' (or use --log jsonl)."
            ) from None
        self.make_writer = SummaryWriter
        self.dir = Path(out) / "tensorboard"
        self.writer: Any = None
        self.start = 0

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "resume":
            self.start = int(e["step"])
        elif kind in ("log", "validation"):
            if self.writer is None:
                self.writer = self.make_writer(str(self.dir), purge_step=self.start + 1)
            prefix = "train" if kind == "log" else "val"
            for key, value in e.items():
                if key in NOT_SCALARS or not isinstance(value, (int, float)):
                    continue
                name = key[4:] if key.startswith("val_") else key
                self.writer.add_scalar(f"{prefix}/{name}", float(value), int(e["step"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def metric_log(log: str, out: str | Path) -> TensorBoardLog | None:
    """The logger ``log`` asks for (None: metrics.jsonl only; rank 0 alone writes); a
    ConfigError when its package is missing."""
    if log != "tensorboard" or int(os.environ.get("RANK", "0")) != 0:
        return None
    return TensorBoardLog(out)
