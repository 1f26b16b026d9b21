"""``lohp collect --scheduler``: the user's mistakes give one error line, a non-zero exit and no
change to the store (the cluster runs themselves: tests/integration/test_collect_cluster.py)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.cli.runner import invoke
from tests.cli.test_cli import assert_error, base_store, snapshot, store, tiny_sets

__all__ = ["base_store", "store"]  # fixtures the tests below use


def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_dask_the_error_names_the_extra(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    new = tmp_path / "new.zarr"
    result = invoke("collect", "--out", new, *tiny_sets(), "--scheduler", "local:2")
    line = assert_error(result, 2, ["local:2"])
    assert "pip install 'lohp[cluster]'" in line
    assert not new.exists()


def test_nothing_listening_at_the_address(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lohp_cli.cluster.CONNECT_TIMEOUT_S", 0.5)
    before = snapshot(store)
    address = f"tcp://127.0.0.1:{free_port()}"
    result = invoke("collect", "--out", store, *tiny_sets(tasks=3), "--scheduler", address)
    assert_error(result, 2, [address])
    assert snapshot(store) == before


def test_a_memory_store_is_refused() -> None:
    result = invoke("collect", "--out", "memory://x", *tiny_sets(), "--scheduler", "local:2")
    assert "memory://" in assert_error(result, 3, [])


@pytest.mark.parametrize(
    ("args", "names"),
    [
        pytest.param(["--scheduler", "local:0"], ["local:0"], id="local-0"),
        pytest.param(["--scheduler", "somehost"], ["somehost"], id="no-scheme"),
        pytest.param(["--scheduler", "local:2", "--workers", "2"], ["workers"], id="workers"),
    ],
)
def test_a_bad_scheduler_is_a_config_error(store: Path, args: list[str], names: list[str]) -> None:
    before = snapshot(store)
    assert_error(invoke("collect", "--out", store, *tiny_sets(), *args), 2, names)
    assert snapshot(store) == before
