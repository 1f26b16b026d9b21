"""One module per command: collect (with its run execution), train, generate, evaluate (and
evaluate for learned optimizers), export, predict; and here, what every stage does first.

:func:`check_names` checks every name a config holds against the registry that owns it. A config
checks values only (types, ranges, formats): it cannot import the registries above it (task
families, meta-test data sets, target models, policy backbones, baselines), and each of those
refuses a name it does not hold with a one-line :class:`~lohp_cli.errors.ConfigError`.
:func:`check_names` asks each owner about every name in a resolved config and reports all
refusals at once, as a config error (``Invalid config: task.family: unknown task family 'x';
choose from ...``); each stage calls it before it works. :func:`name_problems` finds the same
refusals in a config's raw data, for :func:`lohp_cli.config.resolve` to report them with its own
(the CLI: every problem of a command line in one message, on ``--dry-run`` too). Both live in
the package so that every stage may import them (no stage imports another).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from lohp_cli import trainers
from lohp_cli.config import (
    DEFAULT_METHOD,
    EvaluateConfig,
    ModelConfig,
    PolicyConfig,
    TaskConfig,
    TrainConfig,
)
from lohp_cli.errors import ConfigError

# (config key under its section, or "" for the section itself; the owner's check of the section)
Check = tuple[str, Callable[[Any], object]]


def _task_checks(cfg: TaskConfig) -> list[Check]:
    from lohp_cli.tasks.families import FAMILIES, check_domain, family_class
    from lohp_cli.tasks.fewshot import meta_test_data

    checks: list[Check] = [("family", lambda c: family_class(c.family))]
    if cfg.family in FAMILIES:  # the held-out domain of a known family only
        checks.append(("", check_domain))
    if cfg.meta_test is not None:
        checks.append(("meta_test", lambda c: meta_test_data(c.meta_test)))
    return checks


def _model_checks(_cfg: ModelConfig) -> list[Check]:
    from lohp_cli.tasks.models import target_model

    return [("name", lambda c: target_model(c.name))]


def _policy_checks(_cfg: PolicyConfig) -> list[Check]:
    from lohp_cli.policy.backbone import check_backbone

    return [
        ("backbone", lambda c: check_backbone(c.backbone)),
        ("hypernetwork_backbone", lambda c: check_backbone(c.hypernetwork_backbone)),
    ]


def _baseline_checks(cfg: EvaluateConfig) -> list[Check]:
    import lohp_cli.l2o.method  # noqa: F401 - registers the learned-optimizer baselines
    from lohp_cli.methods.registry import check_baseline

    return [("baselines", lambda _c, b=b: check_baseline(b)) for b in cfg.baselines]


# the config sections that hold names: (section class, the keys that hold them, their checks)
_SECTIONS: tuple[tuple[type[BaseModel], tuple[str, ...], Callable[[Any], list[Check]]], ...] = (
    (TaskConfig, ("family", "test_domain", "meta_test"), _task_checks),
    (ModelConfig, ("name",), _model_checks),
    (PolicyConfig, ("backbone", "hypernetwork_backbone"), _policy_checks),
    (EvaluateConfig, ("baselines",), _baseline_checks),
)


def _refusals(section: BaseModel, checks: list[Check], path: tuple[str, ...]) -> list[str]:
    """``key: problem`` for each check the owner fails, its message as a config error's."""
    out = []
    for key, check in checks:
        try:
            check(section)
        except ConfigError as exc:
            where = ".".join((*path, key) if key else path) or "config"
            text = str(exc).rstrip(".")  # "Unknown target model 'x'; ..." -> "unknown ..."
            out.append(f"{where}: {text[:1].lower()}{text[1:]}")
    return out


def _config_class(model: type[BaseModel], data: Mapping[str, Any]) -> type[BaseModel]:
    """The class ``data`` validates as: a train config's is its method's."""
    if model is TrainConfig:
        import lohp_cli.diffusion  # noqa: F401 - registers the diffusion generator
        import lohp_cli.l2o  # noqa: F401 - registers the learned-optimizer methods

        spec = trainers.get(str(data.get("method", DEFAULT_METHOD)))
        return spec.config if spec is not None else model
    return model


def name_problems(
    model: type[BaseModel], data: Mapping[str, Any], path: tuple[str, ...] = ()
) -> list[str]:
    """``key: problem`` for each name in ``data`` (a config of class ``model``, before or after
    validation) that its owner refuses. A section's names are checked only where its name keys
    are valid values (otherwise the config's validation says so)."""
    model = _config_class(model, data)
    out: list[str] = []
    for kind, keys, checks in _SECTIONS:
        if issubclass(model, kind):
            try:
                section = kind.model_validate({k: data[k] for k in keys if k in data})
            except ValidationError:
                continue
            out += _refusals(section, checks(section), path)
    for name, field in model.model_fields.items():  # the sections in it
        sub, cls = data.get(name, {}), field.annotation
        if isinstance(cls, type) and issubclass(cls, BaseModel) and isinstance(sub, Mapping):
            out += name_problems(cls, sub, (*path, name))
    return out


def check_names(cfg: BaseModel) -> None:
    """Raise one ConfigError naming every task family, held-out domain, meta-test data set,
    target model, policy backbone and baseline in ``cfg`` (any stage config) that its registry
    refuses, each with its key and the registered choices; return None when every name is known."""
    problems = name_problems(type(cfg), cfg.model_dump())
    if problems:
        raise ConfigError("Invalid config: " + "; ".join(dict.fromkeys(problems)) + ".")
