"""Collect side by side (issue 23): runs/s of the one-run path, the batched path into the old
layout (a group per run, schema 1), the batched path into blocks (schema 2, written on the
background thread), and training alone (the limit); store size and compression; and whole
``lohp collect`` processes (wall, CPU and peak memory by GNU time). Run through
``bench_collect.py --sections e`` or alone: ``python benchmarks/bench_layout.py [--models
head,mlp,cnn]``.

Every variant of a model runs in each round, in rotating order (the blocks variant writes 4
blocks of R runs, as a collect does: only the last block's write is not overlapped with
training); ratios are medians of per-round ratios, of wall time and of process CPU time (every
thread). Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lohp_cli.config import CollectConfig, StoreCodecConfig
from lohp_cli.optim import build_optimizer
from lohp_cli.optim.batched import train_batched
from lohp_cli.optim.loop import train_loop
from lohp_cli.runtime import derive_seed
from lohp_cli.stages.collect import collect
from lohp_cli.stages.runs import RunContext, RunPlan, new_block
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.legacy import begin_group_run
from lohp_cli.tasks.layout import flat_params, trainable_parameters

BLOCKS = 4  # blocks per round of the blocks variant: only the last one's write is not overlapped


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def config(model: str, out: Path, tasks: int, **over: object) -> CollectConfig:
    data = {"out": str(out), "model": {"name": model}, "tasks": tasks, "seeds": 1,
            "optimizers": ["adam"], "device": "cpu", **over}  # fmt: skip
    return CollectConfig.model_validate(data)


def plans_for(ctx: RunContext, tasks: list[str], n: int, tag: str) -> list[RunPlan]:
    """``n`` Adam runs over ``tasks`` with fresh ids (replicates tagged per variant and round)."""
    rep = abs(hash(tag)) % 10**6
    out = []
    for i in range(n):
        t = tasks[i % len(tasks)]
        r = rep * 1000 + i
        out.append(RunPlan(f"{t}-adam-s{r}", t, "adam", r, derive_seed(0, t, "adam", r)))
    return out


def train_alone(ctx: RunContext, plans: list[RunPlan]) -> None:
    models = [ctx._model(p) for p in plans]
    theta0 = torch.stack([flat_params(m) for m in models])
    data = [ctx.train_set(p.task_id) for p in plans]
    gens = [torch.Generator().manual_seed(derive_seed(p.seed, "batches")) for p in plans]
    c = ctx.cfg
    xs, ys = [x for x, _ in data], [y for _, y in data]
    train_batched(models[0], "adam", c.optim, theta0, xs, ys, c.steps, c.record_every,
                  c.batch_size, gens, None)  # fmt: skip


def one_run_v1(ctx: RunContext, plans: list[RunPlan], root: object) -> None:
    """Today's one-run path before blocks: train_loop, each run its own group (schema 1)."""
    c = ctx.cfg
    for p in plans:
        (x_train, y_train), model = ctx.train_set(p.task_id), ctx._model(p)
        opt = build_optimizer("adam", trainable_parameters(model), c.optim)
        gen = torch.Generator().manual_seed(derive_seed(p.seed, "batches"))
        w = begin_group_run(root, p.run_id, c.recorded_states, ctx.layout_size, c.store,
                            ctx._attrs(p))  # fmt: skip

        def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
            w.append(theta.numpy(), float(loss), float(acc))  # noqa: B023

        train_loop(model, opt, x_train, y_train, c.steps, c.record_every,
                   c.batch_size, gen, record)  # fmt: skip
        w.finish()


def batched_v1(ctx: RunContext, plans: list[RunPlan], root: object) -> None:
    """The batched path of issue 15: runs trained together, each written to its own group."""
    c = ctx.cfg
    models = [ctx._model(p) for p in plans]
    theta0 = torch.stack([flat_params(m) for m in models])
    data = [ctx.train_set(p.task_id) for p in plans]
    gens = [torch.Generator().manual_seed(derive_seed(p.seed, "batches")) for p in plans]
    writers = [begin_group_run(root, p.run_id, c.recorded_states, ctx.layout_size, c.store,
                               ctx._attrs(p)) for p in plans]  # fmt: skip

    def record(theta: torch.Tensor, loss: torch.Tensor, acc: torch.Tensor) -> None:
        w, lo, ac = theta.numpy(), loss.numpy(), acc.numpy()
        for r, wr in enumerate(writers):
            wr.append(w[r], lo[r], ac[r])

    xs, ys = [x for x, _ in data], [y for _, y in data]
    train_batched(models[0], "adam", c.optim, theta0, xs, ys, c.steps, c.record_every,
                  c.batch_size, gens, record)  # fmt: skip
    for wr in writers:
        wr.finish()


