"""The task family and the target model of a store."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from lohp_cli.config.base import ConfigModel, Seed


class GlyphConfig(ConfigModel):
    """How glyph tasks render KanjiVG characters (``lohp_cli.tasks.glyph_render``)."""

    charset: Literal["kanji", "kana", "all"] = Field(
        "kanji", description="KanjiVG character set: kanji (6,416), kana (184) or all (6,703)."
    )
    characters: int | None = Field(
        1600,
        ge=2,
        description="Characters used (a fixed seeded sample of the set; null: all of it). "
        "1,600 is about Omniglot's 1,623.",
    )
    size: int = Field(28, ge=8, le=256, description="Image side in pixels (Omniglot: 28).")
    drawers: int = Field(20, ge=1, description="Drawers (images) per character (Omniglot: 20).")
    affine: float = Field(
        0.15, ge=0, le=1, description="Std of each entry of A − I, the drawer's 2×2 distortion."
    )
    shift: float = Field(
        0.05, ge=0, le=0.5, description="Std of the drawer's translation, in box widths."
    )
    jitter: float = Field(
        2.5, ge=0, le=20, description="Std of each stroke node's displacement (grid units of 109)."
    )
    drop: float = Field(0.15, ge=0, lt=1, description="Probability that a stroke is left out.")
    stroke_width: tuple[float, float] = Field(
        (3.0, 6.0), description="Range of the drawer's stroke width (grid units; KanjiVG: 3)."
    )
    eval_fraction: float = Field(
        0.4,
        gt=0,
        lt=1,
        description="Share of characters in the evaluation pool (by whole radical groups; "
        "Omniglot: 659 of 1,623).",
    )

    @field_validator("stroke_width")
    @classmethod
    def _width_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 30:
            raise ValueError(f"needs 0 < low <= high <= 30, got {list(v)}")
        return v


# Per-class sizes of the families whose classes have few images (the glyphs' 20 drawers): the
# defaults when a config leaves them out
FAMILY_DEFAULTS: dict[str, dict[str, int]] = {
    "glyphs": {"train_per_class": 10, "support_per_class": 5, "test_per_class": 5},
}


class TaskConfig(ConfigModel):
    family: str = Field("fmnist", description="Task family (see `lohp collect --help`).")
    ways: int = Field(5, ge=2, description="Classes per task (C-way tasks).")
    train_per_class: int = Field(
        100, ge=1, description="Training images per class and task (glyphs: 10 by default)."
    )
    test_per_class: int = Field(
        100, ge=1, description="Test images per class and task (glyphs: 5 by default)."
    )
    support_per_class: int = Field(
        10,
        ge=1,
        description="Labelled support images per class for the condition vector (glyphs: 5 by "
        "default).",
    )
    holdout_classes: tuple[int, ...] = Field(
        (), description="Classes never used by source tasks nor the feature extractor."
    )
    target_fraction: float = Field(
        0.2, gt=0, lt=1, description="Fraction of class combinations reserved for target tasks."
    )
    split_seed: Seed = Field(0, description="Seed of the source/target split and example choice.")
    test_domain: int | None = Field(
        None,
        description="The held-out domain of a domain family (rotated-fmnist: the rotation angle "
        "in degrees, one of 0, 15, 30, 45, 60, 75): target tasks lie in it, source tasks and the "
        "feature extractor never see it.",
    )
    data_root: str | None = Field(
        None, description="Directory with the data set files; default: the usual system places."
    )
    download: bool = Field(
        False, description="Let torchvision download a missing data set into data_root."
    )
    shots: int = Field(
        1,
        ge=1,
        description="Few-shot families only: K labelled support images per class of an episode "
        "(its training split, and what its condition is computed from).",
    )
    queries: int = Field(
        15,
        ge=1,
        description="Few-shot families only: Q query images per class of an episode (its test "
        "split).",
    )
    meta_test: str | None = Field(
        None,
        description="Few-shot families only: the data set meta-test episodes come from (digits "
        "for cross-domain episodes, resized to the family's input size); default: the family's "
        "own data set, on the held-out classes.",
    )

    source_train: Literal["support", "all"] = Field(
        "support",
        description="Few-shot families only: what meta-train (source) episodes train on: their "
        "K-shot support set, or every training image of their classes (many-shot trajectories; "
        "the episode's queries included, so its recorded test accuracy is on trained images). "
        "The condition always comes from the K-shot support set, and meta-test episodes always "
        "train on their support set.",
    )
    glyphs: GlyphConfig = Field(
        default_factory=GlyphConfig,
        description="Glyph families (and meta_test = glyphs) only: how KanjiVG characters are "
        "rendered and split into background and evaluation pools.",
    )

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("family") in FAMILY_DEFAULTS:
            return {**FAMILY_DEFAULTS[data["family"]], **data}
        return data


LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets", "lora_backbone")


class ModelConfig(ConfigModel):
    name: str = Field(
        "head",
        description="Target model from the registry (lohp_cli.tasks.models): head (over a "
        "frozen extractor), mlp, cnn or lora (LoRA factors and a task head over a pretrained "
        "backbone).",
    )
    hidden: int = Field(
        32, ge=1, description="Hidden width of the mlp / channels of the cnn and lora backbones."
    )
    feature_dim: int = Field(
        64, ge=1, description="Feature size of the frozen extractor (head) or backbone (lora)."
    )
    extractor_steps: int = Field(
        600,
        ge=1,
        description="Training steps of the frozen feature extractor (head) or of the backbone's "
        "pretraining on the source classes (lora).",
    )
    lora_rank: int = Field(4, ge=1, description="LoRA rank r of every adapted layer (lora).")
    lora_alpha: float = Field(
        8.0, gt=0, description="LoRA scale: a layer's update is (lora_alpha / lora_rank)·B·A."
    )
    lora_targets: tuple[str, ...] = Field(
        (),
        description="Backbone layers given LoRA factors, by name or name suffix as peft's "
        "target_modules (mlp backbone: fc1, fc2; cnn: conv1, conv2, proj); () = all of them.",
    )
    lora_backbone: Literal["mlp", "cnn"] = Field(
        "mlp",
        description="The lora model's pretrained backbone: mlp (14×14 inputs, two ReLU layers "
        "of hidden and feature_dim units) or cnn (two conv layers of hidden/2 and hidden "
        "channels and a linear projection to feature_dim, as the head model's extractor).",
    )

    @field_validator("lora_targets")
    @classmethod
    def _distinct_targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not t.strip() for t in v) or len(set(v)) != len(v):
            raise ValueError(f"needs distinct, non-empty layer names, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _lora_fields_need_lora(self) -> ModelConfig:
        given = [f for f in LORA_FIELDS if f in self.model_fields_set]
        if self.name != "lora" and given:
            raise ValueError(
                f"{given[0]} applies to the lora model only (this is {self.name!r}); set "
                "model.name = 'lora' or leave it out"
            )
        return self

    @model_serializer(mode="wrap")
    def _lora_fields_for_lora_only(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Every field, the LoRA ones only for ``lora``: the JSON of other models (in a store's
        compat and config, a policy's store_compat) is what it was before them."""
        data = handler(self)
        if self.name != "lora" and isinstance(data, dict):
            for f in LORA_FIELDS:
                data.pop(f, None)
        return data
