"""Typed artifacts (lohp_cli/artifacts): the store's root attributes, a policy's config.json and
the generated store's attributes are validated once, when opened; what today's (and lohp 0.1's)
writers wrote still opens, and a newer version, a missing field or a field of the wrong type is
refused naming it (exit 3 for stores, 4 for policies)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import zarr

from lohp_cli.artifacts.generated import GeneratedMeta, read_generated_meta
from lohp_cli.artifacts.policy import (
    L2OPolicyMeta,
    PolicyMeta,
    read_l2o_meta,
    read_policy_header,
    read_policy_meta,
)
from lohp_cli.artifacts.store import StoreMeta, read_store_meta
from lohp_cli.errors import EXIT_COMPAT, EXIT_DATA, CompatibilityError, StoreError
from lohp_cli.policy.directory import load_policy
from lohp_cli.store import TrajectoryStore
from lohp_cli.store.generated import open_generated
from tests.cli.runner import invoke, plain
from tests.conftest import make_linear_store
from tests.unit.test_trainers import old_shape

FAMILY = {
    "name": "fmnist", "ways": 5, "train_per_class": 60, "test_per_class": 60,
    "support_per_class": 8, "holdout_classes": [8, 9], "split_seed": 0,
    "data_fingerprint": "ab12", "image_shape": [1, 28, 28],
}  # fmt: skip
COMPAT = {
    "family": FAMILY,
    "model": {"name": "head", "hidden": 0, "feature_dim": 64, "extractor_steps": 300},
    "steps": 100, "record_every": 10, "batch_size": 32, "seed": 0,
}  # fmt: skip
LAYOUT = [{"name": "0.weight", "shape": [5, 64], "offset": 0},
          {"name": "0.bias", "shape": [5], "offset": 320}]  # fmt: skip
PROVENANCE = {"lohp_version": "0.2.0", "created_at": "2026-12-01T00:00:00Z", "device": "cpu"}
# as collect writes the root attributes today
STORE = {
    "schema": "lohp.trajectories", "schema_version": 1, "init_complete": True,
    "compat": COMPAT, "layout": LAYOUT, "param_count": 325, "condition_dim": 320,
    "config": {"steps": 100, "optimizers": ["sgd", "adam"], "task": {"data_root": None}},
    "provenance": PROVENANCE,
}  # fmt: skip
FINGERPRINT = {"schema": "lohp.trajectories", "schema_version": 1, "compat_sha": "0123456789abcdef",
               "created_at": PROVENANCE["created_at"]}  # fmt: skip
# as policy_config_json writes config.json today
POLICY = {
    "kind": "lohp.policy", "format": 1, "method": "lo-hp", "k": 2, "N": 5, "T": 10,
    "param_count": 325, "condition_dim": 320, "layout": LAYOUT, "store_compat": COMPAT,
    "store_fingerprint": FINGERPRINT, "store_location": "/runs/fmnist.zarr",
    "store_optimizers": ["sgd", "adam"], "runs_used": 12,
    "normalization": "normalization.safetensors",
    "train_config": {"method": "lo-hp", "k": 2, "optimizers": ["adam"],
                     "policy": {"optimizer_token": True, "state_input": "support"}},
    "trained_steps": 300, "complete": True, "provenance": PROVENANCE,
}  # fmt: skip
# as l2o.fit writes a learned optimizer's config.json today (a synthetic family)
L2O = {
    "kind": "lohp.policy", "format": 1, "method": "l2o", "family": {"name": "quadratic", "dim": 3},
    "store_fingerprint": {"family": {"name": "quadratic"}}, "teacher": None,
    "train_config": {"method": "l2o"}, "trained_steps": 4, "complete": True,
    "provenance": PROVENANCE,
}  # fmt: skip
# as generate writes the generated store's attributes today
GENERATED = {
    "schema": "lohp.generated", "schema_version": 1,
    "policy": {"path": "policies/p", "method": "lo-hp", "k": 2, "N": 5,
               "store_fingerprint": FINGERPRINT, "trained_steps": 300, "style": "adam"},
    "layout": LAYOUT, "param_count": 325, "store_location": "/runs/fmnist.zarr",
    "tasks": ["c8_9_0_1_2"], "config": {"policy": "policies/p", "samples": 2},
    "timing": {"batched_ms_per_sample": 0.5, "latency_ms_batch1": 1.0, "device": "cpu"},
    "provenance": PROVENANCE,
}  # fmt: skip
P = Path("p")


def damaged(data: dict[str, Any], path: str, value: Any = ...) -> dict[str, Any]:
    """``data`` with the field at dotted ``path`` deleted (no value) or replaced."""
    out = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


# ---- round trips: what today's writers write reads back, and dumps as it was -------------------
def test_store_meta_round_trip() -> None:
    meta = read_store_meta(STORE, "s.zarr")
    assert meta.to_json() == STORE
    assert (
        meta.compat.states == 11 and meta.compat.classes == 5 and meta.compat.model.name == "head"
    )
    assert meta.created_at == PROVENANCE["created_at"] and meta.init_complete
    assert StoreMeta.model_validate(meta.to_json()) == meta


def test_policy_meta_round_trip() -> None:
    meta = read_policy_meta(POLICY, P)
    assert meta.to_json() == POLICY and isinstance(meta, PolicyMeta)
    assert meta.has_tokens and meta.state_input == "support" and not meta.hypernetwork
    assert meta.learned_optimizers == ["adam"] and meta.store_compat.record_every == 10
    assert read_policy_header(POLICY, P).method == "lo-hp"


def test_l2o_meta_round_trip() -> None:
    meta = read_l2o_meta(L2O, P)
    assert isinstance(meta, L2OPolicyMeta) and meta.to_json() == L2O
    assert meta.family_name == "quadratic" and meta.store_compat is None


def test_generated_meta_round_trip() -> None:
    meta = read_generated_meta(GENERATED, "g.zarr")
    assert isinstance(meta, GeneratedMeta) and meta.to_json() == GENERATED
    assert meta.policy.path == "policies/p" and meta.policy.style == "adam"


def test_unknown_keys_are_kept() -> None:
    meta = read_policy_meta({**POLICY, "added_later": {"x": 1}}, P)
    assert meta.to_json()["added_later"] == {"x": 1}


def test_a_lohp_0_1_policy_config_reads() -> None:
    """lohp 0.1.0 stored every method's fields in train_config, and no store_optimizers."""
    old = {k: v for k, v in POLICY.items() if k != "store_optimizers"}
    old["train_config"] = old_shape({"method": "lo-hp", "k": 2})
    meta = read_policy_meta(old, P)
    assert meta.to_json() == old and meta.store_optimizers is None
    assert meta.learned_optimizers is None and not meta.has_tokens
    assert meta.train_config["l2o"]["hidden"] == 20


