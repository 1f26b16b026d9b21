"""Shared fixtures: tiny configs on scikit-learn's digits (always available) and GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread in every test process and the stages it runs in-process (a stage's
# automatic threads would read the machine's load first), and in the subprocesses it starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lohp_cli.config import CollectConfig
from lohp_cli.tasks.datasets import FMNIST_SYSTEM_DIRS

# One intra-op thread: tiny models run faster without OpenMP hand-offs, and tests that run
# subprocesses beside the pytest process do not oversubscribe a 2-core CI machine.
torch.set_num_threads(1)

FMNIST_AVAILABLE = any(Path(d, "train-images-idx3-ubyte.gz").exists() for d in FMNIST_SYSTEM_DIRS)
needs_fmnist = pytest.mark.skipif(
    not FMNIST_AVAILABLE,
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)

# Settings small enough that a whole collect takes about a second on CPU.
TINY = {
    "task": {
        "family": "digits",
        "train_per_class": 30,
        "test_per_class": 10,
        "support_per_class": 5,
    },
    "model": {"name": "mlp", "hidden": 8, "extractor_steps": 20, "feature_dim": 16},
    "tasks": 2,
    "seeds": 1,
    "steps": 20,
    "record_every": 5,
    "batch_size": 16,
}


def tiny_config(out: str | Path, **overrides: object) -> CollectConfig:
    """A validated tiny collect config writing to ``out``; ``overrides`` replace top-level keys."""
    data = {**TINY, "out": str(out), **overrides}
    return CollectConfig.model_validate(data)


def evaluate_context(generated: str | Path, out: str | Path, **over: object) -> tuple:
    """``(cfg, (EvalContext, (model, meta, stats)))``: a quiet CPU evaluate config for a generated
    store (no baselines unless ``over`` names some), and the stage's context built from it."""
    from lohp_cli.config import EvaluateConfig, GenerateConfig
    from lohp_cli.stages.evaluate import context
    from lohp_cli.store.generated import open_generated

    data = {"generated": str(generated), "out": str(out), "baselines": [], "latency_repeats": 1,
            "cosine_runs": 0, "plots": False, "device": "cpu", **over}  # fmt: skip
    cfg = EvaluateConfig.model_validate(data)
    _, gmeta = open_generated(cfg.generated)
    gcfg = GenerateConfig.model_validate(gmeta.config)
    return cfg, context(cfg, gcfg, gmeta, lambda _e: None)


def ident(rid: str, **extra: object) -> dict:
    """Valid attributes to begin run ``rid`` with: the task, optimizer and replicate its id says
    (``t``, sgd, 0 for an id of another form), then ``extra``."""
    from lohp_cli.store.schema import split_run_id

    parts = split_run_id(rid)
    task, opt, rep = parts if parts else ("t", extra.get("optimizer", "sgd"), 0)
    return {"task_id": task, "optimizer": opt, "replicate": rep, **extra}


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> CollectConfig:
    return tiny_config(tmp_path / "store.zarr")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_linear_store(
    out: str | Path,
    n_tasks: int = 8,
    size: int = 12,
    cond_dim: int = 4,
    steps: int = 8,
    alpha: float = 0.3,
    optimizers: tuple[str, ...] = ("sgd",),
    seed: int = 0,
    schema_version: int | None = None,
) -> dict:
    """A schema-valid store whose runs follow θ_{t+1} = θ_t + α (θ*(c) − θ_t) exactly (each run
    in a block of its own; ``schema_version=1``: a group per run, the layout lohp still reads).

    θ*(c) = A c is linear in the task condition c ~ N(0, I); θ_0 ~ N(0, I). Returns the
    ground truth: ``{"A": [P, D], "targets": {task_id: θ* [P]}, "conditions": {task_id: c}}``.
    """
    import numpy as np

    from lohp_cli.config import StoreCodecConfig
    from lohp_cli.store import TrajectoryStore, run_id

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(size, cond_dim)).astype(np.float32) * 2.0
    attrs = {
        "compat": {
            "family": {"name": "synthetic-linear"},
            "model": {"name": "vector"},
            "steps": steps,
            "record_every": 1,
            "batch_size": 1,
            "seed": seed,
        },
        "layout": [{"name": "theta", "shape": [size], "offset": 0}],
        "param_count": size,
        "condition_dim": cond_dim,
        "config": {},
        "provenance": {"created_at": "synthetic"},
    }
    if schema_version is not None:
        attrs["schema_version"] = schema_version
    store, _ = TrajectoryStore.create_or_open(str(out), attrs)
    store.update_attrs(init_complete=True)
    truth: dict = {"A": a, "targets": {}, "conditions": {}}
    for t in range(n_tasks):
        tid = f"c{t}_{t + 1}"
        c = rng.normal(size=cond_dim).astype(np.float32)
        target = a @ c
        store.write_task(tid, c, {"split": "source"})
        truth["targets"][tid], truth["conditions"][tid] = target, c
        for opt in optimizers:
            theta = rng.normal(size=size).astype(np.float32)
            w = store.begin_run(
                run_id(tid, opt, 0),
                steps + 1,
                size,
                StoreCodecConfig(),
                {"task_id": tid, "optimizer": opt, "replicate": 0},
            )
            for _ in range(steps + 1):
                w.append(theta, 0.0, 0.0)
                theta = theta + alpha * (target - theta)
            w.finish()
    return truth


