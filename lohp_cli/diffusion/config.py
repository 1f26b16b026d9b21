"""The config of ``train-policy --method diffusion``: the store data it learns from (as Lo-Hp), the
denoiser's backbone (the ``policy`` section Lo-Hp uses, backbone keys only) and the diffusion
itself (``diffusion``: schedule, training time steps, DDIM sampling steps).

Only pydantic here, so that registering the method (:mod:`lohp_cli.diffusion`) imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lohp_cli.config import ConfigModel, PolicyConfig, TrainConfig, check_optimizer_names

# PolicyConfig keys the denoiser reads (the backbone's); every other key is a Lo-Hp setting
DENOISER_KEYS = (
    *("backbone", "channels", "patch", "hidden", "coordinate_hidden", "emb_dim"),
    *("width", "blocks", "heads"),
)


class DiffusionConfig(ConfigModel):
    """The DDPM over normalised endpoint weights and its DDIM sampler."""

    schedule: Literal["linear", "cosine"] = Field(
        "linear",
        description="β schedule: linear (DDPM: β from 1e-4 to 0.02, scaled by 1000/timesteps) or "
        "cosine (improved DDPM, β ≤ 0.999). With cosine the last step's ᾱ is ~1e-9, so DDIM's "
        "first step from t = T−1 amplifies the denoiser's error (docs/policy.md).",
    )
    timesteps: int = Field(
        1000, ge=2, description="Diffusion steps T_train of the forward process (training)."
    )
    sample_steps: int = Field(
        50,
        ge=1,
        description="DDIM steps S (η = 0) of generate and evaluate, 1 … timesteps: its latency "
        "is S denoiser passes. generate --sample-steps and evaluate --policy NAME@S=DIR choose "
        "another.",
    )

    @model_validator(mode="after")
    def _steps_within_training(self) -> DiffusionConfig:
        if self.sample_steps > self.timesteps:
            raise ValueError(
                f"diffusion.sample_steps = {self.sample_steps} exceeds diffusion.timesteps = "
                f"{self.timesteps} (DDIM takes at most one step per training time step); choose "
                f"1 … {self.timesteps}"
            )
        return self


class DiffusionTrainConfig(TrainConfig):
    """A conditional diffusion generator of endpoint weights (method ``diffusion``)."""

    method: Literal["diffusion"] = Field(
        "diffusion", description="diffusion: a DDPM over the runs' final weights θ_T."
    )
    optimizers: tuple[str, ...] | None = Field(
        None, description="Learn only from runs of these optimizers (default: all in the store)."
    )
    normalize: Literal["init", "all"] = Field(
        "init",
        description="Per-coordinate z-score of the weights, as Lo-Hp's: from θ_0 of all runs "
        "(init) or from every recorded state (all).",
    )
    augment: Literal["auto", "classes", "none"] = Field(
        "auto",
        description="Class-order augmentation of the drawn runs, as Lo-Hp's (auto: where the "
        "store's tasks and model have that structure).",
    )
    cache_mb: float = Field(32.0, ge=0, description="Cache of decoded runs, in MB.")
    policy: PolicyConfig = Field(
        default_factory=PolicyConfig,
        description="The denoiser's backbone, from Lo-Hp's backbone registry: "
        + ", ".join(f"policy.{k}" for k in DENOISER_KEYS)
        + " (the other policy keys are Lo-Hp settings).",
    )
    diffusion: DiffusionConfig = Field(
        default_factory=DiffusionConfig, description="Schedule, T_train and DDIM steps."
    )

    @field_validator("optimizers")
    @classmethod
    def _subset(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("the optimizer subset is empty; list at least one of sgd, adam, sam")
        return check_optimizer_names(v)

    @field_validator("policy")
    @classmethod
    def _backbone_keys_only(cls, v: PolicyConfig) -> PolicyConfig:
        other = [
            k
            for k, f in PolicyConfig.model_fields.items()
            if k not in DENOISER_KEYS and getattr(v, k) != f.get_default(call_default_factory=True)
        ]
        if other:
            raise ValueError(
                f"{', '.join(other)}: Lo-Hp setting(s) the diffusion denoiser does not use; it "
                f"reads {', '.join(DENOISER_KEYS)}"
            )
        return v
