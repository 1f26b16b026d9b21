"""Config resolution: precedence, ``--set`` parsing, validation messages (lohp_cli/config/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lohp_cli.config import (
    AdamConfig,
    CollectConfig,
    SGDConfig,
    apply_sets,
    deep_merge,
    load_toml,
    parse_value,
    resolve,
    shadowed_paths,
)
from lohp_cli.errors import ConfigError
from lohp_cli.stages import name_problems

KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
JSON_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY, inner, max_size=3),
    max_leaves=6,
)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- parse_value / apply_sets / deep_merge --------------------------------------------------
@given(JSON_VALUE)
def test_parse_value_inverts_json_dumps(value: object) -> None:
    assert parse_value(json.dumps(value)) == value


@given(st.from_regex(r"[a-eg-mo-su-z/][a-z0-9/._-]{0,10}", fullmatch=True))
def test_parse_value_keeps_non_json_text(text: str) -> None:
    # Starts with none of t/f/n (true, false, null): never JSON, so it stays a string.
    assert parse_value(text) == text


def test_parse_value_examples() -> None:
    assert parse_value("0.05") == 0.05
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("fmnist") == "fmnist"
    assert parse_value("runs/x.zarr") == "runs/x.zarr"


@given(
    st.lists(st.tuples(st.lists(KEY, min_size=1, max_size=3), JSON_SCALAR), min_size=1, max_size=5)
)
def test_apply_sets_puts_each_value_at_its_path(items: list[tuple[list[str], object]]) -> None:
    # Keep only paths where no path is a strict prefix of another (a value vs a section clash).
    paths: list[tuple[str, ...]] = []
    chosen = []
    for parts, value in items:
        p = tuple(parts)
        if any(q[: len(p)] == p and q != p or p[: len(q)] == q and q != p for q in paths):
            continue
        paths.append(p)
        chosen.append((p, value))
    original = {"keep": {"me": 1}}
    sets = [".".join(p) + "=" + json.dumps(v) for p, v in chosen]
    out = apply_sets(original, sets)
    assert original == {"keep": {"me": 1}}  # the input is not modified
    last: dict[tuple[str, ...], object] = {}
    for p, v in chosen:
        last[p] = v
    for p, v in last.items():
        node = out
        for part in p:
            node = node[part]
        assert node == v
    if ("keep",) not in last and ("keep", "me") not in last:
        assert out["keep"]["me"] == 1


def test_apply_sets_later_overrides_earlier_and_nests() -> None:
    out = apply_sets(
        {"optim": {"sgd": {"lr": 1.0, "momentum": 0.5}}}, ["optim.sgd.lr=0.2", "optim.sgd.lr=0.3"]
    )
    assert out == {"optim": {"sgd": {"lr": 0.3, "momentum": 0.5}}}
    assert apply_sets({}, ["a.b.c=x"]) == {"a": {"b": {"c": "x"}}}
    assert apply_sets({}, ["out=a=b"]) == {"out": "a=b"}  # only the first '=' separates


@pytest.mark.parametrize("bad", ["novalue", "=3", " =3"])
def test_apply_sets_rejects_malformed_items(bad: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_sets({}, [bad])


def test_apply_sets_value_is_not_a_section() -> None:
    with pytest.raises(ConfigError, match="'steps' is a value, not a section"):
        apply_sets({"steps": 3}, ["steps.x=1"])


def test_deep_merge_merges_nested_and_copies() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    out = deep_merge(base, {"a": {"c": 20, "e": 5}, "d": {"x": 1}})
    assert out == {"a": {"b": 1, "c": 20, "e": 5}, "d": {"x": 1}}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


def test_shadowed_paths_are_the_values_deep_merge_drops() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": 3, "e": {"f": 1}, "g": 4}
    extra = {"a": {"c": 20, "x": 1}, "d": {"y": 1}, "e": 5, "h": 6}
    assert sorted(shadowed_paths(base, extra)) == [("a", "c"), ("d",), ("e",)]
    assert shadowed_paths(base, {}) == [] and shadowed_paths({}, extra) == []


# ---- resolve: precedence ----------------------------------------------------------------------
def test_precedence_defaults_file_set_flags(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path / "c.toml",
        """
