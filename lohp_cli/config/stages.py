"""The configs of ``lohp generate`` and ``lohp evaluate``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lohp_cli.config.base import THREADS_HELP, ConfigModel, Seed
from lohp_cli.config.optim import OPTIMIZERS


class GenerateConfig(ConfigModel):
    policy: str = Field("policies/fmnist-k2", description="Policy directory.")
    out: str = Field("gen/fmnist-k2.zarr", description="Output generated-weights store (a path).")
    tasks: str = Field(
        "target",
        description="A split (target, target-hard, source), comma-separated task ids, or @FILE "
        "with one task id per line.",
    )
    num_tasks: int = Field(20, ge=1, description="How many tasks of a split.")
    samples: int = Field(4, ge=1, description="Weight vectors per task.")
    mode: Literal["mean", "sample"] = Field(
        "mean",
        description="Mean steps or sampled steps (a diffusion policy: deterministic DDIM, η = 0, "
        "or stochastic DDIM, η = 1).",
    )
    sample_steps: int | None = Field(
        None,
        ge=1,
        description="A diffusion policy's DDIM steps S (1 … its diffusion.timesteps; default: "
        "its diffusion.sample_steps); other policies take the N = T/k steps they were trained for.",
    )
    seed: Seed = Field(0, description="Seed of s_0 (not of a shared θ₀) and of sampled steps.")
    style: str | None = Field(
        None,
        description="For a policy trained with policy.optimizer_token: whose steps to imitate "
        "(default: adam when the policy learned from Adam runs, else its first optimizer).",
    )
    batch_size: int = Field(256, ge=1, description="Trajectories generated at once.")
    save_paths: bool = Field(False, description="Also store every state [S, N+1, P].")
    store: str | None = Field(
        None, description="Trajectory store of the policy (default: where it was trained)."
    )
    data_root: str | None = Field(None, description="Data set directory (default: the store's).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")
    threads: int | None = Field(None, ge=1, description=THREADS_HELP)
    overwrite: bool = Field(False, description="Replace an existing output.")
    update: bool = Field(
        False,
        description="Generate only the tasks an existing output (of this policy and settings) "
        "lacks, keep the others, and write the listed tasks; nothing to do when none is new.",
    )


DEFAULT_FRONTIER_STEPS = (1, 2, 5, 10, 20, 50, 100, 200)
# The built-in baselines of `lohp evaluate`, by kind: the one list of their names. The methods
# registry (lohp_cli.methods.registry) builds its entries from these groups (prototype and the
# learned optimizers register themselves), owns which names exist and refuses others
# (lohp_cli.stages.check_names); `lohp evaluate --help` lists them (a test checks it).
DEFAULT_BASELINES = (*OPTIMIZERS, "hypernetwork")
MEMORIZATION_BASELINES = (
    "nearest", "mean", "nearest-noise", "class-rows", "gaussian", "average-16",
)  # fmt: skip
META_START_BASELINES = ("reptile", "fomaml")
L2O_BASELINES = ("l2o", "l2o-tt", "l2o-flat", "m-l2o")
BASELINES = (
    *DEFAULT_BASELINES,
    *MEMORIZATION_BASELINES,
    *META_START_BASELINES,
    "erm",
    "prototype",
    "full-ft",
    *L2O_BASELINES,
)


class MetaStartConfig(ConfigModel):
    """How the meta-learned start (``reptile``, ``fomaml``) is learned on the store's source
    tasks. Defaults: the few-shot settings of Nichol et al. (2018: inner Adam at 0.001, 5 inner
    steps, meta-batch 5, outer step annealed linearly to 0; their code's outer step 0.1) and Finn
    et al. (2017: outer Adam at 0.001), with fewer meta steps, so that a 64-episode store
    meta-trains in seconds on one CPU core (docs/fewshot.md, "The meta-learned start")."""

    inner_steps: int = Field(
        5, ge=1, description="Adam steps of the inner loop on a source task's adaptation set."
    )
    inner_lr: float | None = Field(
        0.001,
        gt=0,
        description="Adam's learning rate in the inner loop (null: the store's, which the "
        "held-out tasks fine-tune with).",
    )
    meta_steps: int = Field(1000, ge=1, description="Outer (meta) steps.")
    meta_batch: int = Field(5, ge=1, description="Source tasks per meta step.")
    reptile_lr: float = Field(
        0.1,
        gt=0,
        description="Reptile's outer step size ε (θ ← θ + ε (θ' − θ)), annealed linearly to 0.",
    )
    fomaml_lr: float = Field(
        0.001, gt=0, description="Learning rate of FOMAML's outer Adam (Finn et al.'s β)."
    )


class EvaluateConfig(ConfigModel):
    generated: str = Field("gen/fmnist-k2.zarr", description="Output of 'lohp generate'.")
    out: str = Field("reports/fmnist", description="Report directory.")
    baselines: tuple[str, ...] = Field(
        DEFAULT_BASELINES,
        description=f"Baselines on the same tasks: {', '.join(OPTIMIZERS)} (each for T·r and "
        "for N optimizer steps, and for frontier_steps), hypernetwork (trained here on the "
        "policy's store unless given in policies), the memorisation baselines "
        f"{', '.join(MEMORIZATION_BASELINES)} (looked up in the endpoints of the policy's source "
        "runs; gaussian and average-16 are Zeng et al.'s), erm (a domain family's baseline: Adam "
        "on the task in the pooled source domains, never the held-out one), prototype (nearest "
        "class mean of the frozen features, head model only), full-ft (a lora store: Adam on "
        "every weight of the merged network, backbone included, for the same step budgets), the "
        f"meta-learned starts {' and '.join(META_START_BASELINES)} (θ₀ learned on the store's "
        "source tasks, then Adam for 0 steps and the optimizers' budgets; meta_start), and the "
        f"learned optimizers {', '.join(L2O_BASELINES)} (each needs its policy in policies under "
        "the same name).",
    )
    hypernetwork_steps: int = Field(1500, ge=1, description="Training steps of that hypernetwork.")
    meta_start: MetaStartConfig = Field(
        default_factory=MetaStartConfig,
        description="Meta-training of the reptile and fomaml baselines (meta_start.KEY).",
    )
    full_ft_lr: float | None = Field(
        None, gt=0, description="Adam's learning rate for full-ft (default: the store's Adam lr)."
    )
    policies: dict[str, str] = Field(
        default_factory=dict,
        description="More trained policies to compare, name -> directory (e.g. hypernetwork, "
        "lo-di, lo-op, k=1); generated here on the same tasks and seeds. NAME@S asks a "
        "diffusion policy for S DDIM steps (row 'NAME (S=…)'; default: its own sample_steps).",
    )
    paired_also: tuple[str, ...] = Field(
        (),
        description="Names of more policies (keys of policies) whose rows are also paired "
        "against every other scored row, as the generated weights' row is (e.g. a variant "
        "that a study compares with the baselines, not only with the main row).",
    )
    latency_repeats: int = Field(20, ge=1, description="Timed repetitions per method (median).")
    frontier_steps: tuple[int, ...] = Field(
        DEFAULT_FRONTIER_STEPS,
        description="Step budgets at which each optimizer baseline is also scored and timed, "
        "for the accuracy-latency frontier (those over the store's T·r are left out; () "
        "turns the frontier off).",
    )
    cosine_runs: int = Field(
        16, ge=0, description="Source runs for the cosine to the store's recorded steps."
    )
    locality_tasks: int = Field(
        10,
        ge=0,
        description="Held-out tasks of the local-policy check along each optimizer's "
        "own path (0: off).",
    )
    locality_source_tasks: int = Field(
        10, ge=0, description="Source tasks of that check, for contrast (0: none)."
    )
    locality_branches: int = Field(
        4, ge=2, description="Minibatch seeds per state: the seed-averaged step and the ceiling."
    )
    path_diagnosis_tasks: int = Field(
        0,
        ge=0,
        description="Held-out tasks of the path diagnosis (0: off): along the policy's states and "
        "the reference optimizer's path, per step the distance to the nearest recorded state of "
        "the store, the support loss and accuracy, and per layer the step norms against the "
        "optimizer's (docs/report.md).",
    )
    latency_budget_s: float = Field(
        300.0,
        gt=0,
        description="Seconds the interleaved latency timing may take: past it, no round is added "
        "after the fifth (docs/report.md, 'Latency').",
    )
    plots: bool = Field(True, description="Write PNG plots (needs matplotlib).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op CPU threads (default 1: evaluate times one task at batch size 1, "
        "and one thread is what stays steady on a shared machine; OMP_NUM_THREADS when set).",
    )

    @model_validator(mode="after")
    def _paired_are_policies(self) -> EvaluateConfig:
        unknown = [n for n in self.paired_also if n not in self.policies or "@" in n]
        if unknown:
            raise ValueError(
                f"paired_also names {unknown}, which are not --policy NAME=DIR names "
                f"({', '.join(n for n in self.policies if '@' not in n) or 'none given'})"
            )
        return self

    @field_validator("frontier_steps")
    @classmethod
    def _positive_steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in v):
            raise ValueError(f"frontier steps must be ≥ 1, got {min(v)}")
        return tuple(sorted(set(v)))

    @field_validator("policies")
    @classmethod
    def _sample_steps_positive(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            label, sep, steps = name.rpartition("@")
            if sep and not (label and steps.isdigit() and int(steps) >= 1):
                raise ValueError(
                    f"policy name {name!r}: NAME@S gives a diffusion policy's DDIM steps S, a "
                    f"positive integer, after a name (got {steps!r})"
                )
        return v


class ExportConfig(ConfigModel):
    generated: str = Field("gen/fmnist-k2.zarr", description="Output of 'lohp generate'.")
    out: str = Field("models", description="Directory that gets one model directory per task.")
    tasks: tuple[str, ...] = Field(
        (), description="Task ids of the generated store to export (empty: every task)."
    )
    sample: int = Field(0, ge=0, description="Which generated sample of each task.")
    program: bool = Field(
        True, description="Also write model.pt2, a torch.export program (loads with torch alone)."
    )
    store: str | None = Field(
        None, description="The policy's trajectory store, if it moved (its frozen parts)."
    )
    data_root: str | None = Field(None, description="Data set directory (default: the store's).")
    overwrite: bool = Field(False, description="Replace existing model directories.")
    threads: int | None = Field(None, ge=1, description=THREADS_HELP)


class PredictConfig(ConfigModel):
    model: str = Field(..., description="A directory written by 'lohp export'.")
    inputs: tuple[str, ...] = Field(
        ...,
        min_length=1,
        description="Image files (png, jpg, …), or tensor files: .npy or .safetensors holding "
        "images [B, C, H, W] (or [B, H, W] for one channel), uint8 or float in [0, 1].",
    )
    top: int = Field(1, ge=1, description="Classes listed per input, most probable first.")
    threads: int | None = Field(None, ge=1, description=THREADS_HELP)
