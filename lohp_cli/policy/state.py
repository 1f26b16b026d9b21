"""State-aware policy input (our extension, LOHP.md; off by default, ``policy.state_input``).

Besides the task condition, each policy step may see what the current weights s_i *predict* on the
task's labelled support set: the class-mean softmax of the target model, ``[C, C]`` (row j: the
mean predicted distribution over the support examples of label j), minus the identity. It is a
forward pass of the target model only — no gradient of the task loss — so the policy stays a
gradient-free generator, but each step can react to the state it is in, as an optimizer does.

With ``state_input = "grad"`` the policy sees the gradient of the support-set loss instead
(:meth:`StateProbe.gradient`): a second labelled extension, after which the policy is a learned
optimizer with gradient access rather than a gradient-free generator (docs/policy.md).

A :class:`ProbeBank` holds the support sets of a set of tasks; :meth:`ProbeBank.probe` gathers a
batch of them (with class reorderings, for the augmentation) into a :class:`StateProbe`, which the
policy calls on its states.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn

from lohp_cli.tasks.layout import functional_forward


def state_model(net: nn.Module) -> nn.Module:
    """The target model as the probe runs it under ``vmap``: ``net`` itself, or for a model with
    batch norm (``cnn``) a copy whose BatchNorm layers use the batch's statistics and keep no
    running ones, as :func:`lohp_cli.tasks.scoring.accuracy` scores generated weights (in train
    mode); vmap cannot run the in-place update of running statistics."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return net
    copy = torch.func.replace_all_batch_norm_modules_(deepcopy(net))
    return copy.train()


@dataclass
class StateProbe:
    """A batch of support sets and how to turn normalised states into state features.

    ``x [B, M, *in]`` support inputs, ``onehot [B, M, C]`` their labels (rows sum to one per
    class: the class-mean weights), ``mean``/``std [P]`` the policy's normalisation.
    """

    net: nn.Module
    x: torch.Tensor
    onehot: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def classes(self) -> int:
        return self.onehot.shape[-1]

    def rows(self, idx: torch.Tensor) -> StateProbe:
        """The support sets of batch items ``idx [B']`` only."""
        i = idx.to(self.x.device)
        return StateProbe(self.net, self.x[i], self.onehot[i], self.mean, self.std)

    def features(self, s: torch.Tensor) -> torch.Tensor:
        """``s [B·r, P]`` (rows of batch item b at b·r … b·r + r − 1) -> ``[B·r, C·C]``."""
        b = self.x.shape[0]
        r = s.shape[0] // b
        theta = (s * self.std + self.mean).view(b, r, -1)  # [B, r, P]

        if isinstance(self.net, nn.Linear):  # the head model: one batched product
            c, f = self.net.out_features, self.net.in_features
            w = theta[..., : c * f].reshape(b, r, c, f)
            logits = torch.einsum("brcf,bmf->brmc", w, self.x) + theta[:, :, None, c * f :]
        else:

            def one(th: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # [P], [M, *in] -> [M, C]
                return functional_forward(self.net, th, x)

            inner = torch.func.vmap(one, in_dims=(0, None))  # over r, same support set
            logits = torch.func.vmap(inner)(theta, self.x)  # [B, r, M, C]
        probs = logits.softmax(-1)
        means = torch.einsum("bmj,brmc->brjc", self.onehot, probs)  # [B, r, C, C]
        eye = torch.eye(self.classes, device=s.device, dtype=s.dtype)
        return (means - eye).reshape(b * r, -1)

    def gradient(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The support-loss gradient at ``s [B·r, P]`` (rows as in :meth:`features`), for
        ``state_input = "grad"``: its direction ``[B·r, P]`` (the weight-space gradient divided by
        its root-mean-square) and ``log`` of that RMS ``[B·r, 1]``.

        The loss is the class-balanced cross-entropy of the support set (each class weighs the
        same, as in the class means). The features are constants for the policy's own gradients
        (no second-order terms, as in learned optimizers).
        """
        b = self.x.shape[0]
        r = s.shape[0] // b
        with torch.no_grad():
            theta = (s.detach() * self.std + self.mean).view(b, r, -1)  # [B, r, P]
        net = self.net
        scale = 1.0 / self.classes

        def loss(th: torch.Tensor, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
            logp = functional_forward(net, th, x).log_softmax(-1)  # [M, C]
            return -(onehot * logp).sum() * scale

        per_state = torch.func.vmap(torch.func.grad(loss), in_dims=(0, None, None))
        with torch.enable_grad():
            g = torch.func.vmap(per_state)(theta, self.x, self.onehot).reshape(b * r, -1)
        rms = g.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)  # [B·r, 1]
        return g / rms, rms.log()


class ProbeBank:
    """Support sets of tasks, by task id, ready to be batched into :class:`StateProbe`."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.net = state_model(net)
        self.mean, self.std = mean, std
        self.x: dict[str, torch.Tensor] = {}
        self.y: dict[str, torch.Tensor] = {}
        self.classes = 0

    def add(self, task_id: str, x: torch.Tensor, y: torch.Tensor, classes: int) -> None:
        """Register the support set ``x [M, *in]``, ``y [M]`` of a task."""
        self.x[task_id], self.y[task_id] = x, y
        self.classes = classes

    def probe(self, task_ids: list[str], perms: torch.Tensor | None = None) -> StateProbe:
        """The support sets of ``task_ids``; ``perms [B, C]`` reorders each task's classes the way
        the sampler reordered its weights (new label j is old label ``perms[b, j]``)."""
        y = torch.stack([self.y[t] for t in task_ids])  # [B, M]
        if perms is not None:
            y = torch.gather(torch.argsort(perms.to(y.device), dim=1), 1, y)
        onehot = nn.functional.one_hot(y, self.classes).float()  # [B, M, C]
        onehot = onehot / onehot.sum(1, keepdim=True).clamp_min(1)
        x = torch.stack([self.x[t] for t in task_ids])
        return StateProbe(self.net, x, onehot, self.mean.to(x.device), self.std.to(x.device))

    def to(self, device: str) -> ProbeBank:
        """Move every support set to ``device`` (in place); returns self."""
        self.net = self.net.to(device)
        self.x = {k: v.to(device) for k, v in self.x.items()}
        self.y = {k: v.to(device) for k, v in self.y.items()}
        return self
