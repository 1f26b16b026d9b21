"""The config of ``lohp collect``: tasks, model, optimizers and the store codec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lohp_cli.config.base import Frozen
from lohp_cli.config.optim import OPTIMIZERS, OptimizersConfig, check_optimizer_names
from lohp_cli.config.tasks import ModelConfig, TaskConfig
from lohp_cli.runtime import derive_seed


class StoreCodecConfig(Frozen):
    codec: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = Field(
        "blosc-zstd", description="Compression of trajectory chunks."
    )
    level: int = Field(5, ge=0, le=9, description="Compression level.")
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = Field(
        "shuffle", description="Blosc shuffle filter."
    )
    chunk_steps: int = Field(
        64, ge=1, description="Recorded states per chunk (time axis); default: a run in one chunk."
    )
    transpose: bool = Field(
        True, description="Store each chunk coordinate-major (zarr TransposeCodec): better ratio."
    )
    checksum: bool = Field(
        True,
        description="End every chunk with a crc32c checksum (zarr v3 codec): damage is detected.",
    )


class CollectConfig(Frozen):
    out: str = Field("runs/fmnist.zarr", description="Output store (path or fsspec URL).")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Task family settings.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Target model settings.")
    optimizers: tuple[str, ...] = Field(OPTIMIZERS, description="Optimizers to run on each task.")
    optim: OptimizersConfig = Field(
        default_factory=OptimizersConfig, description="Per-optimizer hyperparameters."
    )
    store: StoreCodecConfig = Field(default_factory=StoreCodecConfig, description="Store codec.")
    tasks: int = Field(32, ge=1, description="Number of source tasks.")
    seeds: int = Field(2, ge=1, description="Replicates (seeds) per task and optimizer.")
    steps: int = Field(200, ge=1, description="Optimizer steps per run.")
    record_every: int = Field(5, ge=1, description="Record the weights every this many steps.")
    batch_size: int = Field(64, ge=1, description="Minibatch size.")
    seed: int = Field(0, description="Base seed; per-run seeds derive from it.")
    init: Literal["per_run", "shared"] = Field(
        "per_run",
        description="Where each run starts: per_run (θ₀ drawn from the run's own seed) or shared "
        "(every run of the store starts from one θ₀, drawn once and saved in the store, so the "
        "hidden units of all runs stay aligned; generation and evaluate start from it too).",
    )
    init_seed: int | None = Field(
        None,
        description="Seed of the shared θ₀ (init = 'shared' only); default: derived from seed.",
    )
    workers: int = Field(1, ge=1, description="Worker processes writing disjoint runs.")
    batch_runs: int = Field(
        64,
        ge=1,
        description="Runs of one optimizer trained together in one process (stacked weights, "
        "torch.vmap); 1 trains one run at a time. cnn and lora runs always go one at a time.",
    )
    threads_per_worker: int = Field(
        1, ge=1, description="Torch threads per worker (fixed so results do not depend on it)."
    )
    shard: tuple[int, int] | None = Field(
        None, description="(i, n) or 'i/n': do only the i-th of n deterministic shares of the runs."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")

    @field_validator("optimizers")
    @classmethod
    def _known_optimizers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one optimizer")
        check_optimizer_names(v)
        if len(set(v)) != len(v):
            raise ValueError(f"optimizer listed twice in {list(v)}")
        return v

    @field_validator("shard", mode="before")
    @classmethod
    def _shard_from_text(cls, v: Any) -> Any:
        """Accept ``"i/n"`` (the ``--shard`` flag's form) as well as ``[i, n]``."""
        if not isinstance(v, str):
            return v
        try:
            i, n = (int(x) for x in v.split("/"))
        except ValueError:
            raise ValueError("not of the form i/n (e.g. 0/4)") from None
        return (i, n)

    @field_validator("shard")
    @classmethod
    def _shard_in_range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (v[1] >= 1 and 0 <= v[0] < v[1]):
            raise ValueError(f"shard {v[0]}/{v[1]} is out of range; use i/n with 0 <= i < n")
        return v

    @model_validator(mode="after")
    def _record_every_divides_steps(self) -> CollectConfig:
        if self.steps % self.record_every:
            raise ValueError(
                f"record_every={self.record_every} does not divide steps={self.steps}; "
                "pick values with steps % record_every == 0"
            )
        return self

    @model_validator(mode="after")
    def _init_seed_needs_shared(self) -> CollectConfig:
        if self.init_seed is not None and self.init != "shared":
            raise ValueError(
                f"init_seed={self.init_seed} is the seed of a shared θ₀; set init = 'shared' "
                "(--init shared) or leave init_seed out"
            )
        return self

    @property
    def shared_init_seed(self) -> int | None:
        """The seed the shared θ₀ is drawn from (None for per-run starts)."""
        if self.init != "shared":
            return None
        return derive_seed(self.seed, "shared-init") if self.init_seed is None else self.init_seed

    @property
    def recorded_states(self) -> int:
        """T + 1: number of recorded weight vectors per run (θ_0 … θ_T)."""
        return self.steps // self.record_every + 1
