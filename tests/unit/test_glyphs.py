"""Glyph rendering (KanjiVG), its cache, the radical-group pools and the glyph families."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lohp_cli.config import GlyphConfig, ModelConfig, TaskConfig
from lohp_cli.errors import ConfigError, DataError
from lohp_cli.tasks import glyph_render
from lohp_cli.tasks.families import make_family
from lohp_cli.tasks.glyphs import evaluation_pool, load_glyphs

SMALL = {"characters": 60, "drawers": 8, "size": 16}


def glyph_task(tmp_path: Path, family: str = "fewshot-glyphs", **over: object) -> TaskConfig:
    glyphs = {**SMALL, **over.pop("glyphs", {})}  # type: ignore[dict-item]
    data = {"family": family, "data_root": str(tmp_path / "cache"), "glyphs": glyphs, **over}
    if family == "glyphs":
        data = {"train_per_class": 3, "support_per_class": 2, "test_per_class": 3, **data}
    else:
        data = {"shots": 1, "queries": 3, **data}
    return TaskConfig.model_validate(data)


def test_charsets_are_the_config_choices() -> None:
    choices = TaskConfig.model_fields["glyphs"].annotation.model_fields["charset"].annotation
    assert set(glyph_render.CHARSETS) == set(choices.__args__)


def test_characters_parse_into_bezier_strokes_with_radicals() -> None:
    chars = {c.char: c for c in glyph_render.load_characters("kanji")}
    assert len(chars) > 6000
    one = chars["一"]
    assert len(one.strokes) == 1 and one.strokes[0].shape[1:] == (4, 2)
    assert chars["海"].radical == "水"  # 氵 is noted as a variant of 水: one radical group
    assert chars["泉"].radical == "水"
    assert len(chars["海"].strokes) == 9


def test_rendering_is_deterministic_and_drawers_differ() -> None:
    cfg = GlyphConfig(**SMALL)
    char = glyph_render.load_characters("kanji")[100]
    a = glyph_render.render_character(char, cfg, split_seed=0)
    b = glyph_render.render_character(char, cfg, split_seed=0)
    assert a.dtype == np.uint8 and a.shape == (8, 1, 16, 16)
    assert a.tobytes() == b.tobytes()  # same seed, same bytes
    assert all(not np.array_equal(a[0], a[d]) for d in range(1, 8))
    assert not np.array_equal(a, glyph_render.render_character(char, cfg, split_seed=1))
    assert (a > 0).mean() > 0.02  # ink on every image
    assert all((img > 0).any() for img in a)


def test_drawers_without_variation_are_the_printed_character() -> None:
    cfg = GlyphConfig(**SMALL, affine=0, shift=0, jitter=0, drop=0, stroke_width=(3, 3))
    char = glyph_render.load_characters("kanji")[7]
    imgs = glyph_render.render_character(char, cfg, split_seed=0)
    assert all(np.array_equal(imgs[0], imgs[d]) for d in range(8))


def test_stroke_drop_keeps_at_least_one_stroke() -> None:
    cfg = GlyphConfig(**SMALL, drop=0.99)
    char = glyph_render.load_characters("kanji")[500]
    rng = np.random.default_rng(0)
    assert all(len(glyph_render.perturb(char, cfg, rng)) >= 1 for _ in range(20))


def test_evaluation_pool_takes_whole_radical_groups_by_hash_order() -> None:
    radicals = ("a",) * 5 + ("b",) * 3 + ("c",) * 2 + ("d",) * 10
    ev = evaluation_pool(radicals, 0.4, split_seed=0)
    groups = {r: {bool(ev[i]) for i, x in enumerate(radicals) if x == r} for r in set(radicals)}
    assert all(len(v) == 1 for v in groups.values())  # no group on both sides
    assert ev.sum() >= 8
    import hashlib

    first = min(set(radicals), key=lambda r: hashlib.sha256(f"0:{r}".encode()).hexdigest())
    assert ev[radicals.index(first)]  # the rule a reader can check: hash order first


def test_pools_are_disjoint_and_follow_radicals(tmp_path: Path) -> None:
    gs = load_glyphs(glyph_task(tmp_path))
    bg, ev = set(gs.background_classes), set(gs.evaluation_classes)
    assert bg and ev and not bg & ev and len(bg | ev) == 60
    for r in set(gs.radicals):
        sides = {i in ev for i, x in enumerate(gs.radicals) if x == r}
        assert len(sides) == 1
    assert 0.4 <= len(ev) / 60 < 0.75


def test_cache_is_reused_and_a_damaged_cache_is_rerendered(tmp_path: Path, monkeypatch) -> None:
    cfg = GlyphConfig(**SMALL)
    chars = glyph_render.select_characters(cfg)
    root = str(tmp_path / "c")
    first = glyph_render.render_all(chars, cfg, 0, root)
    files = sorted(Path(root).iterdir())
    assert [f.suffix for f in files] == [".json", ".npy"]
    calls = []
    real = glyph_render.render_character
    monkeypatch.setattr(glyph_render, "render_character", lambda *a: calls.append(1) or real(*a))
    assert np.array_equal(glyph_render.render_all(chars, cfg, 0, root), first)
    assert not calls  # second use: from the cache
    npy = files[1]
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0xFF  # a flipped pixel: the hash no longer matches
    npy.write_bytes(bytes(raw))
    assert np.array_equal(glyph_render.render_all(chars, cfg, 0, root), first)
    assert len(calls) == len(chars)
    calls.clear()
    files[0].write_text("{not json")
    assert np.array_equal(glyph_render.render_all(chars, cfg, 0, root), first)
    assert len(calls) == len(chars)
    assert json.loads(files[0].read_text())["shape"] == list(first.shape)


def test_other_settings_have_another_cache_key() -> None:
    a = glyph_render.cache_key(GlyphConfig(**SMALL), 0)
    assert a != glyph_render.cache_key(GlyphConfig(**SMALL), 1)
    assert a != glyph_render.cache_key(GlyphConfig(**{**SMALL, "jitter": 1.0}), 0)


def test_missing_extra_names_the_install(monkeypatch) -> None:
    from importlib import metadata

    def missing(_name: str) -> None:
        raise metadata.PackageNotFoundError("kanjivg")

    monkeypatch.setattr(metadata, "files", missing)
    monkeypatch.setattr(metadata, "version", missing)
    glyph_render.load_characters.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install 'lohp\[glyphs\]'"):
            glyph_render.load_characters("kana")
    finally:
        glyph_render.load_characters.cache_clear()


def test_bad_glyph_settings_are_config_errors(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="charset"):
        TaskConfig.model_validate({"family": "fewshot-glyphs", "glyphs": {"charset": "hanzi"}})
    with pytest.raises(ConfigError, match="exceeds the 184 characters"):
        load_glyphs(glyph_task(tmp_path, glyphs={"charset": "kana", "characters": 500}))
    with pytest.raises(ConfigError, match=r"exceeds the 8 drawn \(task.glyphs.drawers\) images"):
        make_family(glyph_task(tmp_path, shots=5, queries=4))  # K + Q > drawers
    with pytest.raises(ConfigError, match="ways=40 exceeds"):
        make_family(glyph_task(tmp_path, ways=40))  # N larger than a class pool
    with pytest.raises(ConfigError, match="split by radical group"):
        make_family(glyph_task(tmp_path, holdout_classes=[1, 2]))
    with pytest.raises(ConfigError, match="exceeds the 8 drawers"):
        make_family(glyph_task(tmp_path, "glyphs", train_per_class=6))
    with pytest.raises(ConfigError, match="task.glyphs does not apply"):
        make_family(TaskConfig.model_validate({"family": "digits", "glyphs": {"size": 20}}))


def test_episode_ids_round_trip_and_pools(tmp_path: Path) -> None:
    fam = make_family(glyph_task(tmp_path))
    ev = set(load_glyphs(fam.cfg).evaluation_classes)
    for split, inside in (("source", False), ("target", True)):
        for ep in fam.tasks(split, 5):
            assert fam.task(ep.id) == ep and ep.split == split
            assert all((c in ev) == inside for c in ep.classes)
    ep = fam.tasks("target", 1)[0]
    x, y = ep.examples("support")
    assert x.shape == (5, 1, 16, 16) and y.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="no split"):
        mixed = (*ep.classes[:4], min(set(range(60)) - ev))
        fam.task(f"glyphs-k1-q3-e0-c{'_'.join(map(str, mixed))}")


def test_transfer_tasks_use_evaluation_characters_only(tmp_path: Path) -> None:
    fam = make_family(glyph_task(tmp_path, "glyphs"))
    ev = set(load_glyphs(fam.cfg).evaluation_classes)
    for t in fam.tasks("target", 10):
        assert set(t.classes) <= ev and fam.task(t.id) == t
    for t in fam.tasks("source", 10):
        assert not set(t.classes) & ev
    assert fam.tasks("target", 3) == fam.tasks("target", 10)[:3]  # a longer list extends
    t = fam.tasks("target", 1)[0]
    train, _ = t.examples("train")
    test, _ = t.examples("test")
    support, _ = t.examples("support")
    assert train.shape[0] == 15 and support.shape[0] == 10 and test.shape[0] == 15
    with pytest.raises(ConfigError, match="target-hard"):
        fam.tasks("target-hard", 1)
    with pytest.raises(ConfigError, match="mixes"):
        s = fam.tasks("source", 1)[0]
        fam.task("c" + "_".join(map(str, (*s.classes[:4], t.classes[0]))))
    # the extractor never sees an evaluation character
    _, y, k = fam.extractor_data()
    assert k == len(fam.source_classes) and not set(fam.source_classes) & ev


def test_glyph_transfer_defaults_fit_twenty_drawers() -> None:
    cfg = TaskConfig.model_validate({"family": "glyphs"})
    assert (cfg.train_per_class, cfg.support_per_class, cfg.test_per_class) == (10, 5, 5)
    cfg = TaskConfig.model_validate({"family": "glyphs", "train_per_class": 12})
    assert cfg.train_per_class == 12


def test_many_shot_source_episodes_keep_a_k_shot_condition(tmp_path: Path) -> None:
    from lohp_cli.tasks.models import FeatureExtractor

    many = make_family(glyph_task(tmp_path, source_train="all"))
    few = make_family(glyph_task(tmp_path))
    frozen = {"extractor": FeatureExtractor(1, 8).eval()}
    mc = ModelConfig(feature_dim=8)
    ep_many, ep_few = many.tasks("source", 1)[0], few.tasks("source", 1)[0]
    assert ep_many.id == ep_few.id
    d_many, d_few = ep_many.data(mc, frozen), ep_few.data(mc, frozen)
    assert d_few.x_train.shape[0] == 5 and d_many.x_train.shape[0] == 5 * 8  # every drawer
    assert torch.equal(d_many.condition, d_few.condition)
    assert torch.equal(d_many.x_support, d_few.x_support)
    assert torch.equal(d_many.x_test, d_few.x_test)
    support = {b.tobytes() for b in ep_many.examples("support")[0]}
    assert support <= {b.tobytes() for b in ep_many.examples("train")[0]}
    # meta-test episodes train on their support set whatever the option
    t_many, t_few = many.tasks("target", 1)[0], few.tasks("target", 1)[0]
    assert torch.equal(t_many.data(mc, frozen).x_train, t_few.data(mc, frozen).x_train)
    assert many.describe()["source_train"] == "all" and "source_train" not in few.describe()


def test_cross_domain_in_both_directions(tmp_path: Path) -> None:
    fam = make_family(glyph_task(tmp_path, meta_test="digits"))
    ep = fam.tasks("target", 1)[0]
    assert ep.id.startswith("digits-") and fam.task(ep.id) == ep
    assert set(fam.source_classes) == set(load_glyphs(fam.cfg).background_classes)
    x, _ = ep.examples("test")
    assert x.shape[1:] == (1, 16, 16)  # digits at the glyphs' size
    back = make_family(
        TaskConfig.model_validate(
            {
                "family": "fewshot-digits",
                "meta_test": "glyphs",
                "holdout_classes": [],
                "shots": 1,
                "queries": 3,
                "data_root": str(tmp_path / "cache"),
                "glyphs": {**SMALL, "size": 8},
            }  # fmt: skip
        )
    )
    ep = back.tasks("target", 1)[0]
    assert ep.id.startswith("glyphs-") and back.task(ep.id) == ep
