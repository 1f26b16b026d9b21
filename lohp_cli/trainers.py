"""The registry of training methods: what ``train-policy --method NAME`` can train.

Each method registers its name(s), its config model (a subclass of
:class:`lohp_cli.config.TrainConfig` whose ``method`` field is a ``Literal`` of exactly those
names, carrying only that method's fields) and its fit function. ``TrainConfig`` validates as
the discriminated union (by ``method``) of the registered config models.

The Lo-Hp family (lo-hp, lo-op, lo-di, hypernetwork) registers from :mod:`lohp_cli.config`; plug-ins
(the learned optimizers of :mod:`lohp_cli.l2o`, the diffusion generator of
:mod:`lohp_cli.diffusion`) register when imported, which the stages and the CLI do; the core never
imports a plug-in. Only pydantic here: no torch at import time.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter

Fit = Callable[..., Any]
"""``fit(cfg, progress=None) -> TrainResult``: train (or resume) what ``cfg`` describes."""


@dataclass(frozen=True)
class TrainMethod:
    """One registered training method (or family of methods sharing a config model)."""

    names: tuple[str, ...]
    config: type[BaseModel]
    fit: Fit | str
    """The fit function, or ``"module:function"`` imported on first use (keeps imports light)."""
    generates_weights: bool = True
    """Whether its policies generate weights (``lohp generate``, ``load_policy``)."""
    kind: str = "weight generator"
    """What one of its policies is, in messages."""
    use: str = ""
    """Where its policies are used instead, for a method that does not generate weights."""
    build: Callable[..., Any] | str | None = None
    """For a weight generator outside the Lo-Hp family: builds the module of one of its policy
    directories, ``build(cfg, size, cond_dim, n_steps, stats, classes, layout) -> nn.Module``
    (as :func:`lohp_cli.policy.directory.build_model`), or ``"module:function"``; None: the Lo-Hp
    family's ``build_model``."""
    chooses_steps: bool = False
    """Whether its policies choose their number of generation steps when generating (a diffusion
    sampler's S; ``set_sample_steps(S)`` on the module), instead of the N = T/k fixed by
    training; their steps are not local optimizer steps."""

    def fit_function(self) -> Fit:
        return _imported(self.fit)

    def build_function(self) -> Callable[..., Any] | None:
        return None if self.build is None else _imported(self.build)


def _imported(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """``fn`` itself, or the function a ``"module:function"`` string names (imported now)."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


_METHODS: dict[str, TrainMethod] = {}
_ADAPTER: dict[tuple[type[BaseModel], ...], TypeAdapter[Any]] = {}


def _literal_names(config: type[BaseModel]) -> tuple[str, ...]:
    field = config.model_fields.get("method")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        raise TypeError(f"{config.__name__}.method must be a Literal of the method names")
    return typing.get_args(field.annotation)


def register(method: TrainMethod) -> TrainMethod:
    """Add ``method`` (idempotent for the same config model); returns it."""
    if set(_literal_names(method.config)) != set(method.names):
        raise TypeError(
            f"{method.config.__name__}.method allows {list(_literal_names(method.config))}, "
            f"not the registered names {list(method.names)}"
        )
    for name in method.names:
        old = _METHODS.get(name)
        if old is not None and old.config is not method.config:
            raise ValueError(f"training method {name!r} is already registered")
    for name in method.names:
        _METHODS[name] = method
    return method


def unregister(*names: str) -> None:
    """Remove methods (tests)."""
    for name in names:
        _METHODS.pop(name, None)


def get(name: str) -> TrainMethod | None:
    """The method registered under ``name``, or None."""
    return _METHODS.get(name)


def method_names() -> tuple[str, ...]:
    """Every registered method name, in registration order."""
    return tuple(_METHODS)


def config_classes() -> tuple[type[BaseModel], ...]:
    """The registered config models, each once, in registration order."""
    return tuple(dict.fromkeys(m.config for m in _METHODS.values()))


def weight_generators() -> tuple[str, ...]:
    return tuple(n for n, m in _METHODS.items() if m.generates_weights)


def owners(key: str) -> tuple[str, ...]:
    """The method names whose config model has a top-level field ``key``."""
    return tuple(n for n, m in _METHODS.items() if key in m.config.model_fields)


def adapter() -> TypeAdapter[Any]:
    """A ``TypeAdapter`` of the discriminated union (by ``method``) of the registered configs."""
    classes = config_classes()
    if classes not in _ADAPTER:
        union = Union[classes]  # type: ignore[valid-type]  # noqa: UP007 - built at run time
        _ADAPTER.clear()
        _ADAPTER[classes] = TypeAdapter(Annotated[union, Field(discriminator="method")])
    return _ADAPTER[classes]
