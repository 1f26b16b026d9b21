"""Real optimizers (SGD, Adam, SAM) used to collect trajectories."""

from lohp_cli.optim.factory import build_optimizer, optimizer_hparams, train_step
from lohp_cli.optim.sam import SAM, bn_frozen

__all__ = ["SAM", "bn_frozen", "build_optimizer", "optimizer_hparams", "train_step"]