def make_class_store(
    out: str | Path,
    n_tasks: int = 3,
    classes: int = 3,
    block: int = 2,
    hidden: int = 2,
    steps: int = 4,
    alpha: float = 0.5,
    seed: int = 0,
) -> dict:
    """A store of class-subset tasks with a head-like layout (weight ``[C, H]``, bias ``[C]``).

    Condition = C class blocks c_j ``[block]``; output row j of θ* is ``B c_j``, ``B [H+1, block]``,
    so reordering the classes of a task reorders the rows of its θ*. Runs approach θ* by
    θ_{t+1} = θ_t + α (θ* − θ_t) from θ_0 ~ N(0, I). Returns ``{"B": ..., "target": fn}`` with
    ``target(c [C*block]) -> θ* [P]``.
    """
    import numpy as np

    from lohp_cli.config import StoreCodecConfig
    from lohp_cli.store import TrajectoryStore, run_id

    rng = np.random.default_rng(seed)
    b = rng.normal(size=(hidden + 1, block)).astype(np.float32)
    size = classes * (hidden + 1)

    def target(c: np.ndarray) -> np.ndarray:
        rows = c.reshape(classes, block) @ b.T  # [C, H+1]
        return np.concatenate([rows[:, :hidden].reshape(-1), rows[:, hidden]]).astype(np.float32)

    attrs = {
        "compat": {
            "family": {"name": "synthetic-classes", "ways": classes},
            "model": {"name": "head"},
            "steps": steps,
            "record_every": 1,
            "batch_size": 1,
            "seed": seed,
        },
        "layout": [
            {"name": "weight", "shape": [classes, hidden], "offset": 0},
            {"name": "bias", "shape": [classes], "offset": classes * hidden},
        ],
        "param_count": size,
        "condition_dim": classes * block,
        "config": {},
        "provenance": {"created_at": "synthetic"},
    }
    store, _ = TrajectoryStore.create_or_open(str(out), attrs)
    store.update_attrs(init_complete=True)
    for t in range(n_tasks):
        tid = "c" + "_".join(str(t * classes + j) for j in range(classes))
        c = rng.normal(size=classes * block).astype(np.float32)
        store.write_task(tid, c, {"split": "source"})
        theta = rng.normal(size=size).astype(np.float32)
        w = store.begin_run(
            run_id(tid, "sgd", 0),
            steps + 1,
            size,
            StoreCodecConfig(),
            {"task_id": tid, "optimizer": "sgd", "replicate": 0},
        )
        for _ in range(steps + 1):
            w.append(theta, 0.0, 0.0)
            theta = theta + alpha * (target(c) - theta)
        w.finish()
    return {"B": b, "target": target}


