"""Names in configs: the config checks values only, each registry refuses the names it does not
hold, and :func:`lohp_cli.stages.check_names` asks them all (issue 24)."""

from __future__ import annotations

import subprocess
import sys
from typing import get_type_hints

import pytest

import lohp_cli.l2o.method  # noqa: F401 - registers the learned-optimizer baselines
from lohp_cli.cli.evaluate import evaluate as evaluate_command
from lohp_cli.config import (
    BASELINES,
    CollectConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    LoHpTrainConfig,
    ModelConfig,
    PolicyConfig,
    TaskConfig,
    resolve,
)
from lohp_cli.errors import ConfigError
from lohp_cli.methods import registry
from lohp_cli.stages import check_names, name_problems


@pytest.mark.parametrize(
    "cfg",
    [CollectConfig(), LoHpTrainConfig(), EvaluateConfig(baselines=BASELINES), GenerateConfig(),
     ExportConfig()],
    ids=lambda c: type(c).__name__,
)  # fmt: skip
def test_the_default_names_and_every_builtin_baseline_are_known(cfg: object) -> None:
    check_names(cfg)  # type: ignore[arg-type]


def test_every_refused_name_is_in_one_message_with_its_key() -> None:
    cfg = CollectConfig(
        task=TaskConfig(family="bogus", meta_test="omniglot"), model=ModelConfig(name="resnet")
    )
    with pytest.raises(ConfigError) as info:
        check_names(cfg)
    assert str(info.value) == (
        "Invalid config: task.family: unknown task family 'bogus'; choose from cifar10, digits, "
        "fewshot-digits, fewshot-fmnist, fewshot-glyphs, fmnist, glyphs, rotated-fmnist; "
        "task.meta_test: unknown meta-test domain 'omniglot'; choose from digits, fmnist, glyphs; "
        "model.name: unknown target model 'resnet'; choose from cnn, head, lora, mlp."
    )


def test_the_held_out_domain_is_checked_for_a_known_family_only() -> None:
    with pytest.raises(ConfigError, match=r"^Invalid config: task: task family 'rotated-fmnist' "
                       r"needs task.test_domain, the held-out domain: one of 0, 15, 30, 45, 60, "
                       r"75\.$"):  # fmt: skip
        check_names(CollectConfig(task=TaskConfig(family="rotated-fmnist")))
    bogus = CollectConfig(task=TaskConfig(family="bogus", test_domain=15))
    assert name_problems(CollectConfig, bogus.model_dump()) == [
        "task.family: unknown task family 'bogus'; choose from cifar10, digits, fewshot-digits, "
        "fewshot-fmnist, fewshot-glyphs, fmnist, glyphs, rotated-fmnist"
    ]


def test_a_train_config_is_checked_as_its_methods_config() -> None:
    with pytest.raises(ConfigError, match="policy.backbone: unknown policy backbone 'x'"):
        check_names(LoHpTrainConfig(policy=PolicyConfig(backbone="x")))
    with pytest.raises(ConfigError, match="policy.hypernetwork_backbone: unknown policy backbone"):
        check_names(LoHpTrainConfig(policy=PolicyConfig(hypernetwork_backbone="y")))
    data = {"method": "diffusion", "policy": {"backbone": "x"}}
    from lohp_cli.config import TrainConfig

    assert name_problems(TrainConfig, data) == [
        "policy.backbone: unknown policy backbone 'x'; choose from auto, coordinate, mlp, rows, "
        "unet"
    ]


def test_resolve_reports_value_errors_and_refused_names_together() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(CollectConfig, sets=["steps=x", "model.name=resnet"], names=name_problems)
    msg = str(info.value)
    assert msg.startswith("Invalid config: steps: Input should be a valid integer")
    assert "; model.name: unknown target model 'resnet'; choose from cnn, head" in msg
    assert resolve(CollectConfig, sets=["model.name=resnet"]).model.name == "resnet"


def test_a_name_with_an_invalid_value_is_left_to_the_config() -> None:
    # a family that is not a string: the config's validation says so, not a registry
    assert name_problems(CollectConfig, {"task": {"family": 3}}) == []
    with pytest.raises(ConfigError, match=r"task.family: Input should be a valid string"):
        resolve(CollectConfig, sets=["task.family=3"], names=name_problems)


def test_the_registry_holds_exactly_the_listed_baselines_in_their_order() -> None:
    assert registry.names() == BASELINES
    with pytest.raises(ConfigError, match=r"^Unknown baseline 'nope'; choose from sgd, adam, sam, "
                       r"hypernetwork, nearest, .*, m-l2o \(other trained policies"):  # fmt: skip
        registry.check_baseline("nope")
    with pytest.raises(ConfigError, match="^Invalid config: baselines: unknown baseline 'nope'"):
        check_names(EvaluateConfig(baselines=("sgd", "nope")))


def test_a_baseline_registered_from_outside_is_a_name_the_stages_accept(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_BASELINES", dict(registry._BASELINES))
    registry.register("mine", lambda _n, _c, _b: [])
    check_names(EvaluateConfig(baselines=("adam", "mine")))
    assert registry.names() == (*BASELINES, "mine")


def test_the_evaluate_help_lists_the_baselines_of_the_config() -> None:
    option = get_type_hints(evaluate_command, include_extras=True)["baselines"].__metadata__[0]
    listed = option.help.split("[default")[0]
    named = [b for b in BASELINES if f"{b}," in listed or f"{b} (" in listed]
    assert named == list(BASELINES)
    assert "\\[default: sgd,adam,sam,hypernetwork]" in option.help


def test_validating_a_config_imports_no_torch_and_no_registry() -> None:
    code = (
        "import sys; from lohp_cli.config import CollectConfig, EvaluateConfig, LoHpTrainConfig; "
        "CollectConfig(task={'family': 'rotated-fmnist', 'test_domain': 15}); "
        "LoHpTrainConfig(policy={'backbone': 'rows'}); EvaluateConfig(baselines=['nearest']); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lohp_cli.') "
        "and m.split('.')[1] not in ('config', 'errors', 'trainers', 'runtime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