steps = 40
seeds = 3
tasks = 7
[optim.sgd]
lr = 0.5
momentum = 0.5
[task]
family = "digits"
ways = 3
""",
    )
    cfg = resolve(
        CollectConfig,
        config_file=toml,
        sets=["steps=60", "optim.sgd.lr=0.25", "task.ways=4"],
        flags={"steps": 80, "seeds": None, "task.ways": None, "optim.sgd.momentum": 0.1},
    )
    assert cfg.steps == 80  # flag beats --set beats file
    assert cfg.optim.sgd.lr == 0.25  # --set beats file
    assert cfg.task.ways == 4  # --set beats file; a None flag is unset
    assert cfg.seeds == 3  # file beats default; None flag ignored
    assert cfg.tasks == 7  # file
    assert cfg.optim.sgd.momentum == 0.1  # dotted flag
    assert cfg.task.family == "digits"
    # Untouched keys keep their defaults.
    assert cfg.record_every == CollectConfig().record_every
    assert cfg.optim.adam == AdamConfig()
    assert cfg.optim.sgd.nesterov is SGDConfig().nesterov


def test_resolve_without_anything_gives_defaults() -> None:
    assert resolve(CollectConfig) == CollectConfig()


def test_resolved_config_is_frozen() -> None:
    cfg = resolve(CollectConfig)
    with pytest.raises(Exception, match="frozen"):
        cfg.steps = 3  # type: ignore[misc]


def test_json_dump_round_trips() -> None:
    cfg = resolve(CollectConfig, sets=["shard=[1,3]", "task.holdout_classes=[8,9]"])
    assert cfg.shard == (1, 3) and cfg.task.holdout_classes == (8, 9)
    again = CollectConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg


def test_recorded_states() -> None:
    assert resolve(CollectConfig, flags={"steps": 20, "record_every": 5}).recorded_states == 5
    assert resolve(CollectConfig, flags={"steps": 7, "record_every": 1}).recorded_states == 8


# ---- resolve: errors ---------------------------------------------------------------------------
def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.sgd\.lrr: unknown config key"):
        resolve(CollectConfig, sets=["optim.sgd.lrr=0.1"])
    toml = write_toml(tmp_path / "c.toml", "[task]\nfamliy = 'digits'\n")
    with pytest.raises(ConfigError, match=r"task\.famliy: unknown config key"):
        resolve(CollectConfig, config_file=toml)


def test_record_every_must_divide_steps() -> None:
    with pytest.raises(ConfigError, match=r"record_every=3 does not divide steps=20"):
        resolve(CollectConfig, flags={"steps": 20, "record_every": 3})


@pytest.mark.parametrize("shard", [[3, 2], [2, 2], [-1, 2], [0, 0]])
def test_shard_out_of_range(shard: list[int]) -> None:
    with pytest.raises(ConfigError, match=f"shard {shard[0]}/{shard[1]} is out of range"):
        resolve(CollectConfig, sets=[f"shard={json.dumps(shard)}"])


def test_shard_in_range_accepted() -> None:
    assert resolve(CollectConfig, sets=["shard=[1,2]"]).shard == (1, 2)


def test_shared_init_and_its_seed() -> None:
    from lohp_cli.runtime import derive_seed

    assert resolve(CollectConfig).init == "per_run"
    assert resolve(CollectConfig).shared_init_seed is None
    cfg = resolve(CollectConfig, flags={"init": "shared", "seed": 4})
    assert cfg.shared_init_seed == derive_seed(4, "shared-init")  # drawn from the base seed
    assert resolve(CollectConfig, sets=["init=shared", "init_seed=3"]).shared_init_seed == 3
    with pytest.raises(ConfigError, match=r"init_seed=3 is the seed of a shared θ₀; set init = "):
        resolve(CollectConfig, flags={"init_seed": 3})
    with pytest.raises(ConfigError, match=r"init: Input should be 'per_run' or 'shared'"):
        resolve(CollectConfig, flags={"init": "same"})


def test_unknown_optimizer() -> None:
    with pytest.raises(
        ConfigError, match="unknown optimizer 'rmsprop'; choose from sgd, adam, sam"
    ):
        resolve(CollectConfig, flags={"optimizers": ["sgd", "rmsprop"]})


def test_duplicate_optimizer() -> None:
    with pytest.raises(ConfigError, match=r"optimizer listed twice in \['adam', 'sgd', 'adam'\]"):
        resolve(CollectConfig, sets=['optimizers=["adam","sgd","adam"]'])


def test_empty_optimizer_list() -> None:
    with pytest.raises(ConfigError, match="needs at least one optimizer"):
        resolve(CollectConfig, sets=["optimizers=[]"])


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(
            CollectConfig,
            sets=["steps=-1", "tasks=0", "bogus=1", 'optimizers=["sgd","sgd"]', "optim.sgd.lr=0"],
        )
    msg = str(info.value)
    assert msg.startswith("Invalid config: ")
    for part in (
        "steps:",
        "tasks:",
        "bogus: unknown config key",
        "optimizer listed twice",
        "optim.sgd.lr:",
    ):
        assert part in msg, part
    assert msg.count(";") == 4  # five problems, one message


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match="unknown task family 'mnist'; choose from cifar10, digits"
    ):
        resolve(CollectConfig, sets=["task.family=mnist"], names=name_problems)


def test_the_config_checks_values_and_leaves_names_to_their_registries() -> None:
    cfg = resolve(CollectConfig, sets=["task.family=mnist", "model.name=resnet"])
    assert (cfg.task.family, cfg.model.name) == ("mnist", "resnet")


def test_nested_validators() -> None:
    with pytest.raises(ConfigError, match="nesterov=true needs momentum > 0"):
        resolve(CollectConfig, sets=["optim.sgd.nesterov=true", "optim.sgd.momentum=0"])
    with pytest.raises(ConfigError, match=r"betas must lie in \[0, 1\), got \[0.9, 1.0\]"):
        resolve(CollectConfig, sets=["optim.adam.betas=[0.9, 1.0]"])
    with pytest.raises(ConfigError, match="optim.sam.base"):
        resolve(CollectConfig, sets=["optim.sam.base=rmsprop"])


def test_missing_and_unreadable_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    bad = write_toml(tmp_path / "bad.toml", "steps = = 3\n")
    with pytest.raises(ConfigError, match="is not readable TOML"):
        resolve(CollectConfig, config_file=bad)
    assert load_toml(write_toml(tmp_path / "ok.toml", "a = 1\n[b]\nc = 'x'\n")) == {
        "a": 1,
        "b": {"c": "x"},
    }


# ---- resolve: every given value is validated, also one a later layer replaces ----------------
def test_bad_set_shadowed_by_a_flag_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(CollectConfig, sets=["steps=notanumber"], flags={"steps": 20})
    assert str(info.value) == (
        "Invalid config: steps: Input should be a valid integer, unable to parse string as an "
        "integer (got 'notanumber')."
    )


@pytest.mark.parametrize(
    ("sets", "flags", "key"),
    [
        (["task.family=mnist"], {"task.family": "digits"}, "task.family"),  # a registry's name
        (["shard=[3,2]"], {"shard": [0, 2]}, "shard"),
        (["optim.sgd.lr=0"], {"optim.sgd.lr": 0.1}, "optim.sgd.lr"),  # constraint
        (["task=5"], {"task.ways": 3}, "task"),  # a value where the flag needs a section
        (["steps.x=1"], {"steps": 20}, "steps"),  # a section where the flag sets a value
        (["steps=notanumber", "steps=20"], {}, "steps"),  # shadowed by a later --set
    ],
)
def test_every_shadowed_set_value_is_validated(
    sets: list[str], flags: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^Invalid config: {re.escape(key)}: "):
        resolve(CollectConfig, sets=sets, flags=flags, names=name_problems)


def test_bad_file_value_shadowed_by_set_or_flag_is_an_error(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "c.toml", 'steps = "many"\n[task]\nways = 1\n')
    with pytest.raises(ConfigError) as info:
        resolve(CollectConfig, config_file=toml, sets=["steps=20"], flags={"task.ways": 3})
    msg = str(info.value)
    assert "steps: Input should be a valid integer" in msg and "(got 'many')" in msg
    assert "task.ways: Input should be greater than or equal to 2 (got 1)" in msg


def test_good_shadowed_values_keep_the_precedence(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "c.toml", "steps = 10\nseed = 1\n")
    cfg = resolve(CollectConfig, config_file=toml, sets=["steps=40", "seed=2"], flags={"steps": 20})
    assert (cfg.steps, cfg.seed) == (20, 2)


def test_combinations_fixed_by_a_later_layer_are_not_errors(tmp_path: Path) -> None:
    # Each shadowed value is valid on its own; only the combination below it was not.
    toml = write_toml(tmp_path / "c.toml", "steps = 100\nrecord_every = 3\n")
    cfg = resolve(CollectConfig, config_file=toml, flags={"record_every": 5})
    assert (cfg.steps, cfg.record_every) == (100, 5)
    cfg = resolve(
        CollectConfig,
        sets=["optim.sgd.nesterov=true", "optim.sgd.momentum=0"],
        flags={"optim.sgd.momentum": 0.5},
    )
    assert cfg.optim.sgd.nesterov and cfg.optim.sgd.momentum == 0.5


def test_all_layers_errors_in_one_message(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "c.toml", "tasks = 0\n")
    with pytest.raises(ConfigError) as info:
        resolve(
            CollectConfig,
            config_file=toml,
            sets=["steps=notanumber", "tasks", "nope=1", "seed=1", "seed.x=2"],
            flags={"steps": 20, "task.family": "bogus", "shard": "abc"},
            names=name_problems,
        )
    msg = str(info.value)
    assert msg.startswith("Invalid config: ") and msg.endswith(".") and "\n" not in msg
    for part in (
        "--set 'tasks' is not of the form key=value",
        "--set 'seed.x=2': 'seed' is a value, not a section",
        "steps: Input should be a valid integer",
        "tasks: Input should be greater than or equal to 1 (got 0)",
        "nope: unknown config key",
        "task.family: unknown task family 'bogus'",
        "shard: not of the form i/n (e.g. 0/4) (got 'abc')",
    ):
        assert msg.count(part) == 1, part
    # seven problems, joined by "; " (the family's own message has one more: "; choose from")
    assert msg.count("; ") == 7


def test_shard_accepts_i_slash_n_text() -> None:
    assert resolve(CollectConfig, flags={"shard": "1/3"}).shard == (1, 3)
    assert resolve(CollectConfig, sets=["shard=0/2"]).shard == (0, 2)
    with pytest.raises(ConfigError, match=r"shard 2/2 is out of range"):
        resolve(CollectConfig, flags={"shard": "2/2"})