def blocks_v2(ctx: RunContext, blocks: list[list[RunPlan]]) -> None:
    """What collect runs now: blocks of runs, the next trained while the last is written."""
    list(ctx.execute_blocks([new_block(b) for b in blocks]))


def bench_model(model: str, root: Path, runs: int, rounds: int) -> dict[str, object]:
    cfg = config(model, root / f"{model}.zarr", 8, batch_runs=runs)
    collect(cfg.model_copy(update={"tasks": 1}))  # the store and its frozen parts, once
    ctx = RunContext(cfg, "cpu")
    tasks = [t.id for t in ctx.family.tasks("source", 8)]
    old = TrajectoryStore.create_or_open(
        str(root / f"{model}-v1.zarr"), {**ctx.store.meta.to_json(), "schema_version": 1}
    )[0].root
    batchable = ctx.batchable
    one_n = 4 if model != "cnn" else 2
    times: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}  # process CPU (every thread: zarr's, the writer's)
    variants = ["one", "train", "v1", "v2"] if batchable else ["one", "v2"]
    for rnd in range(rounds + 1):
        order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
        for v in order:
            tag = f"{model}-{v}-{rnd}"
            n = one_n if v == "one" else runs * (BLOCKS if v == "v2" and batchable else 1)
            plans = plans_for(ctx, tasks, n, tag)
            t0, c0 = time.perf_counter(), time.process_time()
            if v == "one":
                one_run_v1(ctx, plans, old)
            elif v == "train":
                train_alone(ctx, plans)
            elif v == "v1":
                batched_v1(ctx, plans, old)
            else:  # BLOCKS blocks: each trains while the one before is written
                size = runs if batchable else n
                blocks_v2(ctx, [plans[i : i + size] for i in range(0, n, size)])
            ms = (time.perf_counter() - t0) * 1e3 / n
            if rnd:  # round 0 warms up
                times.setdefault(v, []).append(ms)
                cpus.setdefault(v, []).append((time.process_time() - c0) * 1e3 / n)
            log(f"{model} round {rnd} {v}: {ms:.2f} ms/run")
    out: dict[str, object] = {"model": model, "P": ctx.layout_size, "R": runs}
    for v, xs in times.items():
        out[f"{v}_ms"] = statistics.median(xs)

    def ratio(a: str, b: str, of: dict[str, list[float]] = times) -> float:
        return statistics.median(x / y for x, y in zip(of[a], of[b], strict=True))

    out["v2_vs_one"] = ratio("one", "v2")
    out["v2_vs_one_cpu"] = ratio("one", "v2", cpus)
    if batchable:
        out["train_vs_one"] = ratio("one", "train")
        out["v1_vs_one"] = ratio("one", "v1")
        out["v2_over_train"] = ratio("v2", "train")
        out["v2_over_train_cpu"] = ratio("v2", "train", cpus)
        out["train_vs_one_cpu"] = ratio("one", "train", cpus)
        out["share_of_limit"] = out["v2_vs_one"] / out["train_vs_one"]  # type: ignore[operator]
    s = TrajectoryStore.open(str(root / f"{model}.zarr"))
    raw = len(s.complete_runs()) * s.meta.compat.states * s.meta.param_count * 4
    out["ratio_v2"] = raw / (s.weight_bytes_on_disk() or 1)
    s1 = TrajectoryStore.open(str(root / f"{model}-v1.zarr"))
    raw1 = len(s1.complete_runs()) * s1.meta.compat.states * s1.meta.param_count * 4
    out["ratio_v1"] = raw1 / (s1.weight_bytes_on_disk() or 1)
    return out


