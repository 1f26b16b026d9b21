"""Run functions on a Dask distributed cluster (optional: ``pip install 'lohp[cluster]'``).

Core layer: knows Dask, not the stages. A stage opens a client with :func:`connect` and maps a
function over its work with :func:`map_unordered`; the function runs in the workers' processes and
must be importable there (the same lohp installed on every worker).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lohp_cli.errors import ConfigError, LohpError

INSTALL_HINT = "pip install 'lohp[cluster]'"
CONNECT_TIMEOUT_S = 20.0  # how long a scheduler address may take to answer
RETRIES = 3  # re-runs of a task that raised something other than a LohpError


def require(scheduler: str) -> Any:
    """The ``distributed`` module; :class:`ConfigError` naming the extra when it is missing."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            f"--scheduler {scheduler} needs Dask distributed, which is not installed: "
            f"{INSTALL_HINT}."
        ) from None
    return distributed


def check_address(distributed: Any, scheduler: str) -> None:
    """A ConfigError unless Dask has a comm backend for the address's scheme. Checked before a
    ``Client`` is made: one made for an address it cannot parse is left half-built, and its
    ``__del__`` then prints a traceback and waits 40 s at exit."""
    scheme = scheduler.partition("://")[0]
    try:
        distributed.comm.registry.get_backend(scheme)
    except ValueError as exc:
        raise ConfigError(f"--scheduler {scheduler}: {exc}.") from None


@contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed on exit.

    ``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes on this machine
    (bound to 127.0.0.1, no dashboard, only its errors logged) for the duration; any other value
    is the address of a running scheduler (``tcp://HOST:PORT``). Raises :class:`ConfigError`
    when Dask is not installed or nothing answers at the address.
    """
    distributed = require(scheduler)
    cluster = None
    if scheduler.startswith("local:"):
        cluster = distributed.LocalCluster(
            n_workers=int(scheduler.removeprefix("local:")),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,  # not "worker still alive after 4 s, killing" at close
        )
        client = distributed.Client(cluster, set_as_default=False)
    else:
        check_address(distributed, scheduler)
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(
                f"No Dask scheduler answers at --scheduler {scheduler} ({reason}); start one "
                "('dask scheduler') or check the address."
            ) from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@dataclass(frozen=True)
class _Raised:
    """A user error raised in a worker, returned as a value so Dask does not retry it."""

    error: LohpError


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except LohpError as exc:  # deterministic: a retry would fail the same way
        return _Raised(exc)


def map_unordered(
    client: Any, fn: Callable[..., Any], items: Mapping[str, tuple[Any, ...]], name: str
) -> Iterator[Any]:
    """``fn(*args)`` for each ``label: args`` of ``items`` on the cluster, yielded as each
    finishes.

    A task whose worker dies is re-run on another one (the scheduler's ``allowed-failures``); one
    that raises is retried :data:`RETRIES` times, except for a :class:`LohpError`, which is raised
    here at once. Tasks not yet finished are cancelled when the caller stops early or fails.
    The task keys are ``name-label-<random tag>``: concurrent callers on one scheduler never
    share results.
    """
    import distributed

    tag = uuid.uuid4().hex[:8]
    futures = [
        client.submit(_call, fn, *args, key=f"{name}-{label}-{tag}", retries=RETRIES, pure=False)
        for label, args in items.items()
    ]
    try:
        for future in distributed.as_completed(futures, loop=client.loop):
            try:
                out = future.result()
            except distributed.KilledWorker as exc:
                raise ConfigError(
                    f"{exc.allowed_failures + 1} Dask workers died running task {exc.task} (out "
                    "of memory? see the worker logs); the runs already complete are kept: run "
                    "the same command again to resume."
                ) from None
            future.release()
            if isinstance(out, _Raised):
                raise out.error
            yield out
    finally:
        client.cancel(futures)
