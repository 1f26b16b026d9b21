"""``lohp_cli.cluster`` on an in-process cluster reached by its ``tcp://`` address (what
``--scheduler tcp://HOST:PORT`` does): results as they finish, transient failures retried, a user
error (LohpError) raised at once without retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lohp_cli.cluster import RETRIES, connect, map_unordered
from lohp_cli.errors import DataError

distributed = pytest.importorskip("distributed")

CALLS: dict[str, int] = {}
LOCK = threading.Lock()


def flaky(label: str, fails: int, error: type[Exception]) -> str:
    """Fails ``fails`` times with ``error``, then returns ``label`` (calls counted per label)."""
    with LOCK:
        CALLS[label] = CALLS.get(label, 0) + 1
        n = CALLS[label]
    if n <= fails:
        raise error(f"{label} failed (call {n})")
    return label


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        connect(cluster.scheduler_address) as c,
    ):
        assert cluster.scheduler_address.startswith("tcp://")
        yield c


def test_every_result_once_and_transient_failures_retried(client: Any) -> None:
    items = {f"t{i}": (f"t{i}", i % 2 * RETRIES, OSError) for i in range(6)}
    got = list(map_unordered(client, flaky, items, "test"))
    assert sorted(got) == sorted(items)
    assert {k: CALLS[k] for k in items} == {k: 1 + i % 2 * RETRIES for i, k in enumerate(items)}


def test_a_user_error_is_raised_at_once(client: Any) -> None:
    with pytest.raises(DataError, match="bad failed"):
        list(map_unordered(client, flaky, {"bad": ("bad", 10, DataError)}, "test"))
    assert CALLS["bad"] == 1  # not retried


def test_an_unknown_scheme_is_refused_before_a_client_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Client made for an address Dask cannot parse is left half-built; its __del__ printed a
    traceback and waited 40 s at exit. The scheme is checked first."""
    import distributed

    from lohp_cli.errors import ConfigError

    def no_client(*_a: object, **_k: object) -> None:
        raise AssertionError("a Client was made")

    monkeypatch.setattr(distributed, "Client", no_client)
    with pytest.raises(ConfigError, match="unknown address scheme 'foo'"):
        with connect("foo://1.2.3.4:99"):
            pass
