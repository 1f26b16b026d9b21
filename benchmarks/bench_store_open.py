"""Benchmark: opening a trajectory store and listing its complete runs with their attributes,
with and without the run index, on local disk and on a local S3-compatible server (moto).

Run from the repository root (needs the dev extra: s3fs, moto[server])::

    python benchmarks/bench_store_open.py                 # 10,000 runs, 3 repeats
    python benchmarks/bench_store_open.py --runs 200      # quicker

The runs are fake (written with the store API in blocks of 64, as ``collect`` writes them, P = 4,
3 states each, with the attributes a real run has; nothing is trained): only their number
matters here. The store is written once on disk and uploaded once to the moto server
(started in this process on 127.0.0.1); the index is then removed and written again between the
variants, which are measured in one process, interleaved (the order rotates every repeat), and
reported as medians. The operation timed is what ``train-policy``, ``inspect`` and ``collect`` do
first: ``TrajectoryStore.open(location)`` then ``list(store.iter_runs())``. For S3 the number of
S3 requests s3fs makes is counted too. moto answers from memory on the same machine, so a real
S3 endpoint (tens of ms per request) widens the gap.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.s3server

from lohp_cli.config import StoreCodecConfig  # noqa: E402
from lohp_cli.store import TrajectoryStore  # noqa: E402
from lohp_cli.store.blocks import block_id  # noqa: E402
from lohp_cli.store.writer import BlockTarget, WriteSink  # noqa: E402
from tests.s3server import BUCKET, counted_s3_calls, local_s3  # noqa: E402

SIZE, STATES = 4, 3
ROOT = {
    "compat": {"family": {"name": "fake"}, "model": {"name": "vector"}, "steps": STATES - 1,
               "record_every": 1, "batch_size": 1, "seed": 0},
    "layout": [{"name": "theta", "shape": [SIZE], "offset": 0}],
    "param_count": SIZE,
    "condition_dim": 1,
}  # fmt: skip


HPARAMS = {"optimizer": "adam", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-08,
           "weight_decay": 0.0, "decoupled": False}  # fmt: skip


def fake_store(path: Path, runs: int, block_runs: int = 64) -> None:
    """``runs`` complete runs of random weights in blocks of ``block_runs``, written with the
    store API, with a real run's attributes, and the index."""
    store, _ = TrajectoryStore.create_or_open(str(path), ROOT)
    rng = np.random.default_rng(0)
    codec = StoreCodecConfig()
    sink = WriteSink(depth=2)
    for first in range(0, runs, block_runs):
        n = min(block_runs, runs - first)
        ids = [f"t{i // 4}-adam-s{i % 4}" for i in range(first, first + n)]
        attrs = [{"task_id": f"t{i // 4}", "optimizer": "adam", "replicate": i % 4,
                  "seed": 10**18 + i, "hparams": HPARAMS, "steps": STATES - 1, "record_every": 1,
                  "batch_size": 64, "device": "cpu"} for i in range(first, first + n)]  # fmt: skip
        target = BlockTarget(block_id(ids), ids, list(range(n)), attrs, True)
        writer = store.block_writer(target, STATES, SIZE, codec, sink)
        for w in rng.standard_normal((STATES, n, SIZE)).astype(np.float32):
            writer.append(w, np.zeros(n), np.zeros(n))
        writer.finish()
    sink.close()
    store.write_run_index()


def set_index(location: str, on: bool) -> None:
    """Write the run index (``on``) or remove it."""
    if on:
        TrajectoryStore.open(location, mode="r+").write_run_index()
    else:
        runs = zarr.open_group(location, mode="r+")["blocks"]
        if "index" in runs.attrs:
            del runs.attrs["index"]


def open_and_list(location: str) -> int:
    """Open the store and list its complete runs with their validated attributes."""
    return len(list(TrajectoryStore.open(location).iter_runs()))


def open_and_list_ids(location: str) -> int:
    """Open the store and list its run ids (no attribute validated)."""
    return len(TrajectoryStore.open(location).run_ids())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, local_s3() as endpoint, counted_s3_calls() as calls:
        import s3fs

        local = Path(tmp) / "store.zarr"
        t0 = time.perf_counter()
        fake_store(local, args.runs)
        dt = time.perf_counter() - t0
        print(f"wrote {args.runs} runs locally in {dt:.1f} s", file=sys.stderr)
        url = f"s3://{BUCKET}/bench.zarr"
        t0 = time.perf_counter()
        s3fs.S3FileSystem().put(str(local), url.removeprefix("s3://"), recursive=True)
        print(f"uploaded to {endpoint} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        variants = [(where, loc, on) for where, loc in (("disk", str(local)), ("s3 (moto)", url))
                    for on in (True, False)]  # fmt: skip
        times: dict[tuple[str, bool], list[float]] = {(w, on): [] for w, _, on in variants}
        ids: dict[tuple[str, bool], list[float]] = {(w, on): [] for w, _, on in variants}
        requests: dict[tuple[str, bool], int] = {}
        for rep in range(args.repeats + 1):  # the first round warms up, and is not counted
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for where, loc, on in order:
                set_index(loc, on)
                calls.clear()
                t0 = time.perf_counter()
                listed = open_and_list(loc)
                dt = time.perf_counter() - t0
                assert listed == args.runs, (where, on, listed)
                if rep:
                    times[(where, on)].append(dt)
                    requests[(where, on)] = sum(calls.values())
                t0 = time.perf_counter()
                assert open_and_list_ids(loc) == args.runs
                if rep:
                    ids[(where, on)].append(time.perf_counter() - t0)
                print(f"  {where} index={on}: {dt:.3f} s", file=sys.stderr)

    print(f"\nOpen a store of {args.runs} runs and list its complete runs with their attributes")
    print(f"(median of {args.repeats}, interleaved):\n")
    print("| store | run index | run ids, s | runs with attributes, s | S3 requests | without / "
          "with |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for where in ("disk", "s3 (moto)"):
        with_, without = (statistics.median(times[(where, on)]) for on in (True, False))
        for on, med in ((True, with_), (False, without)):
            reqs = requests[(where, on)] if where != "disk" else "-"
            ratio = f"{without / with_:.1f}×" if not on else ""
            id_s = statistics.median(ids[(where, on)])
            print(f"| {where} | {'yes' if on else 'no'} | {id_s:.3f} | {med:.3f} | {reqs} | "
                  f"{ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
