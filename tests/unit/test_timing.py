"""Timing on a shared machine (lohp_cli/timing.py) and the threads a stage picks (runtime.py): the
interleaved protocol on a fake clock, quartiles, the noisy-timing warning, thread choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lohp_cli.runtime as runtime
import lohp_cli.timing as timing
from lohp_cli.report.timing import timing_section, timing_warning
from lohp_cli.timing import Latency, TimingRun, interleaved, measure, quartiles


class FakeClock:
    """Wall and CPU clocks that functions advance by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = self.cpu = 0.0
        monkeypatch.setattr(timing, "now", lambda: self.wall)
        monkeypatch.setattr(timing, "cpu_now", lambda: self.cpu)
        monkeypatch.setattr(timing, "load_average", lambda: 0.5)

    def work(self, wall: float, cpu: float | None = None) -> None:
        self.wall += wall
        self.cpu += wall if cpu is None else cpu


def test_quartiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 20):
        v = rng.exponential(size=n).tolist()
        want = np.percentile(v, [25, 50, 75])
        assert quartiles(v) == pytest.approx(tuple(want))


def test_measure_leaves_the_warm_up_out_and_keeps_cpu_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, calls = FakeClock(monkeypatch), []

    def fn() -> None:  # the first call is slow (lazy initialisation), then 2 ms wall, 1 ms CPU
        clock.work(1000.0) if not calls else clock.work(2e-3, 1e-3)
        calls.append(1)

    lat = measure(fn, 3, "cpu")
    assert len(calls) == 4 and lat.repeats == 3
    assert lat.median_ms == pytest.approx(2.0) and lat.cpu_ms == pytest.approx(1.0)
    assert lat.q1_ms == pytest.approx(2.0) and lat.spread == pytest.approx(0.0)
    assert timing.time_ms(fn, 3, "cpu") == pytest.approx(2.0)