def test_a_store_written_today_opens_typed(tmp_path: Path) -> None:
    make_linear_store(tmp_path / "s.zarr", n_tasks=2, size=4, cond_dim=2, steps=2)
    store = TrajectoryStore.open(str(tmp_path / "s.zarr"))
    assert store.meta.param_count == 4 and store.meta.condition_dim == 2
    assert store.meta.compat.family.name == "synthetic-linear" and store.meta.init_complete
    assert store.meta.to_json() == store.attrs  # the typed view holds every stored key


def test_a_generated_store_written_as_today_opens(tmp_path: Path) -> None:
    write_generated(tmp_path / "g.zarr", GENERATED)
    group, meta = open_generated(str(tmp_path / "g.zarr"))
    assert meta.tasks == GENERATED["tasks"] and dict(group.attrs) == GENERATED


# ---- refused, naming the version or the field --------------------------------------------------
def test_newer_versions_are_refused_naming_them() -> None:
    with pytest.raises(StoreError, match="schema_version 3; this lohp reads up to 2") as info:
        read_store_meta({**STORE, "schema_version": 3}, "s.zarr")
    assert info.value.exit_code == EXIT_DATA
    with pytest.raises(StoreError, match="schema_version 3; this lohp reads up to 1"):
        read_generated_meta({**GENERATED, "schema_version": 3}, "g.zarr")
    with pytest.raises(CompatibilityError, match="has format 2; this lohp reads up to 1") as info:
        read_policy_header({**POLICY, "format": 2}, P)
    assert info.value.exit_code == EXIT_COMPAT


WHERE = {
    read_store_meta: ("s", "Store 's' root attributes", StoreError),
    read_policy_meta: (Path("s"), "Policy 's' config.json", CompatibilityError),
    read_generated_meta: ("s", "Generated store 's'", StoreError),
}


