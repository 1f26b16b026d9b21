"""The config of ``lohp collect``: tasks, model, optimizers and the store codec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lohp_cli.config.base import ConfigModel, Seed
from lohp_cli.config.optim import OPTIMIZERS, OptimizersConfig, check_optimizer_names
from lohp_cli.config.tasks import ModelConfig, TaskConfig
from lohp_cli.runtime import derive_seed

# Compression level ranges and defaults (pcodec: 0-12, higher is slower and smaller).
CODEC_LEVELS = {"pcodec": (12, 8), "blosc-zstd": (9, 5), "blosc-lz4": (9, 5), "zstd": (9, 5)}


# the address schemes of Dask distributed's comm backends (distributed.comm.registry)
SCHEDULER_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_scheduler_address(address: str) -> None:
    """A ValueError unless ``address`` is ``SCHEME://HOST[:PORT]`` with a Dask scheme and a port
    in 0-65535 (Dask itself is not imported here)."""
    scheme, _, rest = address.partition("://")
    if scheme not in SCHEDULER_SCHEMES:
        raise ValueError(
            f"'{address}' has the address scheme {scheme!r}; Dask schedulers listen on "
            f"{', '.join(SCHEDULER_SCHEMES)} (e.g. tcp://HOST:8786)"
        )
    rest = rest.rstrip("/")
    if rest.startswith("["):  # an IPv6 literal: [::1]:8786
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else tail
    else:
        host, _, port = rest.partition(":")
    if not host:
        raise ValueError(f"'{address}' names no host; give an address like tcp://HOST:PORT")
    if port and not (port.isdigit() and port.isascii() and int(port) <= 65535):
        raise ValueError(f"'{address}' has the port {port!r}; give a number 0-65535")


class StoreCodecConfig(ConfigModel):
    codec: Literal["pcodec", "blosc-zstd", "blosc-lz4", "zstd", "none"] = Field(
        "pcodec",
        description="Compression of trajectory chunks. pcodec (lossless, numerical; stores it "
        "writes need numcodecs and pcodec to read) is the default since it compresses real "
        "trajectories best; blosc-zstd was the default before.",
    )
    level: int | None = Field(
        None,
        ge=0,
        le=12,
        description="Compression level: pcodec 0-12 (default 8), blosc and zstd 0-9 (default 5).",
    )
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] | None = Field(
        None, description="Blosc shuffle filter (blosc codecs only; default: shuffle)."
    )
    delta: int | None = Field(
        None,
        ge=0,
        le=7,
        description="pcodec only: delta encoding order along each stored series (with transpose, "
        "a coordinate's time series): 0 none, 1 consecutive differences, 2 differences of those, "
        "...; default: pcodec picks per chunk.",
    )
    lossy: Literal["none", "bf16"] = Field(
        "none",
        description="Lossy rounding before compression: bf16 rounds every weight to bfloat16 "
        "precision (8 significant bits, relative error <= 2^-8; zarr BitRound(keepbits=7)), "
        "still read as float32. Never the default; 'lohp inspect' shows a lossy store.",
    )
    chunk_steps: int = Field(
        64, ge=1, description="Recorded states per chunk (time axis); default: a run in one chunk."
    )
    chunk_runs: int | None = Field(
        None,
        ge=1,
        description="Runs per chunk (run axis of a block's weights); default: as many as fit in "
        "about 1 MiB of raw float32 at chunk_steps states (at least 1, at most the block).",
    )
    transpose: bool = Field(
        True,
        description="Store each chunk coordinate-major (zarr TransposeCodec), so each "
        "coordinate's time series is contiguous: better ratio, and pcodec's delta runs along time.",
    )
    checksum: bool = Field(
        True,
        description="End every chunk with a crc32c checksum (zarr v3 codec): damage is detected.",
    )

    @model_validator(mode="after")
    def _options_fit_the_codec(self) -> StoreCodecConfig:
        c = self.codec
        if self.level is not None:
            if c == "none":
                raise ValueError(f"level={self.level} needs a compressor; codec is 'none'")
            top = CODEC_LEVELS[c][0]
            if self.level > top:
                raise ValueError(f"level={self.level} is out of range for {c}; use 0-{top}")
        if self.shuffle is not None and not c.startswith("blosc"):
            raise ValueError(
                f"shuffle={self.shuffle!r} is a blosc option; codec is {c!r} (use blosc-zstd or "
                "blosc-lz4, or leave shuffle out)"
            )
        if self.delta is not None and c != "pcodec":
            raise ValueError(
                f"delta={self.delta} is a pcodec option; codec is {c!r} (use codec = 'pcodec' or "
                "leave delta out)"
            )
        if self.lossy != "none" and c == "none":
            raise ValueError(
                f"lossy={self.lossy!r} only saves space with a compressor; codec is 'none'"
            )
        return self

    @property
    def resolved_level(self) -> int | None:
        """The compression level used: ``level``, else the codec's default (None for none)."""
        if self.codec == "none":
            return None
        return CODEC_LEVELS[self.codec][1] if self.level is None else self.level

    @property
    def resolved_shuffle(self) -> str | None:
        """The blosc shuffle used (None for other codecs)."""
        if not self.codec.startswith("blosc"):
            return None
        return self.shuffle or "shuffle"


class CollectConfig(ConfigModel):
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
    seed: Seed = Field(0, description="Base seed; per-run seeds derive from it.")
    init: Literal["per_run", "shared"] = Field(
        "per_run",
        description="Where each run starts: per_run (θ₀ drawn from the run's own seed) or shared "
        "(every run of the store starts from one θ₀, drawn once and saved in the store, so the "
        "hidden units of all runs stay aligned; generation and evaluate start from it too).",
    )
    init_seed: Seed | None = Field(
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
    scheduler: str | None = Field(
        None,
        description="Fan the runs out over a Dask distributed cluster: 'local:N' (N worker "
        "processes on this machine) or a scheduler address such as 'tcp://HOST:PORT'; the store "
        "must be a path or URL every worker reaches. Needs pip install 'lohp[cluster]'.",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:i.")
    repair: bool = Field(
        False,
        description="Check the whole store first and redo what is damaged with the store's own "
        "settings (settings given explicitly win): unreadable group metadata, task conditions, "
        "runs (chunks, attributes, disagreement with the run index); then collect as usual.",
    )

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

    @field_validator("scheduler")
    @classmethod
    def _scheduler_form(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v:
            check_scheduler_address(v)
            return v
        n = v.removeprefix("local:")
        if v.startswith("local:") and n.isdigit() and int(n) >= 1:
            return v
        raise ValueError(f"'{v}' is neither local:N (N >= 1) nor an address like tcp://HOST:PORT")

    @model_validator(mode="after")
    def _scheduler_owns_the_workers(self) -> CollectConfig:
        if self.scheduler is not None and self.workers > 1:
            raise ValueError(
                f"workers={self.workers} with scheduler={self.scheduler}: the cluster's workers "
                "run the runs; drop --workers (use --scheduler local:N for N local processes)"
            )
        return self

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
