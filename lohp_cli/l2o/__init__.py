"""Learning-to-optimize (L2O) baselines from the seed papers, trained and scored like Lo-Hp.

``l2o``       coordinate-wise LSTM optimizer (L2O-DM; RNNProp inputs as an option), truncated BPTT.
``l2o-tt``    the same model with seed 002's training techniques: progressive unroll + imitation.
``l2o-flat``  seed 003's flatness-aware regularizers (Hessian trace/eigenvalue, local entropy).
``m-l2o``     seed 004: meta-trained for a few steps of test-time self-adaptation.

Importing this package registers the four methods in :mod:`lohp_cli.trainers` (config
:class:`~lohp_cli.l2o.config.L2OTrainConfig`, fit :func:`lohp_cli.l2o.fit.train_l2o`); it is cheap
(no torch). The stages and the CLI import it; the core never does.
"""

from __future__ import annotations

from lohp_cli import trainers
from lohp_cli.l2o.config import L2OTrainConfig

L2O_METHODS: tuple[str, ...] = ("l2o", "l2o-tt", "l2o-flat", "m-l2o")
SYNTHETIC_FAMILIES: tuple[str, ...] = ("quadratic", "lasso")

trainers.register(
    trainers.TrainMethod(
        L2O_METHODS,
        L2OTrainConfig,
        "lohp_cli.l2o.fit:train_l2o",
        generates_weights=False,
        kind="learned optimizer",
        use="score it with 'lohp evaluate-l2o' or 'lohp evaluate --policy NAME=DIR'",
    )
)
