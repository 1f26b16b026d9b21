"""lohp generate: determinism, overwrite protection, task lists, mismatches, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import lohp_cli.stages.generate as generate_mod
import lohp_cli.timing
from lohp_cli.config import GenerateConfig, TrainConfig
from lohp_cli.errors import CompatibilityError, ConfigError
from lohp_cli.policy.context import resolve_tasks, task_context
from lohp_cli.policy.directory import load_policy
from lohp_cli.stages.collect import collect
from lohp_cli.stages.generate import LATENCY_REPEATS, generate
from lohp_cli.stages.train import train_policy
from lohp_cli.store.generated import GEN_SCHEMA
from lohp_cli.tasks.models import build_target
from lohp_cli.tasks.scoring import accuracy
from tests.conftest import tiny_config

POLICY = {"backbone": "mlp", "hidden": 16, "emb_dim": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("gen")
    store = str(d / "store.zarr")
    collect(tiny_config(store))
    out = {"store": store}
    for method in ("lo-hp", "hypernetwork"):
        pol = str(d / f"pol-{method}")
        train_policy(
            TrainConfig.model_validate(
                {"store": store, "out": pol, "method": method, "k": 2, "steps": 3, "policy": POLICY}
            )
        )
        out[method] = pol
    other = str(d / "other.zarr")
    collect(tiny_config(other, model={"name": "mlp", "hidden": 4}))
    out["other"] = other
    return out


def gen_cfg(policy: str, out: Path, **kw: object) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {"policy": policy, "out": str(out), "num_tasks": 2, "samples": 3, "device": "cpu", **kw}
    )


def read_weights(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {t: g[t]["weights"][:] for t in g.attrs["tasks"]}


@pytest.mark.parametrize("method", ["lo-hp", "hypernetwork"])
def test_same_arguments_same_bytes(trained: dict[str, str], tmp_path: Path, method: str) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    generate(gen_cfg(trained[method], a))
    generate(gen_cfg(trained[method], b))
    wa, wb = read_weights(a), read_weights(b)
    assert wa.keys() == wb.keys() and len(wa) == 2
    for t in wa:
        assert wa[t].shape == (3, zarr.open_group(trained["store"], mode="r").attrs["param_count"])
        assert wa[t].tobytes() == wb[t].tobytes()
    assert zarr.open_group(str(a), mode="r").attrs["schema"] == GEN_SCHEMA


def test_timing_attrs_name_what_they_measure(trained: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    res = generate(gen_cfg(trained["lo-hp"], out, batch_size=4))  # 2 tasks × 3 = 6 rows: 4 + 2
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert "latency_ms_per_sample" not in attrs  # the old, ambiguous key
    t = attrs["timing"]
    assert set(t) == {
        "batched_ms_per_sample",
        "batch_size",
        "batches_timed",
        "warmup_batches",
        "latency_ms_batch1",
        "latency_iqr_ms",
        "cpu_ms_batch1",
        "latency_repeats",
        "load_average",
        "threads",
        "device",
    }
    assert t["latency_iqr_ms"][0] <= t["latency_ms_batch1"] <= t["latency_iqr_ms"][1]
    assert t["device"] == "cpu" and t["batch_size"] == 4
    assert t["batches_timed"] == 2 and t["warmup_batches"] == 1
    assert t["latency_repeats"] == LATENCY_REPEATS
    for key in ("batched_ms_per_sample", "latency_ms_batch1"):
        assert 0 < t[key] < float("inf")
    assert res.to_json() == {
        "out": str(out),
        "tasks": 2,
        "samples": 3,
        "batched_ms_per_sample": t["batched_ms_per_sample"],
        "batch_size": 4,
        "latency_ms_batch1": t["latency_ms_batch1"],
        "device": "cpu",
        "wall_time_s": res.wall_time_s,
        "new_tasks": 2,
    }


def test_warm_up_is_not_timed(
    trained: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock: the first call (lazy initialisation) takes 1000 s, every later one 1 ms per
    row. Both timings must come out at 1 ms: neither counts the warm-up."""
    now = [0.0]
    rows: list[int] = []
    real = generate_mod.generate_states

    def batch(
        model: torch.nn.Module,
        cond: torch.Tensor,
        s0: torch.Tensor,
        *args: object,
        **kw: object,
    ) -> torch.Tensor:
        states = real(model, cond, s0, *args, **kw)
        now[0] += 1000.0 if not rows else 1e-3 * s0.shape[0]
        rows.append(s0.shape[0])
        return states

    monkeypatch.setattr(lohp_cli.timing, "now", lambda: now[0])
    monkeypatch.setattr(generate_mod, "generate_states", batch)
    res = generate(gen_cfg(trained["lo-hp"], tmp_path / "t.zarr", batch_size=4))
    # warm-up batch of the first batch's shape, 2 timed batches, then 1 + repeats at batch 1
    assert rows == [4, 4, 2, *[1] * (1 + LATENCY_REPEATS)]
    assert res.batched_ms_per_sample == pytest.approx(1.0)
    assert res.latency_ms_batch1 == pytest.approx(1.0)


