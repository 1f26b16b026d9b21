"""Trained policies as methods: a policy directory generated here from the shared starts, and the
generated store's own weights (what ``lohp generate`` wrote from the same starts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import lohp_cli.store.chunks as chunks
from lohp_cli.artifacts.policy import PolicyMeta
from lohp_cli.config import OPTIMIZERS
from lohp_cli.errors import CompatibilityError, StoreError
from lohp_cli.methods.base import EvalContext, Starts
from lohp_cli.policy.context import policy_probe
from lohp_cli.policy.directory import load_policy, local_steps, style_token
from lohp_cli.policy.generator import Generator, generate_states
from lohp_cli.policy.state import ProbeBank, StateProbe
from lohp_cli.store.sampler import NormStats


def policy_info(meta: PolicyMeta, token: int | None = None) -> dict[str, Any]:
    """What identifies a policy's row in a report: method, k, N, its optimizer subset, its state
    input and (for policies with optimizer tokens) the style it generated with."""
    opts = meta.optimizers
    return {
        "method": meta.method,
        "k": meta.k,
        "N": meta.N,
        "optimizers": sorted(opts) if opts else None,
        "state_input": meta.state_input,
        "style": None if token is None else OPTIMIZERS[token],
    }


def split_sample_steps(name: str) -> tuple[str, int | None]:
    """``"NAME@S"`` -> ``("NAME", S)``: the row label and the sampling steps S asked of a policy
    that chooses its steps when generating (diffusion); any other name -> ``(name, None)``."""
    label, sep, steps = name.rpartition("@")
    if sep and label and steps.isdigit():
        return label, int(steps)
    return name, None


def row_name(label: str, meta: PolicyMeta) -> str:
    """A policy's report row: ``label`` and what sets its steps, k (N = T/k) or S (a policy that
    chooses its steps when generating, N = S); a hypernetwork has neither."""
    if meta.hypernetwork:
        return label
    return f"{label} (k={meta.k})" if local_steps(meta) else f"{label} (S={meta.N})"


def generate_one(
    model: Generator,
    c: torch.Tensor,
    s0: torch.Tensor,
    probe: StateProbe | None = None,
    token: int | None = None,
) -> torch.Tensor:
    """The final normalised weights ``[B, P]`` of a mean-mode generation."""
    with torch.no_grad():
        return generate_states(model, c, s0, "mean", None, False, probe, token)[:, -1]


class PolicyMethod:
    """A trained policy directory (Lo-Hp, Lo-Op, Lo-Di, hypernetwork, diffusion), generating in
    mean mode (a diffusion policy: deterministic DDIM) from each start s_0 at batch size 1, in its
    own normalisation. ``--policy NAME@S=DIR`` asks a diffusion policy for S sampling steps (its
    row is ``NAME (S=…)``); ``NAME=DIR`` takes the policy's own."""

    kind = "policy"

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.label, self.sample_steps = split_sample_steps(name)
        self.path = path
        self.steps: int | None = None
        self.policy: dict[str, Any] | None = None

    def prepare(self, ctx: EvalContext) -> None:
        model, meta, stats = load_policy(self.path, ctx.device, self.sample_steps)
        if meta.store_compat.to_json() != ctx.meta.store_compat.to_json():
            raise CompatibilityError(
                f"Policy '{self.path}' was trained for another task family or "
                "target model than the generated weights."
            )
        self._use(ctx, model, meta, stats, style_token(meta, None))
        self.name = row_name(self.label, meta)
        self.steps = 1 if meta.hypernetwork else meta.N

    def _use(
        self,
        ctx: EvalContext,
        model: Generator,
        meta: PolicyMeta,
        stats: NormStats,
        token: int | None,
    ) -> None:
        self.ctx, self.model, self.meta, self.stats, self.token = ctx, model, meta, stats, token
        self.policy = policy_info(meta, token)
        self.bank: ProbeBank | None = policy_probe(model, ctx.task, ctx.data, stats, ctx.device)

    def _generate(self, task_id: str, s0: torch.Tensor) -> torch.Tensor:
        """Final normalised weights ``[1, P]`` from ``s0 [1, P]`` on one task."""
        c = self.stats.normalize_condition(self.ctx.data[task_id].condition)[None]
        probe = None if self.bank is None else self.bank.probe([task_id])
        return generate_one(self.model, c, s0, probe, self.token)

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        rows = [
            self.stats.denormalize(self._generate(task_id, s[None].to(self.ctx.device)))[0]
            for s in starts.s0_for(self.stats)
        ]
        return torch.stack(rows)

    def timer(self, task_id: str) -> Callable[[], Any]:
        """One mean-mode generation of the task at batch size 1, as the latency times it."""
        return lambda: self._generate(task_id, self.ctx.timing_s0)


class GeneratedMethod(PolicyMethod):
    """The weights ``lohp generate`` wrote, scored as stored; timed by regenerating one task with
    the policy (already loaded by the stage) in the generated store's style."""

    kind = "generated"

    def __init__(
        self,
        store: Any,
        where: str,
        loaded: tuple[Generator, PolicyMeta, NormStats],
        style: str | None,
    ) -> None:
        model, meta, _ = loaded
        super().__init__(row_name(meta.method, meta), where)
        self.store, self.loaded, self.style = store, loaded, style
        self.steps = meta.N
        self.arrays: dict[str, Any] = {}  # each task's weights array, opened by check()

    def prepare(self, ctx: EvalContext) -> None:
        model, meta, stats = self.loaded
        self._use(ctx, model, meta, stats, style_token(meta, self.style))
        if not self.arrays:
            self.check(ctx)

    def check(self, ctx: EvalContext) -> None:
        """Every task's weights are there, float32 ``[S, P]`` (metadata only), before any
        method is scored."""
        for task_id in ctx.tasks:
            try:
                arr = self.arrays[task_id] = self.store[f"{task_id}/weights"]
                shape, dtype = tuple(arr.shape), str(arr.dtype)
            except Exception as exc:  # noqa: BLE001 - missing, or metadata that does not read
                raise StoreError(
                    f"Generated store '{self.path}' has no readable weights of task {task_id} "
                    f"({type(exc).__name__}); run 'lohp generate' again."
                ) from None
            if shape != (ctx.samples, ctx.size) or dtype != "float32":
                raise StoreError(
                    f"Generated store '{self.path}': the weights of task {task_id} are {dtype} "
                    f"of shape {shape}, not float32 of shape {(ctx.samples, ctx.size)}; run "
                    "'lohp generate' again."
                )

    def weights(self, task_id: str, starts: Starts) -> torch.Tensor:
        where = f"generated store '{self.path}', task {task_id}, array 'weights'"
        w = torch.from_numpy(chunks.read(self.arrays[task_id], ..., where))
        w = w.to(self.ctx.device)
        if not torch.isfinite(w).all():
            raise StoreError(
                f"Generated weights of task {task_id} in '{self.path}' are not finite."
            )
        if w.shape[1] != self.ctx.size:
            raise CompatibilityError(
                f"Generated weights have {w.shape[1]} entries; the policy's "
                f"target model has {self.ctx.size}."
            )
        return w
