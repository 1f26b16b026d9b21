"""Stage configs as frozen pydantic models, and how they are resolved (``resolve``).

One module per concern: ``base`` (the ``ConfigModel`` base, TOML, ``--set`` and ``resolve``),
``optim`` (optimizer hyperparameters), ``tasks`` (task family, target model), ``collect``,
``train`` (``TrainConfig`` and the Lo-Hp family, registered with :mod:`lohp_cli.trainers` when
this package is imported) and ``stages`` (generate, evaluate). Every name is importable from here.
"""

from lohp_cli.config.base import (
    SEED_MAX,
    ConfigModel,
    KeyPath,
    Seed,
    apply_sets,
    deep_merge,
    format_validation_error,
    load_toml,
    parse_value,
    resolve,
    shadowed_paths,
)
from lohp_cli.config.collect import CollectConfig, StoreCodecConfig
from lohp_cli.config.optim import (
    OPTIMIZERS,
    AdamConfig,
    OptimizersConfig,
    SAMConfig,
    SGDConfig,
    check_optimizer_names,
)
from lohp_cli.config.stages import (
    BASELINES,
    DEFAULT_BASELINES,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    MetaStartConfig,
    PredictConfig,
)
from lohp_cli.config.tasks import GlyphConfig, ModelConfig, TaskConfig
from lohp_cli.config.train import (
    DEFAULT_METHOD,
    LEGACY_TRAIN_KEYS,
    METHODS,
    LoHpTrainConfig,
    LossConfig,
    PolicyConfig,
    TrainConfig,
    stored_train_config,
)

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "DEFAULT_METHOD",
    "LEGACY_TRAIN_KEYS",
    "METHODS",
    "OPTIMIZERS",
    "AdamConfig",
    "CollectConfig",
    "EvaluateConfig",
    "ExportConfig",
    "ConfigModel",
    "SEED_MAX",
    "Seed",
    "GenerateConfig",
    "GlyphConfig",
    "KeyPath",
    "LoHpTrainConfig",
    "LossConfig",
    "MetaStartConfig",
    "ModelConfig",
    "OptimizersConfig",
    "PolicyConfig",
    "PredictConfig",
    "SAMConfig",
    "SGDConfig",
    "StoreCodecConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_sets",
    "check_optimizer_names",
    "deep_merge",
    "format_validation_error",
    "load_toml",
    "parse_value",
    "resolve",
    "shadowed_paths",
    "stored_train_config",
]
