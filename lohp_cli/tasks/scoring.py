"""Score weight vectors on a task: accuracy and loss of the target model on a split."""

from __future__ import annotations

import torch
from torch import nn

from lohp_cli.tasks.families import TaskTensors, score_logits
from lohp_cli.tasks.layout import functional_forward


@torch.no_grad()
def accuracy(
    model: nn.Module, theta: torch.Tensor, data: TaskTensors, split: str = "test"
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model with flat weights ``theta [P]`` on a split.

    Batch-norm layers use the batch's statistics (generated weights come without running stats).
    """
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    model.train()  # batch statistics for BatchNorm; no parameter is changed
    logits = functional_forward(model, theta.to(x.device), x)  # [N, classes]
    return score_logits(logits, y)
