"""Stage 2, ``train-policy``: fit a weight generator (lo-hp, lo-op, lo-di, hypernetwork, diffusion)
or meta-train a learned optimizer (l2o, l2o-tt, l2o-flat, m-l2o) on a trajectory store.

The work itself lives in the core (:mod:`lohp_cli.policy.fit`) and in plug-ins
(:mod:`lohp_cli.diffusion.fit`, :mod:`lohp_cli.l2o.fit`), each registered in
:mod:`lohp_cli.trainers` with its config; this stage loads the plug-ins and calls the fit its
method registered. Importing it is cheap (no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lohp_cli.diffusion  # noqa: F401 - registers the diffusion generator
import lohp_cli.l2o  # noqa: F401 - registers the learned-optimizer methods
from lohp_cli import trainers
from lohp_cli.config import TrainConfig
from lohp_cli.errors import ConfigError
from lohp_cli.metric_log import metric_log
from lohp_cli.runtime import stage_threads
from lohp_cli.stages import check_names

if TYPE_CHECKING:
    from lohp_cli.policy.rundir import TrainResult

Progress = Callable[[dict[str, Any]], None]


def train_policy(cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) the policy ``cfg`` describes; returns where it is and how far it got."""
    check_names(cfg)
    spec = trainers.get(cfg.method)
    if spec is None:
        raise ConfigError(
            f"Unknown method {cfg.method!r}; choose from {', '.join(trainers.method_names())}."
        )
    emit = progress or (lambda _e: None)
    sink = metric_log(cfg.log, cfg.out)  # before any work: a missing extra is a ConfigError
    if sink is None:
        with stage_threads(cfg.threads, emit):
            return spec.fit_function()(cfg, progress)

    def both(e: dict[str, Any]) -> None:
        sink(e)
        emit(e)

    try:
        with stage_threads(cfg.threads, emit):
            return spec.fit_function()(cfg, both)
    finally:
        sink.close()
