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
        pytest.param(
            ["--scheduler", "foo://1.2.3.4:99"], ["foo://1.2.3.4:99", "'foo'"], id="scheme"
        ),
        pytest.param(["--scheduler", "tcp://127.0.0.1:abc"], ["'abc'"], id="port"),
        pytest.param(["--scheduler", "tcp://127.0.0.1:70000"], ["70000"], id="port-range"),
    ],
)
def test_a_bad_scheduler_is_a_config_error(store: Path, args: list[str], names: list[str]) -> None:
    before = snapshot(store)
    assert_error(invoke("collect", "--out", store, *tiny_sets(), *args), 2, names)
    assert snapshot(store) == before


@pytest.mark.slow
@pytest.mark.parametrize("address", ["foo://1.2.3.4:99", "tcp://127.0.0.1:abc"])
def test_a_bad_address_exits_at_once_without_a_dask_traceback(tmp_path: Path, address: str) -> None:
    """Before: the right error line, then a Client.__del__ traceback and a 40 s hang."""
    import subprocess
    import time

    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "lohp_cli", "collect", "--out", str(tmp_path / "s.zarr"),
         *tiny_sets(), "--scheduler", address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "s.zarr").exists()
