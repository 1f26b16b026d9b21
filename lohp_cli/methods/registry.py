"""Baseline names → the methods they stand for, and policy-directory kinds → their method.

Built-in baselines are built below from the name groups of :mod:`lohp_cli.config.stages` (the one
list of the names); a plug-in registers its own when imported (``lohp_cli.methods.prototype``,
``lohp_cli.l2o.method``, which only the evaluate stage imports). Which names exist is the
registry's to say: :func:`check_baseline` refuses any other. A new method is one module plus
one registration: a baseline name and a factory ``(name, config, budgets) -> [Method, ...]``, or a
policy-directory kind (the ``method`` of its ``config.json``) and a factory ``(name, path) ->
Method``. A "stepped" baseline (an optimizer) runs after every other method, once per step budget:
the store's T·r and the N of each method scored before it, and also at 0 steps when it starts
somewhere of its own (``from_start``: the meta-learned starts, whose start alone is a row). A
baseline's ``check`` (optional) sees the evaluation context before any method runs, to refuse a
store it cannot run on at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lohp_cli.artifacts.policy import stored_method
from lohp_cli.config import OPTIMIZERS, EvaluateConfig
from lohp_cli.config.stages import BASELINES, MEMORIZATION_BASELINES, META_START_BASELINES
from lohp_cli.errors import ConfigError
from lohp_cli.methods.base import EvalContext, Method
from lohp_cli.methods.erm import erm_baseline
from lohp_cli.methods.full_finetune import check_adapted, full_finetune_methods
from lohp_cli.methods.hypernetwork import hypernetwork_baseline
from lohp_cli.methods.memorization import check_runs, memorization_baseline
from lohp_cli.methods.meta_start import meta_start_methods
from lohp_cli.methods.optimizer import optimizer_methods
from lohp_cli.methods.policy import PolicyMethod

BaselineFactory = Callable[[str, EvaluateConfig, tuple[int, ...]], list[Method]]
PolicyFactory = Callable[[str, str], Method]
Check = Callable[[EvalContext], None]


@dataclass(frozen=True)
class Baseline:
    factory: BaselineFactory
    stepped: bool = False  # runs last, once per step budget
    check: Check | None = None  # raises when the baseline cannot run in this context
    from_start: bool = False  # stepped from a start of its own: also scored at 0 steps


def _optimizers(name: str, _cfg: EvaluateConfig, budgets: tuple[int, ...]) -> list[Method]:
    return list(optimizer_methods(name, budgets))


def _full_ft(name: str, cfg: EvaluateConfig, budgets: tuple[int, ...]) -> list[Method]:
    return list(full_finetune_methods(name, cfg, budgets))


def _meta_start(name: str, cfg: EvaluateConfig, budgets: tuple[int, ...]) -> list[Method]:
    return list(meta_start_methods(name, cfg, budgets))


_BASELINES: dict[str, Baseline] = {
    **{name: Baseline(_optimizers, stepped=True) for name in OPTIMIZERS},
    "hypernetwork": Baseline(hypernetwork_baseline),
    **{n: Baseline(memorization_baseline, check=check_runs(n)) for n in MEMORIZATION_BASELINES},
    "erm": Baseline(erm_baseline),  # domain families only: Adam on the pooled source domains
    "full-ft": Baseline(_full_ft, stepped=True, check=check_adapted),
    **{n: Baseline(_meta_start, stepped=True, from_start=True) for n in META_START_BASELINES},
}
_POLICY_KINDS: dict[str, PolicyFactory] = {}


def register(
    name: str, factory: BaselineFactory, *, stepped: bool = False, check: Check | None = None
) -> None:
    """Make ``name`` a baseline; refuses a name another factory already holds."""
    entry = Baseline(factory, stepped, check)
    if _BASELINES.setdefault(name, entry) != entry:
        raise ValueError(f"baseline {name!r} is already registered")


def register_policy_kind(method: str, factory: PolicyFactory) -> None:
    """Score policy directories whose ``config.json`` says ``method`` with ``factory``."""
    if _POLICY_KINDS.setdefault(method, factory) != factory:
        raise ValueError(f"policy kind {method!r} is already registered")


def names() -> tuple[str, ...]:
    """Every baseline name: the built-in ones in the order of ``config.BASELINES``, then those
    registered from outside lohp."""
    return (
        *[n for n in BASELINES if n in _BASELINES],
        *[n for n in _BASELINES if n not in BASELINES],
    )


def check_baseline(name: str) -> str:
    """``name`` when it is a baseline; a ConfigError listing the baselines otherwise."""
    if name not in _BASELINES:
        raise ConfigError(
            f"Unknown baseline {name!r}; choose from {', '.join(names())} (other trained "
            "policies go in --policy NAME=DIR)."
        )
    return name


def _entry(name: str) -> Baseline:
    return _BASELINES[check_baseline(name)]


def is_stepped(name: str) -> bool:
    return _entry(name).stepped


def step_budgets(name: str, budgets: tuple[int, ...]) -> tuple[int, ...]:
    """The budgets stepped baseline ``name`` is scored at with its main rows: ``budgets``, and 0
    (its start) for a baseline with a start of its own."""
    return (*budgets, 0) if _entry(name).from_start else budgets


def check(name: str, ctx: EvalContext) -> None:
    """Let baseline ``name`` refuse ``ctx`` before any method runs (a ConfigError)."""
    entry = _entry(name)
    if entry.check is not None:
        entry.check(ctx)


def baseline(name: str, cfg: EvaluateConfig, budgets: tuple[int, ...] = ()) -> list[Method]:
    """The methods of baseline ``name`` (none when another row already covers it)."""
    return _entry(name).factory(name, cfg, budgets)


def policy_kind(path: str | Path) -> str | None:
    """The ``method`` a policy directory's ``config.json`` names, or None when unreadable."""
    return stored_method(path)


def policy_method(name: str, path: str) -> Method:
    """The method scoring ``--policy name=path``: its kind's, else a generating policy."""
    factory = _POLICY_KINDS.get(policy_kind(path) or "", PolicyMethod)
    return factory(name, path)
