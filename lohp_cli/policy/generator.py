"""The generator contract: what ``generate`` and ``evaluate`` call on the module of a
weight-generating policy directory (as :func:`lohp_cli.policy.directory.load_policy` builds and
loads it).

Every generator kind implements it: the Lo-Hp family's
:class:`~lohp_cli.policy.gaussian.LoHpPolicy` (lo-hp, lo-op, lo-di: N Gaussian steps) and
:class:`~lohp_cli.policy.gaussian.HyperNetwork` (one map from the condition), and
:class:`~lohp_cli.diffusion.model.DiffusionPolicy` (S DDIM steps). A new generator registered
with :mod:`lohp_cli.trainers` (its ``build`` function returns a module) implements
:class:`Generator`, and ``generate``, ``evaluate`` and their latency timing run it unchanged.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from lohp_cli.policy.state import StateProbe


@runtime_checkable
class Generator(Protocol):
    """A weight generator: from start states to generated (normalised) weights."""

    def rollout(
        self,
        s: torch.Tensor,
        start: int,
        cond: torch.Tensor,
        opt: torch.Tensor | None = None,
        mode: str = "mean",
        gen: torch.Generator | None = None,
        stop: int | None = None,
        grad: bool = False,
        probe: StateProbe | None = None,
    ) -> torch.Tensor:
        """Every state ``[B, L, P]`` from the start states ``s [B, P]`` (the first of them) to
        the generated weights (the last), all normalised, for conditions ``cond [B, D]``.

        ``start``/``stop``: the step indices to run between (default all N; a generator that
        runs all of its steps at once raises for any other); ``opt [B]``: optimizer-token
        indices of a policy trained with tokens; ``mode``: "mean" (deterministic) or "sample"
        (noise from ``gen``); ``grad``: keep the graph; ``probe``: the support-set state of a
        policy that reads it (``needs_probe``).
        """
        ...


def generate_states(
    model: Generator,
    cond: torch.Tensor,
    s0: torch.Tensor,
    mode: str,
    gen: torch.Generator | None,
    keep_path: bool,
    probe: StateProbe | None = None,
    token: int | None = None,
) -> torch.Tensor:
    """Normalised states from ``s0 [B, P]`` and ``cond [B, D]``: ``[B, N+1, P]`` with
    ``keep_path``, else ``[B, 1, P]`` (the generated weights).

    ``token``: the optimizer style of a policy trained with optimizer tokens
    (:func:`lohp_cli.policy.directory.style_token`), the same for every row.
    """
    opt = None if token is None else torch.full((s0.shape[0],), token, device=s0.device)
    path = model.rollout(s0, 0, cond, opt, mode=mode, gen=gen, probe=probe)  # [B, N+1, P]
    return path if keep_path else path[:, -1:]
