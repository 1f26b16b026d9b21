"""Full fine-tuning (``full-ft``): Adam on every weight of an adapted model, backbone included.

A model with LoRA adapters (``lora``) trains only its factors and head; the generated weights and
the optimizer rows are those. Full fine-tuning is what the adapters stand in for: from each shared
start θ_0, the start's factors are folded into the backbone (:func:`lohp_cli.tasks.lora.merge`:
the same function as the start, so a start with B = 0 is the pretrained backbone itself) and Adam
trains every weight of that plain network, with the store's Adam hyperparameters (the learning
rate may be set apart: evaluate's ``full_ft_lr``) and the optimizer rows' minibatches and step
budgets. Its weights are the plain network's (all its parameters, not the P of θ), so it scores
them with that network (``net``), and its latency is the merge and the training.
"""

from __future__ import annotations

import copy

import torch

from lohp_cli.config import EvaluateConfig
from lohp_cli.errors import ConfigError
from lohp_cli.methods.base import EvalContext
from lohp_cli.methods.optimizer import OptimizerMethod
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.loop import train_loop
from lohp_cli.tasks.layout import load_flat
from lohp_cli.tasks.lora import lora_layers, merge


def check_adapted(ctx: EvalContext) -> None:
    """Refuse a target model without LoRA layers (there is no frozen base to fine-tune)."""
    if not lora_layers(ctx.net):
        raise ConfigError(
            f"--baselines full-ft fine-tunes the frozen backbone under a model's LoRA adapters; "
            f"this store's model {ctx.task.model_cfg.name!r} has none (its optimizer rows "
            "already train every weight it has). Leave full-ft out."
        )


class FullFineTune(OptimizerMethod):
    """Adam on every weight of the merged network for ``steps`` steps; its row is
    ``full-ft-steps``; the optimizer rows' minibatch seeds and timing."""

    kind = "full-ft"
    batched = False  # every weight of the merged network, one start at a time

    def __init__(self, steps: int, lr: float | None = None) -> None:
        super().__init__("adam", steps)
        self.lr, self.name = lr, f"full-ft-{steps}"

    def prepare(self, ctx: EvalContext) -> None:
        check_adapted(ctx)
        self.ctx = ctx
        adam = ctx.optim.adam
        if self.lr is not None:
            adam = adam.model_copy(update={"lr": self.lr})
        self.optim = ctx.optim.model_copy(update={"adam": adam})
        self.net = self._plain(ctx.starts(ctx.tasks[0]).theta0[0])  # scores the plain weights

    def _plain(self, theta0: torch.Tensor) -> torch.nn.Module:
        """The plain network equal to the adapted one at ``theta0 [P]``, every weight trainable."""
        adapted = copy.deepcopy(self.ctx.net)
        load_flat(adapted, theta0.to(self.ctx.device))
        return merge(adapted).requires_grad_(True)

    def _train(self, task_id: str, theta0: torch.Tensor, seed: int) -> torch.nn.Module:
        c = self.ctx
        data = c.data[task_id]
        net = self._plain(theta0)
        opt = build_optimizer("adam", list(net.parameters()), self.optim)
        gen = torch.Generator().manual_seed(seed)
        steps = self.steps
        train_loop(net, opt, data.x_train, data.y_train, steps, max(steps, 1), c.batch_size, gen)
        return net


def full_finetune_methods(
    _name: str, cfg: EvaluateConfig, budgets: tuple[int, ...]
) -> list[FullFineTune]:
    """One full fine-tuning row per step budget, longest first."""
    return [FullFineTune(s, cfg.full_ft_lr) for s in sorted(set(budgets), reverse=True)]