@pytest.mark.parametrize(
    ("read", "data", "path", "value"),
    [
        (read_store_meta, STORE, "condition_dim", ...),
        (read_store_meta, STORE, "compat.record_every", ...),
        (read_store_meta, STORE, "compat.family.name", ...),
        (read_store_meta, STORE, "param_count", "many"),
        (read_store_meta, STORE, "compat.steps", [100]),
        (read_store_meta, STORE, "layout", {"a": 1}),
        (read_policy_meta, POLICY, "N", ...),
        (read_policy_meta, POLICY, "store_compat.steps", ...),
        (read_policy_meta, POLICY, "k", "two"),
        (read_policy_meta, POLICY, "train_config", [1]),
        (read_generated_meta, GENERATED, "tasks", ...),
        (read_generated_meta, GENERATED, "policy.path", ...),
        (read_generated_meta, GENERATED, "tasks", "c0_1"),
        (read_generated_meta, GENERATED, "policy.N", None),
    ],
)
def test_a_missing_or_mistyped_field_is_named(read, data, path, value) -> None:  # noqa: ANN001
    """``Store 's' root attributes: field 'compat.steps': Input should be a valid integer``."""
    where, prefix, error = WHERE[read]
    with pytest.raises(error) as info:
        read(damaged(data, path, value), where)
    said = "Field required" if value is ... else ""
    assert str(info.value).startswith(f"{prefix}: field '{path}': {said}"), str(info.value)


def test_not_an_object_or_a_foreign_schema() -> None:
    with pytest.raises(StoreError, match="is not a lohp trajectory store"):
        read_store_meta({**STORE, "schema": "other"}, "s")
    with pytest.raises(StoreError, match="is not a lohp generated store"):
        read_generated_meta([1, 2], "g")
    with pytest.raises(CompatibilityError, match="is not a lohp policy"):
        read_policy_header("text", P)
    with pytest.raises(CompatibilityError, match="field 'method'"):
        read_policy_header({"kind": "lohp.policy", "format": 1}, P)


def test_writers_validate_what_they_write(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="field 'condition_dim': Field required"):
        TrajectoryStore.create_or_open(str(tmp_path / "s.zarr"), damaged(STORE, "condition_dim"))
    assert not (tmp_path / "s.zarr").exists()


# ---- opened once, by the loaders; the CLI says one error line -----------------------------------
def write_generated(path: Path, attrs: dict[str, Any]) -> None:
    g = zarr.open_group(zarr.storage.LocalStore(path), mode="w")
    g.attrs.update(attrs)


def error_lines(output: str) -> list[str]:
    return [ln for ln in plain(output).splitlines() if ln.startswith("error:")]


@pytest.fixture
def linear_store(tmp_path: Path) -> Path:
    make_linear_store(tmp_path / "s.zarr", n_tasks=2, size=4, cond_dim=2, steps=2)
    return tmp_path / "s.zarr"


def test_inspect_names_a_damaged_store_field(linear_store: Path) -> None:
    store = TrajectoryStore.open(str(linear_store), mode="r+")
    store.update_attrs(compat={**store.attrs["compat"], "steps": "two"})
    result = invoke("inspect", linear_store)
    assert result.exit_code == 3, result.output
    (line,) = error_lines(result.output)
    assert "field 'compat.steps'" in line and str(linear_store) in line


def test_inspect_names_a_newer_store_version(linear_store: Path) -> None:
    TrajectoryStore.open(str(linear_store), mode="r+").update_attrs(schema_version=9)
    result = invoke("inspect", linear_store)
    assert result.exit_code == 3
    (line,) = error_lines(result.output)
    assert "schema_version 9" in line


def test_load_policy_names_a_missing_field(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps(damaged(POLICY, "N")))
    with pytest.raises(CompatibilityError, match=r"config.json: field 'N': Field required"):
        load_policy(tmp_path / "p")


@pytest.mark.parametrize(("path", "value"), [("N", ...), ("k", "two"), ("format", 2)])
def test_generate_names_a_damaged_policy_field(tmp_path: Path, path: str, value: Any) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps(damaged(POLICY, path, value)))
    result = invoke("generate", "--policy", tmp_path / "p", "--out", tmp_path / "g.zarr")
    assert result.exit_code == 4, result.output
    (line,) = error_lines(result.output)
    assert (f"field '{path}'" if path != "format" else "has format 2") in line


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [("tasks", ..., "field 'tasks'"), ("policy.k", "two", "field 'policy.k'"),
     ("schema_version", 2, "schema_version 2")],
)  # fmt: skip
def test_evaluate_names_a_damaged_generated_field(
    tmp_path: Path, path: str, value: Any, says: str
) -> None:
    write_generated(tmp_path / "g.zarr", damaged(GENERATED, path, value))
    result = invoke("evaluate", "--generated", tmp_path / "g.zarr", "--out", tmp_path / "r")
    assert result.exit_code == 3, result.output
    (line,) = error_lines(result.output)
    assert says in line
