"""The training-method registry (lohp_cli/trainers.py) and ``TrainConfig`` as the discriminated
union of the registered method configs: the right class per method, only its own fields, another
method's key refused by name, a registered plug-in trainable, old policies and files still read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

import lohp_cli.stages.train
from lohp_cli import trainers
from lohp_cli.config import LoHpTrainConfig, TrainConfig, resolve
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.l2o.apply import load_l2o
from lohp_cli.l2o.config import L2OTrainConfig
from lohp_cli.policy.directory import load_policy
from lohp_cli.policy.rundir import TrainResult
from tests.cli.runner import invoke
from tests.conftest import make_linear_store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOHP = ("lo-hp", "lo-op", "lo-di", "hypernetwork")
L2O = ("l2o", "l2o-tt", "l2o-flat", "m-l2o")

# config.json's train_config as lohp 0.1.0 wrote it for every method: all fields of all methods
OLD_TRAIN_CONFIG: dict[str, Any] = {
    "store": "runs/fmnist.zarr", "out": "policies/fmnist-k2", "method": "lo-hp", "k": 2,
    "steps": 3000, "batch_size": 32, "lr": 0.001, "weight_decay": 0.0, "grad_clip": 1.0,
    "optimizers": None, "normalize": "init", "augment": "auto", "window": None,
    "checkpoint_every": 100, "log_every": 10, "max_minutes": None, "seed": 0, "device": "auto",
    "amp": False, "compile": False, "cache_mb": 32.0, "overwrite": False,
    "policy": {
        "backbone": "unet", "channels": [32, 64, 128], "patch": 8, "hidden": 512, "emb_dim": 128,
        "sigma": "schedule", "sigma_scale": 1.0, "sigma_min": 0.0001, "backward": "fixed",
        "coefficient": "per_step", "beta": "auto", "optimizer_token": False, "state_input": "none",
    },
    "loss": {
        "lam": 0.9, "pairs": "lambda", "max_len": None, "w_off": 1.0, "w_on": 1.0,
        "hybrid_start": 0.5, "on_policy_grad": "pathwise", "lodi_noise": 0.1,
    },
    "l2o": {
        "family": "store",
        "quadratic": {"dim": 20, "rows": 20, "log10_cond": [1.0, 2.0],
                      "log10_scale": [-0.5, 0.5], "noise": 0.1},
        "lasso": {"dim": 20, "rows": 15, "sparsity": 0.2, "lam": [0.05, 0.1], "noise": 0.01},
        "arch": "dm", "hidden": 20, "layers": 2, "out_scale": 0.1, "objective": "log",
        "horizon": 100, "unroll": 20, "instances": 0, "second_order": False,
        "progressive": [5, 10, 20], "imitation_weight": 0.1, "imitation_decay": 0.5,
        "teacher": "adam", "lr_grid": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        "hessian_weight": 0.1, "hessian": "trace", "hessian_probes": 2, "power_iters": 5,
        "entropy_weight": 0.1, "langevin_steps": 5, "langevin_lr": 0.01, "langevin_noise": 0.001,
        "entropy_gamma": 1.0, "adapt_steps": 5, "adapt_lr": 0.001, "adapt_unroll": 10,
        "image_batch": 0,
    },
}  # fmt: skip


def old_shape(new: dict[str, Any]) -> dict[str, Any]:
    """A train_config as lohp 0.1.0 would have stored it: every field, ``new``'s values."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in OLD_TRAIN_CONFIG.items()}
    for key, value in new.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) else value
    return out


# ---- the union ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [*LOHP, *L2O])
def test_the_union_picks_the_class_of_the_method(method: str) -> None:
    cfg = TrainConfig.model_validate({"method": method})
    assert type(cfg) is (LoHpTrainConfig if method in LOHP else L2OTrainConfig)
    assert cfg.method == method and isinstance(cfg, TrainConfig)
    fields = set(cfg.model_dump())
    if method in LOHP:
        assert {"k", "policy", "loss", "optimizers", "amp"} <= fields and "l2o" not in fields
    else:
        assert "l2o" in fields and not fields & {"k", "policy", "loss", "optimizers", "amp"}


