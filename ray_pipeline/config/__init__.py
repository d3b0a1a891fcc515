"""pipeline.yaml as pydantic models, one module per section: the one place where defaults live;
unknown keys are rejected. `load_config` reads a file and makes every path in it absolute, once."""

from __future__ import annotations

from ray_pipeline.config.base import ConfigError, StrictModel, as_utc, join
from ray_pipeline.config.data import (
    DEFAULT_NULL_VALUES,
    DataConfig,
    DuplicatesConfig,
    FeatureColumn,
    FileFormat,
    LabelMapping,
    LabelValue,
    OutputConfig,
    SchemaConfig,
    SourceConfig,
    ValidationConfig,
)
from ray_pipeline.config.synthetic import DriftConfig, ShiftConfig, SyntheticConfig
from ray_pipeline.config.features import (
    AggregateName,
    CategoricalFeatureConfig,
    FeatureViewConfig,
    FeaturesConfig,
    NumericFeatureConfig,
    OnlineStoreConfig,
)
from ray_pipeline.config.training import LogRegConfig, SplitConfig, TrainingConfig, XGBoostTrainConfig
from ray_pipeline.config.registry import GateRule, GateTestConfig, RegistryConfig
from ray_pipeline.config.serving import AutoscalingConfig, ServingConfig, TrafficConfig
from ray_pipeline.config.monitoring import (
    AlertRule,
    DriftThreshold,
    FeedbackConfig,
    MONITOR_METRICS,
    MonitoringConfig,
    WebhookConfig,
)
from ray_pipeline.config.console import ConsoleConfig
from ray_pipeline.config.pipeline import PipelineConfig
from ray_pipeline.config.load import load_config, parse_config

__all__ = [
    "AggregateName",
    "AlertRule",
    "AutoscalingConfig",
    "ConsoleConfig",
    "CategoricalFeatureConfig",
    "ConfigError",
    "DEFAULT_NULL_VALUES",
    "DataConfig",
    "DriftConfig",
    "DriftThreshold",
    "DuplicatesConfig",
    "FeatureColumn",
    "FeatureViewConfig",
    "FeaturesConfig",
    "FeedbackConfig",
    "FileFormat",
    "GateRule",
    "GateTestConfig",
    "LabelMapping",
    "LabelValue",
    "LogRegConfig",
    "MONITOR_METRICS",
    "MonitoringConfig",
    "NumericFeatureConfig",
    "OnlineStoreConfig",
    "OutputConfig",
    "PipelineConfig",
    "RegistryConfig",
    "SchemaConfig",
    "ServingConfig",
    "ShiftConfig",
    "SourceConfig",
    "SplitConfig",
    "StrictModel",
    "SyntheticConfig",
    "TrafficConfig",
    "TrainingConfig",
    "ValidationConfig",
    "WebhookConfig",
    "XGBoostTrainConfig",
    "as_utc",
    "join",
    "load_config",
    "parse_config",
]