# The lossless options of the codec study (--codecs), the default first: pcodec's levels and
# delta orders, the transpose, larger chunks, and zarr's blosc (byte and bit shuffle) and zstd.
LOSSLESS = [
    StoreCodecConfig(),
    StoreCodecConfig(level=12),
    StoreCodecConfig(delta=0),
    StoreCodecConfig(delta=1),
    StoreCodecConfig(delta=2),
    StoreCodecConfig(transpose=False),
    StoreCodecConfig(chunk_runs=64),
    StoreCodecConfig(codec="blosc-zstd", level=9),
    StoreCodecConfig(codec="blosc-zstd", level=9, shuffle="bitshuffle"),
    StoreCodecConfig(codec="blosc-zstd", level=9, shuffle="bitshuffle", chunk_runs=64),
    StoreCodecConfig(codec="blosc-lz4", shuffle="bitshuffle", chunk_runs=64),
    StoreCodecConfig(codec="zstd", level=9),
]


STUDY_BLOCKS = 2  # blocks of R runs each option rewrites (mlp: 64 MB of raw weights a block)


def codec_label(c: StoreCodecConfig) -> str:
    """The options of ``c`` that differ from the default, e.g. ``blosc-zstd, level 9``."""
    diff = c.model_dump(exclude_defaults=True)
    return ", ".join(f"{k} {v}" if k != "codec" else str(v) for k, v in diff.items()) or "default"


def codec_study(model: str, root: Path, path: Path | None = None) -> list[list[object]]:
    """The weights of :data:`STUDY_BLOCKS` full blocks of the blocks store of ``bench_model`` (or
    of the store at ``path``),
    each ``[R, T+1, P]`` rewritten with every :data:`LOSSLESS` option as ``new_block`` creates a
    block's weights (its chunks, filters, serializer and compressors): ``[model, option,
    raw/disk, encode ms per run]``, each option checked to round-trip bit for bit."""
    import shutil

    import zarr

    from lohp_cli.store.blocks import chunk_runs
    from lohp_cli.store.codecs import codecs_for, filters_for, serializer_for

    store = TrajectoryStore.open(str(path or root / f"{model}.zarr"))
    by_block: dict[str, list[str]] = {}
    for rid in store.complete_runs():
        by_block.setdefault(store.slot(rid)[0], []).append(rid)  # type: ignore[index]
    full = [rids for rids in by_block.values() if len(rids) == max(map(len, by_block.values()))]
    blocks = [np.stack([store.weights(r) for r in rids]) for rids in full[:STUDY_BLOCKS]]
    raw = sum(b.nbytes for b in blocks)
    rows: list[list[object]] = []
    for opt in LOSSLESS:
        out = root / "codec-study"
        shutil.rmtree(out, ignore_errors=True)
        group = zarr.open_group(zarr.storage.LocalStore(out), mode="w")
        t0 = time.perf_counter()
        for i, w in enumerate(blocks):
            runs, states, size = w.shape
            arr = group.create_array(str(i), shape=w.shape, dtype="float32",
                                     chunks=(chunk_runs(opt, states, size, runs),
                                             min(opt.chunk_steps, states), size),
                                     filters=filters_for(opt, 3), serializer=serializer_for(opt),
                                     compressors=codecs_for(opt), fill_value=np.nan)  # fmt: skip
            arr[...] = w
        ms = (time.perf_counter() - t0) * 1e3 / sum(len(b) for b in blocks)
        back = zarr.open_group(zarr.storage.LocalStore(out), mode="r")
        for i, w in enumerate(blocks):
            if np.asarray(back[str(i)][...]).tobytes() != w.tobytes():
                raise RuntimeError(f"{codec_label(opt)} did not round-trip")
        disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.parent != out)
        rows.append([model, codec_label(opt), raw / disk, ms])
        log(f"{model} codec {codec_label(opt)}: {raw / disk:.3f}x")
    return rows


def print_codecs(rows: list[list[object]]) -> None:
    print(
        "\n| model or store | lossless codec option (blocks) | weights raw/disk | encode ms/run |"
    )
    print("|---|---|---|---|")
    for model, label, ratio, ms in rows:
        print(f"| {model} | {label} | {ratio:.3f}x | {ms:.2f} |")