def test_the_default_method_is_lo_hp_and_the_union_is_not_a_class() -> None:
    assert type(TrainConfig.model_validate({})) is LoHpTrainConfig
    assert resolve(TrainConfig).method == "lo-hp"
    with pytest.raises(TypeError, match="model_validate"):
        TrainConfig()


def test_an_l2o_key_on_lo_hp_is_refused_by_name(tmp_path: Path) -> None:
    owners = "belongs to the methods l2o, l2o-tt, l2o-flat, m-l2o, not to lo-hp"
    with pytest.raises(ConfigError, match=rf"^Invalid config: l2o: {owners}\.$"):
        resolve(TrainConfig, sets=["l2o.hidden=4"])
    toml = tmp_path / "c.toml"
    toml.write_text('method = "lo-hp"\nk = 2\n[l2o]\nfamily = "quadratic"\n')
    with pytest.raises(ConfigError, match=rf"l2o: {owners}"):
        resolve(TrainConfig, toml)
    with pytest.raises(ConfigError, match=r"l2o: belongs to the methods l2o, .*, not to lo-op\.$"):
        resolve(TrainConfig, flags={"method": "lo-op", "l2o.family": "lasso"})  # --family


def test_a_lo_hp_key_on_l2o_is_refused_by_name(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('method = "l2o"\nk = 2\n[policy]\nhidden = 8\n[l2o]\nhidden = 4\n')
    with pytest.raises(ConfigError) as err:
        resolve(TrainConfig, toml)
    owners = "belongs to the methods lo-hp, lo-op, lo-di, hypernetwork, not to l2o"
    assert f"k: {owners} (got 2)" in str(err.value)
    assert (
        "policy: belongs to the methods lo-hp, lo-op, lo-di, hypernetwork, diffusion, not to "
        "l2o" in str(err.value)
    )
    assert "l2o" not in str(err.value).replace("not to l2o", "")


def test_an_unknown_method_names_the_valid_ones_and_the_other_problems() -> None:
    with pytest.raises(ConfigError) as err:
        resolve(TrainConfig, sets=["l2o.hidden=0"], flags={"method": "l2o-xx"})
    # the plug-ins' methods follow the Lo-Hp family in the order the process imported them
    names = ", ".join(trainers.method_names())
    assert names.startswith("lo-hp, lo-op, lo-di, hypernetwork, ")
    assert set(trainers.method_names()) == {*LOHP, *L2O, "diffusion"}
    assert str(err.value) == (
        f"Invalid config: method: unknown method, choose from {names} (got 'l2o-xx'); l2o.hidden: "
        "Input should be greater than or equal to 1 (got 0)."
    )


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("policy-cpu.toml", LoHpTrainConfig),
        ("policy-unet.toml", LoHpTrainConfig),
        ("l2o-quadratic.toml", L2OTrainConfig),
        ("l2o-lasso.toml", L2OTrainConfig),
    ],
)
def test_the_example_files_still_load(name: str, cls: type) -> None:
    assert type(resolve(TrainConfig, EXAMPLES / name)) is cls
    method = "l2o-tt" if cls is L2OTrainConfig else "lo-di"
    assert resolve(TrainConfig, EXAMPLES / name, flags={"method": method}).method == method


# ---- a plug-in ----------------------------------------------------------------------------------
class FakeConfig(TrainConfig):
    method: Literal["fake"] = "fake"
    wobble: int = Field(1, ge=1, description="The fake method's own setting.")


@pytest.fixture
def fake() -> Iterator[list[Any]]:
    """A method 'fake' registered for one test; yields the configs its fit was called with."""
    calls: list[Any] = []

    def fit(cfg: FakeConfig, progress: Any = None) -> TrainResult:
        calls.append(cfg)
        return TrainResult(cfg.out, cfg.steps, True, 0.5, 0.0)

    trainers.register(
        trainers.TrainMethod(("fake",), FakeConfig, fit, generates_weights=False, kind="fake")
    )
    yield calls
    trainers.unregister("fake")
    assert "fake" not in trainers.method_names()