def test_interleaved_rotates_the_order_and_stops_when_stable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, order = FakeClock(monkeypatch), []

    def make(name: str, ms: float):  # noqa: ANN202
        def fn() -> None:
            order.append(name)
            clock.work(ms / 1e3)

        return fn

    fns = {n: make(n, ms) for n, ms in (("a", 1.0), ("b", 2.0), ("c", 4.0))}
    seen = []
    lat, run = interleaved(fns, 4, "cpu", progress=lambda d, p: seen.append((d, p)))
    assert order[:3] == ["a", "b", "c"]  # one untimed warm-up each
    rounds = [order[3 + 3 * r : 6 + 3 * r] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert run.rounds == 4 and len(order) == 3 + 12  # constant times: stable after 4
    assert {n: round(v.median_ms, 6) for n, v in lat.items()} == {"a": 1.0, "b": 2.0, "c": 4.0}
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert run.to_json()["load_average"] == {
        "before": 0.5, "during_mean": 0.5, "during_max": 0.5, "after": 0.5,
    }  # fmt: skip


def test_a_burst_of_load_hits_every_method_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls 10 to 21 run 5× slower (another process). Timed one method after the other, the burst
    falls on whichever was being timed; interleaved, every method sees it in the same rounds."""
    clock, calls = FakeClock(monkeypatch), [0]

    def make(ms: float):  # noqa: ANN202
        def fn() -> None:
            calls[0] += 1
            clock.work(ms / 1e3 * (5 if 10 <= calls[0] < 22 else 1))

        return fn

    lat, _ = interleaved({"a": make(1.0), "b": make(1.0)}, 9, "cpu")
    assert lat["a"].median_ms == pytest.approx(lat["b"].median_ms)
    calls[0] = 0
    seq = {n: measure(make(1.0), 9, "cpu") for n in ("a", "b")}  # one after the other
    assert seq["b"].median_ms > 2 * seq["a"].median_ms  # the burst landed on b alone


def test_unstable_medians_get_more_rounds_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, n = FakeClock(monkeypatch), [0]

    def noisy() -> None:  # 1 ms or 3 ms, alternating: the median never settles within 2 %
        n[0] += 1
        clock.work((1.0 if n[0] % 2 else 3.0) / 1e3)

    _, run = interleaved({"x": noisy}, 4, "cpu")
    assert run.rounds == timing.MORE_ROUNDS * 4
    # a slow method on a tight budget: the first MIN_ROUNDS rounds, no more
    _, slow = interleaved({"x": lambda: clock.work(10.0)}, 20, "cpu", budget_s=30.0)
    assert slow.rounds == timing.MIN_ROUNDS
    _, few = interleaved({"x": lambda: clock.work(10.0)}, 2, "cpu", budget_s=1.0)
    assert few.rounds == 2  # fewer rounds asked than MIN_ROUNDS


def test_the_warning_names_noisy_rows_and_rows_that_waited_for_a_core() -> None:
    run = {"threads": 1, "cores": 2, "load_average": {"during_mean": 4.2}}
    rows = [
        {"name": "steady", "latency_ms_batch1": 10.0, "latency_iqr_ms": [9.5, 10.5],
         "cpu_ms_batch1": 9.9},
        {"name": "untimed", "latency_ms_batch1": None, "latency_iqr_ms": None},
    ]  # fmt: skip
    assert timing_warning(rows, run) is None  # a busy machine, but this process had its core
    noisy = [*rows, {"name": "jumpy", "latency_ms_batch1": 10.0, "latency_iqr_ms": [8.0, 13.0]}]
    said = timing_warning(noisy, run)
    assert said is not None and "1 row(s)" in said and "(jumpy)" in said and "waited" not in said
    starved = [*rows, {"name": "slow", "latency_ms_batch1": 20.0, "latency_iqr_ms": [19, 21],
                       "cpu_ms_batch1": 10.0}]  # fmt: skip
    said = timing_warning(starved, run)
    assert said is not None and "waited for a core (load average 4.20 on 2 core(s))" in said
    assert "(slow)" in said
    assert timing_warning(starved, {**run, "threads": 2}) is None  # CPU time of two threads
    section = timing_section("cpu", 10, TimingRun(rounds=10, load_during=[3.4]), rows, None)
    assert section["warning"] is None
    assert section["protocol"] == "interleaved" and section["generate"] is None


def test_a_generated_stores_latency_is_not_copied_into_the_report() -> None:
    gen = {"batched_ms_per_sample": 0.9, "batch_size": 8, "batches_timed": 1,
           "warmup_batches": 1, "device": "cpu", "latency_ms_batch1": 4.6,
           "latency_iqr_ms": [4.0, 5.0], "latency_repeats": 20}  # fmt: skip
    section = timing_section("cpu", 10, None, [], gen)
    assert "latency_ms_batch1" not in section["generate"]
    assert section["generate"]["batched_ms_per_sample"] == 0.9


def test_latency_summary_of_one_run() -> None:
    one = Latency.of([0.004], [0.003])
    assert one.median_ms == one.q1_ms == one.q3_ms == pytest.approx(4.0)
    assert one.relative_se == float("inf") and one.spread == 0.0


# ---- threads --------------------------------------------------------------------------------
def test_auto_threads_share_the_cores_and_leave_busy_ones() -> None:
    assert runtime.auto_threads(2, 1, 0.05) == 2  # an idle 2-core machine: both
    assert runtime.auto_threads(2, 1, 0.9) == 1  # another process on one core
    assert runtime.auto_threads(2, 2, 0.0) == 1  # two lohp processes (make -j2)
    assert runtime.auto_threads(16, 2, 3.0) == 8  # a share, not all that is free
    assert runtime.auto_threads(2, 1, 5.0) == 1  # at least one
    assert runtime.auto_threads(4, 1, None) == 4  # no reading: the share


def test_threads_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "others_busy_now", lambda interval=0.25: 0.0)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv(runtime.PROCESSES_ENV, "2")
    assert runtime.choose_threads(1).threads == 1  # --threads wins
    assert runtime.choose_threads(None).source == "OMP_NUM_THREADS"
    assert runtime.choose_threads(None).threads == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.choose_threads(None, default=1).threads == 1  # evaluate's own default
    auto = runtime.choose_threads(None)
    assert (auto.threads, auto.source, auto.processes) == (2, "auto", 2)  # 4 cores ÷ 2
    assert "4 core(s)" in auto.describe() and "2 lohp process(es)" in auto.describe()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: 2 ranks on this machine
    assert runtime.choose_threads(None).threads == 1


def test_a_stage_runs_on_its_threads_and_restores_the_callers() -> None:
    before, events = torch.get_num_threads(), []
    with runtime.stage_threads(2, events.append) as choice:
        assert torch.get_num_threads() == 2 and choice.source == "--threads"
    assert torch.get_num_threads() == before
    assert events[0]["event"] == "info" and events[0]["threads"] == 2


def test_other_work_is_read_from_the_machines_cpu_time() -> None:
    first = runtime.CoreUse(machine=(100.0, 400.0), own=10.0, wall=0.0)
    later = runtime.CoreUse(machine=(103.0, 404.0), own=11.0, wall=2.0)
    assert first.others_busy(later) == pytest.approx(1.0)  # 3 s busy, 1 s of them ours, in 2 s
    assert runtime.CoreUse(None, 0.0, 0.0).others_busy(later) is None
