"""The generator contract (lohp_cli/policy/generator.py): every generator kind that
``load_policy`` builds (lo-hp, hypernetwork, diffusion) satisfies it, and generating through it
gives the bytes of the generation batch it replaced (``policy.directory.generate_batch``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lohp_cli.diffusion  # noqa: F401 - registers the method, as the stages do
from lohp_cli.config import TrainConfig
from lohp_cli.diffusion.model import build_diffusion
from lohp_cli.policy.directory import build_model
from lohp_cli.policy.generator import Generator, generate_states
from lohp_cli.store.sampler import NormStats

P, D, N, B = 6, 3, 4, 5  # weights, condition entries, policy steps, rows
POLICY = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}


def stats() -> NormStats:
    return NormStats(torch.zeros(P), torch.ones(P), torch.zeros(D), torch.ones(D), torch.ones(N))


def built(method: str, **policy: Any) -> tuple[nn.Module, Any]:
    """A tiny freshly built generator of ``method`` and its config (as ``load_policy`` builds
    it: the registered build function, else ``build_model``)."""
    data: dict[str, Any] = {"method": method, "policy": {**POLICY, **policy}}
    if method == "diffusion":
        data["diffusion"] = {"timesteps": 20, "sample_steps": N}
    cfg = TrainConfig.model_validate(data)
    build = build_diffusion if method == "diffusion" else build_model
    return build(cfg, P, D, N, stats()).eval(), cfg


KINDS = {
    "lo-hp": {},
    "lo-hp with tokens": {"optimizer_token": True},
    "hypernetwork": {},
    "hypernetwork with tokens": {"optimizer_token": True},
    "hypernetwork over a backbone": {"hypernetwork_backbone": "coordinate"},
    "diffusion": {},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_generator_kind_satisfies_the_contract(kind: str) -> None:
    model, _ = built(kind.split()[0], **KINDS[kind])
    assert isinstance(model, Generator)


def test_a_module_without_rollout_is_no_generator() -> None:
    assert not isinstance(nn.Linear(D, P), Generator)


def generate_batch(model, meta, cond, s0, mode, gen, keep_path, probe=None, token=None):  # type: ignore[no-untyped-def]
    """The generation batch before the contract (``policy.directory.generate_batch``, removed), kept
    here as the reference the contract must reproduce byte for byte."""
    opt = None if token is None else torch.full((s0.shape[0],), token, device=s0.device)
    if meta.hypernetwork:
        out = model(cond, opt).unsqueeze(1)  # [B, 1, P]
        return torch.cat([s0.unsqueeze(1), out], dim=1) if keep_path else out
    path = model.rollout(s0, 0, cond, opt, mode=mode, gen=gen, probe=probe)  # [B, N+1, P]
    return path if keep_path else path[:, -1:]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", ["mean", "sample"])
@pytest.mark.parametrize("keep_path", [False, True])
def test_generating_through_the_contract_gives_generate_batchs_bytes(
    kind: str, mode: str, keep_path: bool
) -> None:
    model, cfg = built(kind.split()[0], **KINDS[kind])
    meta = type("Meta", (), {"hypernetwork": cfg.method == "hypernetwork"})()
    g = torch.Generator().manual_seed(0)
    cond, s0 = torch.randn(B, D, generator=g), torch.randn(B, P, generator=g)
    token = 1 if KINDS[kind].get("optimizer_token") else None
    with torch.no_grad():
        want = generate_batch(model, meta, cond, s0, mode, torch.Generator().manual_seed(3),
                              keep_path, None, token)  # fmt: skip
        got = generate_states(model, cond, s0, mode, torch.Generator().manual_seed(3),
                              keep_path, None, token)  # fmt: skip
    steps = 1 if cfg.method == "hypernetwork" else N
    assert got.shape == (B, steps + 1 if keep_path else 1, P)
    assert torch.equal(got, want)
    if keep_path:
        assert torch.equal(got[:, 0], s0)


def test_a_hypernetwork_generates_in_its_one_step() -> None:
    model, _ = built("hypernetwork")
    s0, cond = torch.zeros(2, P), torch.ones(2, D)
    with pytest.raises(ValueError, match="one step"):
        model.rollout(s0, 1, cond)
    with pytest.raises(ValueError, match="one step"):
        model.rollout(s0, 0, cond, stop=2)
    path = model.rollout(s0, 0, cond, grad=True)  # [2, 2, P]
    assert path.requires_grad and torch.equal(path[:, 1], model(cond))