def test_a_registered_method_trains_through_the_stage(fake: list[Any], tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate({"method": "fake", "wobble": 3, "out": str(tmp_path / "f")})
    assert type(cfg) is FakeConfig and cfg.wobble == 3
    result = lohp_cli.stages.train.train_policy(cfg)
    assert fake == [cfg] and result.policy == str(tmp_path / "f") and result.complete


def test_a_registered_method_is_a_choice_of_the_cli(fake: list[Any], tmp_path: Path) -> None:
    assert trainers.method_names()[-1] == "fake"
    with pytest.raises(ConfigError, match=r"choose from lo-hp, .*, fake \(got 'nope'\)"):
        resolve(TrainConfig, flags={"method": "nope"})
    with pytest.raises(ConfigError, match=r"k: belongs to the methods lo-hp, .* not to fake"):
        resolve(TrainConfig, flags={"method": "fake", "k": 2})
    result = invoke("train-policy", "--method", "fake", "--set", "wobble=2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == FakeConfig(wobble=2).model_dump(mode="json")
    result = invoke("train-policy", "--method", "fake", "--out", tmp_path / "f", "--steps", 7)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'f'}\n" and [c.steps for c in fake] == [7]


class Clash(TrainConfig):
    method: Literal["l2o"] = "l2o"


def test_registration_checks_the_names() -> None:
    with pytest.raises(TypeError, match="allows"):
        trainers.register(trainers.TrainMethod(("fake", "fake2"), FakeConfig, "x:y"))
    with pytest.raises(ValueError, match="'l2o' is already registered"):
        trainers.register(trainers.TrainMethod(("l2o",), Clash, "x:y"))
    assert trainers.get("l2o").config is L2OTrainConfig  # type: ignore[union-attr]


# ---- policies written before the split ---------------------------------------------------------
def rewrite_old(policy: Path) -> dict[str, Any]:
    """Turn ``policy``'s config.json into the shape lohp 0.1.0 wrote; returns that config."""
    meta = json.loads((policy / "config.json").read_text())
    meta["train_config"] = old_shape(meta["train_config"])
    (policy / "config.json").write_text(json.dumps(meta))
    return meta["train_config"]


def test_an_old_lo_hp_policy_loads_and_resumes(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    make_linear_store(store, n_tasks=3, size=6, cond_dim=3, steps=4, optimizers=("sgd", "adam"))
    data = {"store": str(store), "out": str(tmp_path / "p"), "k": 1, "steps": 2, "batch_size": 2,
            "device": "cpu", "policy": {"backbone": "mlp", "hidden": 8, "emb_dim": 4}}  # fmt: skip
    lohp_cli.stages.train.train_policy(TrainConfig.model_validate(data))
    old = rewrite_old(tmp_path / "p")
    assert old["l2o"]["hidden"] == 20 and old["policy"]["hidden"] == 8
    model, meta, _ = load_policy(tmp_path / "p")
    assert meta.method == "lo-hp" and sum(p.numel() for p in model.parameters()) > 0
    assert TrainConfig.from_stored(old) == TrainConfig.model_validate(data)
    # the same settings resume (one more step) instead of failing on "other settings"
    result = lohp_cli.stages.train.train_policy(TrainConfig.model_validate({**data, "steps": 3}))
    assert result.step == 3 and result.complete


def test_an_old_l2o_policy_loads_and_is_refused_as_a_weight_generator(tmp_path: Path) -> None:
    l2o = {"family": "quadratic", "horizon": 4, "unroll": 2, "hidden": 4,
           "quadratic": {"dim": 3, "rows": 3}}  # fmt: skip
    data = {"method": "m-l2o", "out": str(tmp_path / "q"), "steps": 1, "batch_size": 2,
            "device": "cpu", "l2o": {**l2o, "adapt_steps": 1, "adapt_unroll": 2}}  # fmt: skip
    lohp_cli.stages.train.train_policy(TrainConfig.model_validate(data))
    old = rewrite_old(tmp_path / "q")
    assert old["k"] == 2 and old["method"] == "m-l2o"
    model, meta = load_l2o(tmp_path / "q")
    assert meta.method == "m-l2o" and model.hidden == 4
    assert L2OTrainConfig.from_stored(old) == TrainConfig.model_validate(data)
    with pytest.raises(CompatibilityError, match=r"learned optimizer \(m-l2o\), not a weight"):
        load_policy(tmp_path / "q")


def test_a_policy_of_an_unknown_method_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"kind": "lohp.policy", "format": 1, "method": "fake"})
    )
    with pytest.raises(CompatibilityError, match="unknown method 'fake', not a weight generator"):
        load_policy(tmp_path)
