"""A conditional diffusion generator of weights, trained and scored beside Lo-Hp (docs/policy.md).

``config``    :class:`~lohp_cli.diffusion.config.DiffusionTrainConfig` (pydantic only).
``schedule``  β schedules, the forward process q(x_t | x_0) and the DDIM update.
``model``     the ε-predicting denoiser over Lo-Hp's backbone registry, and its DDIM sampler.
``fit``       the resumable training loop (``train-policy --method diffusion``).

Importing this package registers the method ``diffusion`` in :mod:`lohp_cli.trainers` (fit
:func:`lohp_cli.diffusion.fit.train_diffusion`, module built by
:func:`lohp_cli.diffusion.model.build_diffusion` for ``load_policy``); it is cheap (no torch). The
stages and the CLI import it; the core never does. Its policy directories are scored by
``evaluate --policy NAME=DIR`` like any weight generator's.
"""

from __future__ import annotations

from lohp_cli import trainers
from lohp_cli.diffusion.config import DiffusionTrainConfig

trainers.register(
    trainers.TrainMethod(
        ("diffusion",),
        DiffusionTrainConfig,
        "lohp_cli.diffusion.fit:train_diffusion",
        build="lohp_cli.diffusion.model:build_diffusion",
        chooses_steps=True,
    )
)