def process(args: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one ``lohp`` process,
    measured by GNU time (a child forked from this large process would count its pages)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.NamedTemporaryFile("r") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", out.name, "-f", "%U %S %M",
                               sys.executable, "-m", "lohp_cli", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - t0
        user, system, rss_kb = out.read().split()[-3:]
    if proc.returncode != 0:
        raise RuntimeError(f"lohp {' '.join(args)} failed ({proc.returncode})")
    return wall, float(user) + float(system), float(rss_kb) / 1024


def bench_processes(root: Path, sizes: list[int]) -> list[list[object]]:
    """Whole ``lohp collect`` processes as a user runs them (default settings: Fashion-MNIST
    head, 3 optimizers × 2 seeds per task), adding ``runs`` runs to a store whose extractor was
    trained by an earlier collect: blocks of 64 vs one run at a time (``--batch-runs 1``); and
    ``lohp inspect --json`` of the result. Wall and CPU seconds and peak RSS by GNU time."""
    import shutil

    rows: list[list[object]] = []
    seed = root / "proc-seed.zarr"
    process(["collect", "--out", str(seed), "--set", "tasks=1", "--device", "cpu"])  # set-up
    for runs in sizes:
        tasks = max(2, runs // 6 + 1)
        added = (tasks - 1) * 6
        for label, extra in (("blocks of 64", []), ("one at a time", ["--batch-runs", "1"])):
            out = root / f"proc-{runs}-{len(extra)}.zarr"
            shutil.copytree(seed, out)
            wall, cpu, rss = process(["collect", "--out", str(out), "--set", f"tasks={tasks}",
                                      "--device", "cpu", *extra])  # fmt: skip
            rows.append([label, added, wall, cpu, added / wall, rss])
            if not extra:
                wall, cpu, rss = process(["inspect", str(out), "--json"])
                rows.append(["lohp inspect --json", added + 6, wall, cpu, None, rss])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="head,mlp,cnn")
    ap.add_argument("--runs", type=int, default=64, help="R, runs per block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--process-runs", default="192,960", help="store sizes of the process rows")
    ap.add_argument("--codecs", action="store_true",
                    help="rewrite 2 blocks of each model with lossless codec options")  # fmt: skip
    ap.add_argument("--codec-store", type=Path,
                    help="only the codec study, on the full blocks of this store")  # fmt: skip
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.codec_store is not None:
        with tempfile.TemporaryDirectory() as d:
            rows = codec_study(str(a.codec_store), Path(d), a.codec_store)
        print_codecs(rows)
        return 0
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        results = [bench_model(m, root, a.runs if m != "cnn" else 16, a.rounds)
                   for m in a.models.split(",")]  # fmt: skip
        models = a.models.split(",")
        codecs = [row for m in models for row in codec_study(m, root)] if a.codecs else []
        sizes = [int(x) for x in a.process_runs.split(",") if x]
        procs = bench_processes(root, sizes) if sizes else []
    load1 = os.getloadavg()
    print(f"1-min load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
          f"torch threads 1; {a.rounds} rounds after a warm-up.\n")  # fmt: skip
    print(
        "| model | P | R | one-run ms/run | train alone | batched, old layout | batched, "
        "blocks | runs/s blocks / one-run | training alone / one-run | share of the limit | "
        "blocks / training alone | weights raw/disk, blocks | old layout | CPU: blocks / one-run | "
        "CPU: training alone / one-run | CPU: blocks / training alone |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:

        def g(k: str, f: str = "{:.2f}", r: dict = r) -> str:
            return f.format(r[k]) if k in r else "–"

        print(f"| {r['model']} | {r['P']} | {r['R']} | {g('one_ms')} | {g('train_ms')} | "
              f"{g('v1_ms')} | {g('v2_ms')} | **{g('v2_vs_one', '{:.1f}x')}** | "
              f"{g('train_vs_one', '{:.1f}x')} | {g('share_of_limit', '{:.0%}')} | "
              f"**{g('v2_over_train', '{:.3f}x')}** | {g('ratio_v2', '{:.3f}x')} | "
              f"{g('ratio_v1', '{:.3f}x')} | {g('v2_vs_one_cpu', '{:.1f}x')} | "
              f"{g('train_vs_one_cpu', '{:.1f}x')} | "
              f"{g('v2_over_train_cpu', '{:.3f}x')} |")  # fmt: skip
    if codecs:
        print_codecs(codecs)
    if procs:
        print("\n| whole process | runs | wall s | CPU s | runs/s | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for label, n, wall, cpu, rate, rss in procs:
            rs = "–" if rate is None else f"{rate:.1f}"
            print(f"| {label} | {n} | {wall:.2f} | {cpu:.2f} | {rs} | {rss:.0f} |")
    _ = np  # numpy is imported for torch's sake
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