def train_and_generate(
    store: Path,
    tmp: Path,
    samples: int = 2,
    gen_tasks: str = "target",
    optimizers: list[str] | None = None,
) -> dict[str, Path]:
    """A Lo-Hp policy trained 3 steps on ``store`` (on its ``optimizers`` runs; None: all) into
    ``tmp/pol`` and ``samples`` weights generated for 2 tasks of ``gen_tasks`` (a GenerateConfig
    task spec) into ``tmp/g.zarr``: ``{"store", "policy", "generated"}`` paths."""
    from lohp_cli.config import GenerateConfig, TrainConfig
    from lohp_cli.stages.generate import generate
    from lohp_cli.stages.train import train_policy

    pol, gen = tmp / "pol", tmp / "g.zarr"
    train = {"store": str(store), "out": str(pol), "k": 2, "steps": 3,
             "policy": {"backbone": "mlp", "hidden": 16, "emb_dim": 8}}  # fmt: skip
    if optimizers is not None:
        train["optimizers"] = optimizers
    train_policy(TrainConfig.model_validate(train))
    gen_cfg = {"policy": str(pol), "out": str(gen), "tasks": gen_tasks, "num_tasks": 2,
               "samples": samples, "device": "cpu"}  # fmt: skip
    generate(GenerateConfig.model_validate(gen_cfg))
    return {"store": store, "policy": pol, "generated": gen}


def tiny_policy_run(
    tmp: Path, gen_tasks: str = "target", samples: int = 2, **collect: object
) -> dict[str, Path]:
    """A tiny digits store (``collect`` overrides its config), a Lo-Hp policy trained 3 steps on
    it (on its Adam runs when it has them) and ``samples`` weights generated for ``gen_tasks`` (a
    GenerateConfig task spec; 2 tasks of a split): ``{"store", "policy", "generated"}`` paths."""
    from lohp_cli.stages.collect import collect as run_collect

    store = tmp / "s.zarr"
    cfg = tiny_config(store, **collect)
    run_collect(cfg)
    adam = ["adam"] if "adam" in cfg.optimizers else None
    return train_and_generate(store, tmp, samples, gen_tasks, adam)


# ---- a run's place in a store of schema version 2 (rows of blocks) ------------------------------
def block_of(store: str | Path, rid: str) -> tuple[Path, int]:
    """``(block directory, row)`` of run ``rid`` in a local store."""
    from lohp_cli.store import TrajectoryStore

    slot = TrajectoryStore.open(str(store)).slot(rid)
    assert slot is not None, f"run {rid} is in no block"
    return Path(store) / "blocks" / slot[0], slot[1]


def edit_run_attrs(store: str | Path, rid: str, edit) -> None:
    """Rewrite run ``rid``'s attributes in its block's document: ``edit(attrs) -> attrs``."""
    import json

    block, row = block_of(store, rid)
    meta = json.loads((block / "zarr.json").read_text())
    doc = meta["attributes"]["block"]
    doc["attrs"][row] = edit(dict(doc["attrs"][row]))
    (block / "zarr.json").write_text(json.dumps(meta))


def run_array(store: str | Path, rid: str, name: str = "weights", mode: str = "r"):
    """``(zarr array holding run rid's <name>, its row)`` of a local store (plain zarr)."""
    import zarr

    block, row = block_of(store, rid)
    return zarr.open_array(str(block / name), mode=mode), row


def plain_runs(store: str | Path) -> dict[str, dict]:
    """Every run a store lists, read with plain zarr as docs/store.md shows (blocks of schema
    version 2): ``{run id: {"attrs", "block", "row", "weights", "loss", "train_acc"}}``; the runs
    of a block a kill left without its arrays are left out."""
    import zarr

    g = zarr.open_group(str(store), mode="r")
    out: dict[str, dict] = {}
    for bid, block in g["blocks"].groups():
        doc = block.attrs["block"]
        if not {"weights", "loss", "train_acc"} <= set(block.array_keys()):
            continue  # a torn block (killed between its group and its arrays): no complete run
        for row, (rid, attrs) in enumerate(zip(doc["runs"], doc["attrs"], strict=True)):
            arrays = {n: block[n][row] for n in ("weights", "loss", "train_acc")}
            out[rid] = {"attrs": attrs, "block": bid, "row": row, **arrays}
    return out
