"""``init_lock``: processes (here: threads with their own open file) initialising one store take
turns, and no lock file is left behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lohp_cli.store.location import init_lock


def test_the_second_waits_for_the_first_and_the_lock_file_goes(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "s.zarr"  # the parent is made for the lock file
    order: list[str] = []

    def second() -> None:
        with init_lock(str(out)):
            order.append("second")

    with init_lock(str(out)):
        assert (tmp_path / "sub" / "s.zarr.lock").exists()
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(timeout=10)
    assert order == ["first done", "second"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_url_store_has_no_lock(tmp_path: Path) -> None:
    with init_lock("memory://somewhere"):
        pass
    assert list(tmp_path.iterdir()) == []
