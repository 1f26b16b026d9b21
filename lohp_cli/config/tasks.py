"""The task family and the target model of a store."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lohp_cli.config.base import Frozen, registered


class TaskConfig(Frozen):
    family: str = Field("fmnist", description="Task family (see `lohp collect --help`).")
    ways: int = Field(5, ge=2, description="Classes per task (C-way tasks).")
    train_per_class: int = Field(100, ge=1, description="Training images per class and task.")
    test_per_class: int = Field(100, ge=1, description="Test images per class and task.")
    support_per_class: int = Field(
        10, ge=1, description="Labelled support images per class for the condition vector."
    )
    holdout_classes: tuple[int, ...] = Field(
        (), description="Classes never used by source tasks nor the feature extractor."
    )
    target_fraction: float = Field(
        0.2, gt=0, lt=1, description="Fraction of class combinations reserved for target tasks."
    )
    split_seed: int = Field(0, description="Seed of the source/target split and example choice.")
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

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        from lohp_cli.tasks.families import FAMILIES

        return registered(v, FAMILIES, "task family")

    @model_validator(mode="after")
    def _known_domain(self) -> TaskConfig:
        from lohp_cli.tasks.families import FAMILIES

        domains = FAMILIES[self.family].domains
        listed = ", ".join(map(str, domains))
        if domains and self.test_domain is None:
            raise ValueError(
                f"task family '{self.family}' needs task.test_domain, the held-out domain: one "
                f"of {listed}"
            )
        if self.test_domain is not None and self.test_domain not in domains:
            if not domains:
                raise ValueError(
                    f"task.test_domain={self.test_domain} is for domain families such as "
                    f"rotated-fmnist; '{self.family}' has no domains"
                )
            raise ValueError(
                f"task.test_domain={self.test_domain} is not a domain of '{self.family}'; "
                f"choose one of {listed}"
            )
        return self

    @field_validator("meta_test")
    @classmethod
    def _known_meta_test(cls, v: str | None) -> str | None:
        from lohp_cli.tasks.fewshot import DOMAINS

        return v if v is None else registered(v, DOMAINS, "meta-test domain")


class ModelConfig(Frozen):
    name: str = Field(
        "head",
        description="Target model from the registry (lohp_cli.tasks.models): head (over a "
        "frozen extractor), mlp or cnn.",
    )
    hidden: int = Field(32, ge=1, description="Hidden width of the mlp / channels of the cnn.")
    feature_dim: int = Field(64, ge=1, description="Feature size of the frozen extractor (head).")
    extractor_steps: int = Field(
        600, ge=1, description="Training steps of the frozen feature extractor (head)."
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from lohp_cli.tasks.models import MODELS

        return registered(v, MODELS, "target model")
