"""Stage 2, ``train-policy``: fit a weight generator (lo-hp, lo-op, lo-di, hypernetwork) or
meta-train a learned optimizer (l2o, l2o-tt, l2o-flat, m-l2o) on a trajectory store.

The work itself lives in the core (:mod:`lohp_cli.policy.fit`, :mod:`lohp_cli.l2o.fit`); this
stage picks it by method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lohp_cli.config import TrainConfig
from lohp_cli.l2o import L2O_METHODS
from lohp_cli.policy.artifact import TrainResult

Progress = Callable[[dict[str, Any]], None]


def train_policy(cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) the policy ``cfg`` describes; returns where it is and how far it got."""
    if cfg.method in L2O_METHODS:
        from lohp_cli.l2o.fit import train_l2o

        return train_l2o(cfg, progress)
    from lohp_cli.policy.fit import train_policy as fit

    return fit(cfg, progress)
