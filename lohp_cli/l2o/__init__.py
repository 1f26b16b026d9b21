"""Learning-to-optimize (L2O) baselines from the seed papers, trained and scored like Lo-Hp.

``l2o``       coordinate-wise LSTM optimizer (L2O-DM; RNNProp inputs as an option), truncated BPTT.
``l2o-tt``    the same model with seed 002's training techniques: progressive unroll + imitation.
``l2o-flat``  seed 003's flatness-aware regularizers (Hessian trace/eigenvalue, local entropy).
``m-l2o``     seed 004: meta-trained for a few steps of test-time self-adaptation.

Importing this package is cheap (no torch): :mod:`lohp_cli.config` reads its config models.
"""

from __future__ import annotations

L2O_METHODS: tuple[str, ...] = ("l2o", "l2o-tt", "l2o-flat", "m-l2o")
SYNTHETIC_FAMILIES: tuple[str, ...] = ("quadratic", "lasso")