def test_warm_up_does_not_change_the_weights(
    trained: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_warmup = tmp_path / "w.zarr"
    generate(gen_cfg(trained["lo-hp"], with_warmup, mode="sample", batch_size=4))
    monkeypatch.setattr(generate_mod, "WARMUP_BATCHES", 0)
    without = tmp_path / "n.zarr"
    generate(gen_cfg(trained["lo-hp"], without, mode="sample", batch_size=4))
    assert zarr.open_group(str(without), mode="r").attrs["timing"]["warmup_batches"] == 0
    wa, wb = read_weights(with_warmup), read_weights(without)
    assert all(wa[t].tobytes() == wb[t].tobytes() for t in wa)


def test_seed_and_samples_differ(trained: dict[str, str], tmp_path: Path) -> None:
    generate(gen_cfg(trained["lo-hp"], tmp_path / "a.zarr"))
    generate(gen_cfg(trained["lo-hp"], tmp_path / "b.zarr", seed=1))
    wa, wb = read_weights(tmp_path / "a.zarr"), read_weights(tmp_path / "b.zarr")
    t = next(iter(wa))
    assert not np.array_equal(wa[t], wb[t])
    assert not np.array_equal(wa[t][0], wa[t][1])  # each sample starts from its own s_0


def test_existing_output_kept_without_overwrite(trained: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    generate(gen_cfg(trained["lo-hp"], out))
    before = read_weights(out)
    with pytest.raises(ConfigError, match="--overwrite"):
        generate(gen_cfg(trained["lo-hp"], out, seed=5))
    assert all(np.array_equal(before[t], w) for t, w in read_weights(out).items())
    generate(gen_cfg(trained["lo-hp"], out, seed=5, overwrite=True))
    assert not all(np.array_equal(before[t], w) for t, w in read_weights(out).items())
    assert not list(tmp_path.glob(".g.zarr.tmp*"))


def test_paths_start_at_s0_and_end_at_weights(trained: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "p.zarr"
    generate(gen_cfg(trained["lo-hp"], out, save_paths=True))
    g = zarr.open_group(str(out), mode="r")
    _, meta, _ = load_policy(trained["lo-hp"])
    for t in g.attrs["tasks"]:
        path = g[t]["path"][:]
        assert path.shape[:2] == (3, meta.N + 1)
        np.testing.assert_array_equal(path[:, -1], g[t]["weights"][:])


def test_task_lists(trained: dict[str, str], tmp_path: Path) -> None:
    _, meta, _ = load_policy(trained["lo-hp"])
    fam = task_context(meta).family
    assert resolve_tasks("target", fam, 3) == fam.tasks("target", 3)
    f = tmp_path / "tasks.txt"
    f.write_text("# new tasks\nc0_1_2_3_4\n\nc9_8_7_6_5  # comment\n")
    assert [t.id for t in resolve_tasks(f"@{f}", fam, 0)] == ["c0_1_2_3_4", "c9_8_7_6_5"]
    assert [t.id for t in resolve_tasks("c1_2_3_4_5", fam, 0)] == ["c1_2_3_4_5"]
    with pytest.raises(ConfigError, match="c1_1_2_3_4"):
        resolve_tasks("c1_1_2_3_4", fam, 0)
    with pytest.raises(ConfigError, match="5-way"):
        resolve_tasks("c1_2", fam, 0)
    with pytest.raises(ConfigError, match="Cannot read"):
        resolve_tasks(f"@{tmp_path / 'missing.txt'}", fam, 0)


def test_policy_with_a_foreign_store_is_refused(trained: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="does not match"):
        generate(gen_cfg(trained["lo-hp"], tmp_path / "g.zarr", store=trained["other"]))
    assert not (tmp_path / "g.zarr").exists()


def test_missing_policy_is_a_compatibility_error(tmp_path: Path) -> None:
    with pytest.raises(CompatibilityError, match="No policy directory"):
        generate(gen_cfg(str(tmp_path / "nope"), tmp_path / "g.zarr"))


def test_output_that_is_a_file(trained: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "g.zarr"
    f.write_text("keep me")
    with pytest.raises(ConfigError, match="is a file"):
        generate(gen_cfg(trained["lo-hp"], f, overwrite=True))
    assert f.read_text() == "keep me"


def test_accuracy_matches_module_forward(trained: dict[str, str]) -> None:
    _, meta, _ = load_policy(trained["lo-hp"])
    ctx = task_context(meta)
    data = ctx.task_data(ctx.store.task_ids()[0])
    net = build_target(ctx.model_cfg, ctx.family.data.image_shape, 5)
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    acc, loss = accuracy(net, theta, data)
    with torch.no_grad():
        logits = net(data.x_test)
    assert acc == pytest.approx(float((logits.argmax(1) == data.y_test).float().mean()))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, data.y_test)))


def test_cli_generate_exit_codes(trained: dict[str, str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lohp_cli.cli import app

    runner = CliRunner()
    out = tmp_path / "g.zarr"
    ok = runner.invoke(
        app,
        [
            "generate",
            "--policy",
            trained["lo-hp"],
            "--out",
            str(out),
            "--num-tasks",
            "1",
            "--samples",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1] == str(out)
    said = " ".join(ok.output.split())
    assert "batched throughput" in said and "ms/sample on cpu (batch 1, warm-up excluded)" in said
    assert "ms per task (batch 1, median after warm-up;" in said
    assert "ms per sample (median)" not in said
    again = runner.invoke(app, ["generate", "--policy", trained["lo-hp"], "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = runner.invoke(
        app, ["generate", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path / "x.zarr")]
    )
    assert missing.exit_code == 4 and "Traceback" not in missing.output


# ---- optimizer styles ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_policy(trained: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    pol = str(tmp_path_factory.mktemp("tok") / "pol")
    train_policy(
        TrainConfig.model_validate(
            {
                "store": trained["store"],
                "out": pol,
                "k": 2,
                "steps": 20,
                "optimizers": ["sgd", "adam"],
                "policy": {**POLICY, "optimizer_token": True},
            }
        )
    )
    return pol


def test_style_picks_the_optimizer_token(token_policy: str, tmp_path: Path) -> None:
    generate(gen_cfg(token_policy, tmp_path / "default.zarr"))
    generate(gen_cfg(token_policy, tmp_path / "adam.zarr", style="adam"))
    generate(gen_cfg(token_policy, tmp_path / "sgd.zarr", style="sgd"))
    default, adam, sgd = (read_weights(tmp_path / f"{n}.zarr") for n in ("default", "adam", "sgd"))
    t = next(iter(adam))
    assert np.array_equal(default[t], adam[t])  # adam is the default style
    assert not np.array_equal(adam[t], sgd[t])
    attrs = zarr.open_group(str(tmp_path / "sgd.zarr"), mode="r").attrs
    assert attrs["policy"]["style"] == "sgd"


def test_style_errors(trained: dict[str, str], token_policy: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="learned from sgd, adam runs only"):
        generate(gen_cfg(token_policy, tmp_path / "a.zarr", style="sam"))
    with pytest.raises(ConfigError, match="without policy.optimizer_token"):
        generate(gen_cfg(trained["lo-hp"], tmp_path / "b.zarr", style="adam"))
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_update_generates_only_the_new_tasks(
    trained: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, full = tmp_path / "u.zarr", tmp_path / "full.zarr"
    ctx = task_context(load_policy(trained["lo-hp"])[1])
    ids = [t.id for t in resolve_tasks("target", ctx.family, 3)]
    generate(gen_cfg(trained["lo-hp"], full, tasks=",".join(ids)))
    rows: list[int] = []
    real = generate_mod.generate_states

    def counting(model, cond, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        rows.append(cond.shape[0])
        return real(model, cond, *a, **kw)

    monkeypatch.setattr(generate_mod, "generate_states", counting)
    first = generate(gen_cfg(trained["lo-hp"], out, tasks=",".join(ids[:2]), update=True))
    assert first.new_tasks == 2 and first.tasks == 2
    kept = {t: w.tobytes() for t, w in read_weights(out).items()}
    rows.clear()
    res = generate(gen_cfg(trained["lo-hp"], out, tasks=",".join(ids), update=True))
    assert (res.tasks, res.new_tasks) == (3, 1)
    # the new task's 3 samples: a warm-up batch and the batch, then 1 + LATENCY_REPEATS latency runs
    assert sum(rows) == 3 + 3 + 1 + LATENCY_REPEATS
    now, whole = read_weights(out), read_weights(full)
    assert list(now) == ids and all(now[t].tobytes() == w for t, w in kept.items())
    for t in ids:  # what one run makes, up to the last bits a batch's size can change
        np.testing.assert_allclose(now[t], whole[t], rtol=1e-5, atol=1e-6)
    rows.clear()
    again = generate(gen_cfg(trained["lo-hp"], out, tasks=",".join(ids), update=True))
    assert again.new_tasks == 0 and rows == []  # up to date: nothing generated, nothing written
    other = generate(gen_cfg(trained["lo-hp"], out, tasks=",".join(ids), update=True, seed=5))
    assert other.new_tasks == 3  # another seed: every task made again
    assert not list(tmp_path.glob(".*.lock"))  # generate's lock file is removed when it is done
