"""pipeline.yaml as pydantic models: the one place where defaults live; unknown keys are rejected."""

from __future__ import annotations

import hashlib
import json
import types
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_pipeline.errors import UserError


class ConfigError(UserError):
    """A pipeline.yaml that cannot be used; the message names the file, the key and what was expected."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------------------------
# data section
# ---------------------------------------------------------------------------------------------

FileFormat = Literal["csv", "parquet", "json"]
DEFAULT_NULL_VALUES = ["", "null", "NULL", "None", "NaN", "nan"]


class SourceConfig(StrictModel):
    """Where raw data comes from."""

    path: str = Field(description="Local file or directory, glob, or pyarrow-filesystem URI.")
    format: FileFormat | None = Field(
        default=None, description="csv, parquet or json (JSON lines); inferred from extensions if unset."
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NULL_VALUES),
        description="Text values read as missing in CSV files.",
    )
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)


class FeatureColumn(StrictModel):
    """One typed feature column with its allowed values."""

    type: Literal["float", "int", "category"]
    min: float | None = Field(default=None, description="Smallest allowed value (numeric only).")
    max: float | None = Field(default=None, description="Largest allowed value (numeric only).")
    categories: list[str] | None = Field(
        default=None, description="Allowed values (category only); unset allows any value."
    )
    nullable: bool = Field(default=True, description="Missing values allowed (imputed later).")
    seasonal: bool = Field(
        default=False,
        description="A calendar or seasonal input (month, weekday, hour, year, a temperature, ...): its drift "
        "is reported but no rule without a feature fires on it (a month outside the training range is the "
        "calendar moving on, not a fault).",
    )
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> "FeatureColumn":
        if self.type == "category" and (self.min is not None or self.max is not None):
            raise UserError("min/max apply to numeric columns, not to type 'category'")
        if self.type != "category" and self.categories is not None:
            raise UserError(f"categories apply to type 'category', not to type '{self.type}'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise UserError(f"min ({self.min}) is greater than max ({self.max})")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise UserError("categories has repeated values")
        return self


LabelValue = str | int | float | bool


class LabelMapping(StrictModel):
    """How the label column becomes the binary target (1 = positive).

    Plain `label: COLUMN` means the column already holds 0/1 (or true/false). `positive` lists
    the values that count as 1 (`negative` the ones that count as 0; unset: every other value);
    `threshold` makes a numeric column positive when it is greater than the threshold. A value
    that fits neither side goes to the quarantine.
    """

    column: str
    positive: list[LabelValue] | None = Field(default=None, min_length=1, description="Values that mean label 1.")
    negative: list[LabelValue] | None = Field(
        default=None, min_length=1, description="Values that mean label 0; unset: every value not positive."
    )
    threshold: float | None = Field(default=None, description="Numeric label: 1 when the value is greater.")

    @model_validator(mode="after")
    def _one_rule(self) -> "LabelMapping":
        if self.positive is not None and self.threshold is not None:
            raise UserError("give positive (values) or threshold (numeric), not both")
        if self.negative is not None and self.positive is None:
            raise UserError("negative needs positive")
        both = set(map(str, self.positive or [])) & set(map(str, self.negative or []))
        if both:
            raise UserError(f"values listed as both positive and negative: {sorted(both)}")
        return self

    @property
    def positive_text(self) -> list[str]:
        """Positive values as the text they are compared as."""
        return [_label_text(x) for x in self.positive or []]

    @property
    def negative_text(self) -> list[str] | None:
        """Negative values as text, or None when every other value is negative."""
        return None if self.negative is None else [_label_text(x) for x in self.negative]

    def describe(self) -> str:
        """One line for people: what label 1 means."""
        if self.threshold is not None:
            return f"{self.column} > {self.threshold:g}"
        if self.positive is not None:
            return f"{self.column} in {self.positive_text}"
        return f"{self.column} == 1"


def _label_text(value: LabelValue) -> str:
    # YAML reads yes/true as booleans and 1 as an int; the data's text is what gets compared.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class SchemaConfig(StrictModel):
    """The columns a dataset must have: a binary label and features; an entity key, event time and
    split column when the table has them."""

    entity_key: str | None = Field(
        default=None, description="Entity id column; needed for feature views and online lookups."
    )
    entity_type: Literal["int", "str"] = "int"
    event_timestamp: str | None = Field(
        default=None, description="Event time column; the split is by time when set, random otherwise."
    )
    split_column: str | None = Field(
        default=None, description="Column holding train / valid / test: the split is taken from it."
    )
    label_mapping: LabelMapping = Field(alias="label")
    features: dict[str, FeatureColumn] = Field(min_length=1)

    @field_validator("label_mapping", mode="before")
    @classmethod
    def _plain_label(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_names(self) -> "SchemaConfig":
        special = [c for c in (self.entity_key, self.event_timestamp, self.label, self.split_column) if c]
        if len(set(special)) != len(special):
            raise UserError("entity_key, event_timestamp, label and split_column must be different columns")
        clash = sorted(set(special) & set(self.features))
        if clash:
            raise UserError(f"features repeat a key/timestamp/label/split column: {clash}")
        bad = sorted(name for name in self.features if name.startswith("_"))
        if bad:
            raise UserError(f"feature names may not start with '_' (reserved): {bad}")
        return self

    @property
    def label(self) -> str:
        """The label column's name (holding 0/1 after ingest)."""
        return self.label_mapping.column

    @property
    def keys(self) -> list[str]:
        """The entity key and event time columns that are set, in that order."""
        return [c for c in (self.entity_key, self.event_timestamp) if c]

    @property
    def columns(self) -> list[str]:
        """Every schema column in a fixed order: key, timestamp, label, split, features."""
        return [*self.keys, self.label, *([self.split_column] if self.split_column else []), *self.features]


class DuplicatesConfig(StrictModel):
    """Duplicate-row detection: later copies go to quarantine."""

    enabled: bool = False
    keys: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Columns that identify a row (schema or extra columns); unset means every schema column.",
    )


class ValidationConfig(StrictModel):
    """Row-level checks beyond the schema's types, ranges and categories."""

    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    extra_columns: Literal["keep", "drop", "reject"] = Field(
        default="keep", description="Columns not in the schema: pass through, drop, or stop the run."
    )


class OutputConfig(StrictModel):
    """Where ingestion writes accepted rows, quarantined rows and its summary."""

    root: str = Field(description="Directory or URI; accepted/, quarantine/ and summary.json go here.")

    @property
    def accepted(self) -> str:
        """Accepted rows (Parquet), read by the feature stage."""
        return _join(self.root, "accepted")

    @property
    def quarantine(self) -> str:
        """Rejected rows with their original values and a reason (Parquet)."""
        return _join(self.root, "quarantine")

    @property
    def summary(self) -> str:
        """Counts of the last ingest run (JSON)."""
        return _join(self.root, "summary.json")

    @property
    def feedback(self) -> str:
        """Labeled traffic the feedback loop turned into accepted rows (kept across ingest runs)."""
        return _join(self.root, "feedback")


class DataConfig(StrictModel):
    """The data section: source, schema, validation, output."""

    source: SourceConfig
    schema_: SchemaConfig = Field(alias="schema")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    output: OutputConfig


# ---------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------


def as_utc(value: datetime) -> datetime:
    """`value` in UTC: naive times (CLI options, config) are taken as UTC, never the machine's
    local zone; aware ones are converted."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class ShiftConfig(StrictModel):
    """Covariate shift of one numeric feature, in units of its latent standard deviation."""

    loc: float = 0.0
    scale: float = Field(default=1.0, gt=0)


class DriftConfig(StrictModel):
    """Changes applied to rows whose event timestamp is at or after `start`."""

    start: datetime
    covariate_shift: dict[str, ShiftConfig] = Field(default_factory=dict)
    new_categories: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Categorical column -> share of rows given unseen categories."
    )
    concept_drift: dict[str, float] = Field(
        default_factory=dict, description="Coefficient name -> its value after `start`."
    )

    _utc_start = field_validator("start")(as_utc)


class SyntheticConfig(StrictModel):
    """The synthetic transactions generator (ground truth `p_true` included)."""

    rows: int = Field(default=100_000, gt=0)
    seed: int = 0
    entities: int | None = Field(default=None, gt=0, description="Distinct customers; rows/20 if unset.")
    start: datetime = datetime(2024, 1, 1, tzinfo=timezone.utc)
    days: float = Field(default=90.0, gt=0)
    format: Literal["csv", "parquet"] = "parquet"
    chunk_rows: int = Field(default=100_000, gt=0, description="Rows per generation task; part of the seed's meaning.")
    corruption_rate: float = Field(
        default=0.0, ge=0, le=0.5, description="Share of rows turned into bad rows of known kinds."
    )
    drift: DriftConfig | None = None

    _utc_start = field_validator("start")(as_utc)


# ---------------------------------------------------------------------------------------------
# later stages: sections exist so configs can be validated end to end; each issue fills its own
# ---------------------------------------------------------------------------------------------


class NumericFeatureConfig(StrictModel):
    """How one numeric column becomes model input (all statistics come from the training data)."""

    log1p: bool = Field(default=False, description="Apply log1p first (non-negative, heavy-tailed columns).")
    impute: Literal["mean", "median"] = Field(default="mean", description="Fill for missing values.")
    missing_indicator: bool = Field(default=False, description="Add a 0/1 column that marks missing values.")
    standardize: bool = Field(default=True, description="Subtract the training mean, divide by the std.")
    clip_quantiles: tuple[float, float] | None = Field(
        default=None, description="Clip at these training quantiles, e.g. [0.001, 0.999]."
    )

    @model_validator(mode="after")
    def _check_quantiles(self) -> "NumericFeatureConfig":
        if self.clip_quantiles is not None:
            lo, hi = self.clip_quantiles
            if not 0.0 <= lo < hi <= 1.0:
                raise UserError(f"clip_quantiles must satisfy 0 <= low < high <= 1, got {list(self.clip_quantiles)}")
        return self


class CategoricalFeatureConfig(StrictModel):
    """How one categorical column becomes model input."""

    encoding: Literal["frequency", "onehot"] = Field(
        default="frequency", description="Training frequency of the category, or one 0/1 column per category."
    )
    unseen: Literal["zero", "rare", "missing"] = Field(
        default="zero", description="Value for categories not seen in training: 0, the rare bucket's, or missing's."
    )
    missing: Literal["own", "zero"] = Field(
        default="own", description="Value for nulls and empty strings: their own training frequency, or 0."
    )
    min_count: int = Field(default=1, ge=1, description="Categories seen fewer times share one rare bucket.")
    max_onehot: int = Field(default=20, ge=1, description="One-hot keeps at most this many categories (most frequent).")


class OnlineStoreConfig(StrictModel):
    """Where materialized feature values are served from."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = Field(default="online.db", description="SQLite file (relative to the store root's config dir).")
    url: str = Field(default="redis://localhost:6379/0", description="Redis URL (backend: redis).")


AggregateName = Literal["count", "mean", "sum", "min", "max"]


class FeatureViewConfig(StrictModel):
    """Feast-style feature view: entity-keyed, timestamped feature values with a time-to-live.

    Either `daily_aggregates` computes the view from the accepted events (per entity and UTC
    day, known at the end of that day), or `source` names Parquet rows that already hold
    `entity`, `timestamp` and `features`.
    """

    entity: str
    timestamp: str = Field(default="feature_ts", description="Column with the time a value became known.")
    source: str = Field(default="accepted", description="'accepted' (ingest output) or a Parquet path/URI.")
    daily_aggregates: dict[str, list[AggregateName]] | None = Field(
        default=None, description="Column -> aggregates per entity and day, e.g. {amount: [mean, max]}."
    )
    features: list[str] | None = Field(default=None, description="Feature columns of a ready-made source.")
    ttl_seconds: float | None = Field(default=None, gt=0, description="Values older than this are not used.")

    @model_validator(mode="after")
    def _one_definition(self) -> "FeatureViewConfig":
        if (self.daily_aggregates is None) == (self.features is None):
            raise UserError("give exactly one of daily_aggregates or features")
        return self

    @property
    def feature_names(self) -> list[str]:
        """The view's feature columns, in a fixed order."""
        if self.daily_aggregates is not None:
            return [f"{col}_{fn}_1d" for col, fns in self.daily_aggregates.items() for fn in fns]
        return list(self.features or [])


class FeaturesConfig(StrictModel):
    """Feature processing (fit/transform) and the feature store."""

    numeric: dict[str, NumericFeatureConfig] = Field(
        default_factory=dict, description="Per-column settings; numeric schema columns not listed get the defaults."
    )
    categorical: dict[str, CategoricalFeatureConfig] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list, description="Schema features not given to models.")
    store_root: str = Field(default="features", description="Offline store directory or URI.")
    views: dict[str, FeatureViewConfig] = Field(default_factory=dict)
    online: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)


class SplitConfig(StrictModel):
    """Train / validation / test: by event time (test latest), at random stratified by label, or
    from data.schema.split_column when that is set."""

    by: Literal["auto", "time", "random"] = Field(
        default="auto", description="auto: by time when data.schema.event_timestamp is set, else random."
    )
    valid_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = Field(default=0, description="Seed of the random split (same seed, same rows in each split).")


class LogRegConfig(StrictModel):
    """Logistic regression (binary cross-entropy) by data-parallel optimisation on Ray Train."""

    optimizer: Literal["auto", "gd", "sgd", "adam", "newton", "lbfgs"] = Field(
        default="auto",
        description="auto: newton up to 500 features, else lbfgs (full batch, second order, tens of "
        "passes; benchmarks/train.py). gd: theta <- theta - alpha * grad L, full batch. sgd (momentum) "
        "and adam: mini-batch.",
    )
    learning_rate: float = Field(default=1.0, gt=0)
    lr_schedule: Literal["constant", "inverse_time", "cosine"] = "constant"
    epochs: int = Field(default=300, ge=1, description="Passes (newton, lbfgs: at most this many iterations).")
    batch_size: int = Field(default=8192, ge=1, description="Global mini-batch size (sgd, adam).")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    l2: float = Field(default=1e-4, ge=0, description="Penalty l2/2 * ||w||^2 on the mean loss (bias not penalised).")
    class_weight: Literal["balanced"] | dict[int, float] | None = None
    early_stopping_patience: int = Field(default=20, ge=1, description="Epochs without validation improvement.")
    tol: float = Field(default=1e-7, ge=0, description="Smallest validation-loss decrease that counts.")
    gtol: float = Field(default=1e-8, gt=0, description="newton, lbfgs: stop when every gradient entry is this small.")
    memory: int = Field(default=10, ge=1, description="lbfgs: curvature pairs kept.")
    seed: int = 0


class XGBoostTrainConfig(StrictModel):
    """Distributed XGBoost (binary:logistic, hist)."""

    num_boost_round: int = Field(default=300, ge=1)
    early_stopping_rounds: int = Field(default=20, ge=1)
    eval_train: bool = Field(
        default=False, description="Also record the train-set log-loss each round (~10% slower per round)."
    )
    params: dict[str, float | int | str] = Field(
        default_factory=lambda: {"max_depth": 6, "eta": 0.1, "subsample": 1.0, "min_child_weight": 1.0}
    )


class TrainingConfig(StrictModel):
    """Distributed training on Ray Train."""

    run_root: str = Field(default="runs", description="Directory or URI for runs and checkpoints.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    workers: int = Field(default=2, ge=0, description="Ray Train workers (0 runs the loop in-process).")
    in_process_max_rows: int = Field(
        default=100_000,
        ge=0,
        description="Training sets with at most this many train rows run in-process (Ray Train local mode: "
        "no worker processes, ~0.03 s instead of ~4.5-5.5 s of start-up; no restarts); 0 = always use `workers`. "
        "An explicit --workers wins.",
    )
    cpus_per_worker: float = Field(default=0.5, gt=0, description="Fractional CPUs leave room for Ray Data.")
    checkpoint_every: int = Field(
        default=25,
        ge=1,
        description="Epochs or rounds between checkpoints (each costs a Ray Train report, ~1.6 s measured).",
    )
    max_failures: int = Field(default=1, ge=0, description="Worker-group restarts allowed before the run fails.")
    logreg: LogRegConfig = Field(default_factory=LogRegConfig)
    xgboost: XGBoostTrainConfig = Field(default_factory=XGBoostTrainConfig)


class GateRule(StrictModel):
    """One metric's promotion rule, relative to the current alias holder (fractions, e.g. 0.01 = 1%)."""

    min_improvement: float = Field(default=0.0, ge=0, description="Required relative improvement.")
    max_regression: float | None = Field(default=None, ge=0, description="Allowed relative regression.")


class GateTestConfig(StrictModel):
    """How a feedback retrain's gates compare challenger and champion on the same holdout rows: a
    paired bootstrap of the per-row loss (and of the AUC), so a tie or noise never passes."""

    resamples: int = Field(default=1000, ge=100, description="Bootstrap resamples of the holdout rows.")
    level: float = Field(default=0.95, gt=0.5, lt=1, description="Two-sided confidence level of the interval.")
    seed: int = Field(default=0, description="Seed of the resampling (same rows, same interval).")


class RegistryConfig(StrictModel):
    """Model registry: metadata in SQLite or PostgreSQL, plus an artifact directory."""

    db_path: str = Field(default="registry.db", description="SQLite file with versions, aliases and history.")
    db_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database, e.g. postgresql+psycopg://user@host/db "
        "(every node must reach it); unset: SQLite at db_path.",
    )
    artifact_root: str = Field(default="artifacts", description="Directory holding one folder per version.")
    model_name: str = Field(default="model", pattern=r"^[A-Za-z0-9_.-]+$")
    gates: dict[str, GateRule] = Field(
        default_factory=lambda: {"log_loss": GateRule(min_improvement=0.0), "roc_auc": GateRule(max_regression=0.01)},
        description="Metric -> rule; lower is better for log_loss, brier, calibration_error. min_improvement: "
        "the candidate must be strictly better by more than this (on a holdout: the interval's lower bound "
        "is); max_regression: non-inferiority, the candidate may be worse by at most this.",
    )
    gate_test: GateTestConfig = Field(default_factory=GateTestConfig)


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of the model deployment."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=2.0, ge=0)
    downscale_delay_s: float = Field(default=30.0, ge=0)
    look_back_period_s: float = Field(default=30.0, gt=0, description="Window the ongoing-request average covers.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise UserError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class TrafficConfig(StrictModel):
    """Traffic to a second registry alias next to the served one (Ray Serve has no traffic split)."""

    mode: Literal["off", "canary", "shadow"] = Field(
        default="off",
        description="canary: answer a share of requests from the challenger; "
        "shadow: answer from the champion and also score every request with the challenger.",
    )
    challenger_alias: str = "challenger"
    canary_share: float = Field(
        default=0.1, ge=0, le=1, description="canary: share of requests the challenger answers."
    )


class ServingConfig(StrictModel):
    """Ray Serve application: HTTP API, batching, autoscaling, reload, prediction log."""

    alias: str = Field(default="champion", description="Registry alias the model deployment serves.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"
    app_name: str = "ray-pipeline"
    max_batch_size: int = Field(default=32, ge=1, description="Dynamic batching: most requests per batch.")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, description="Dynamic batching: longest wait.")
    max_records_per_request: int = Field(default=1000, ge=1, description="Larger requests get 413.")
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=256, ge=-1, description="Beyond this, requests get 503 at once.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    reload_poll_s: float = Field(default=1.0, gt=0, description="How often replicas check the alias.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key; unset means no auth."
    )
    prediction_log: str = Field(default="predictions", description="Directory of the prediction log (Parquet).")
    log_flush_rows: int = Field(default=1000, ge=1)
    log_flush_s: float = Field(default=5.0, gt=0)


# Metric names the monitor writes (monitor/stats.py); alert rules may only name these.
MONITOR_METRICS = {
    # drift per input (feature = column) and of the scores (feature = "score")
    "psi": "population stability index on the reference's quantile bins",
    "ks": "Kolmogorov-Smirnov statistic on the reference bins (numeric inputs, scores)",
    "js": "Jensen-Shannon distance of the binned distributions (numeric inputs, scores)",
    "wasserstein": "Wasserstein-1 distance over the reference std (numeric inputs)",
    "chi2": "chi-square statistic, top categories + other (categorical inputs)",
    "chi2_p": "chi-square p-value (categorical inputs)",
    "linf": "largest absolute change of a category's share (categorical inputs)",
    "unseen_rate": "share of values the model never saw in training (categorical inputs)",
    # data quality
    "null_rate": "share of missing values",
    "null_rate_change": "null_rate minus the reference's null rate",
    "out_of_range_rate": "share of values outside the reference's [min, max] (numeric inputs)",
    "rows": "predictions logged in the window (feature = all)",
    "refused": "requests refused by the API (feature = HTTP status)",
    # latency (feature = stage)
    "latency_p50_ms": "median per-request latency of a stage",
    "latency_p99_ms": "99th percentile per-request latency of a stage",
    # live quality once labels arrived (feature = vVERSION/VARIANT)
    "labeled_rows": "predictions with a label",
    "log_loss": "binary cross-entropy of the served scores",
    "roc_auc": "ROC AUC of the served scores",
    "calibration_error": "expected calibration error of the served scores",
    "log_loss_ratio": "live log-loss over the model's test log-loss at registration",
}


class DriftThreshold(StrictModel):
    """Verdict thresholds of one drift metric: below `warn` ok, below `alert` warn, else drift."""

    warn: float = Field(ge=0)
    alert: float = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> DriftThreshold:
        if self.warn > self.alert:
            raise UserError(f"warn ({self.warn}) is above alert ({self.alert})")
        return self


def _default_thresholds() -> dict[str, DriftThreshold]:
    return {"psi": DriftThreshold(warn=0.1, alert=0.25)}


class AlertRule(StrictModel):
    """One alert rule, evaluated on every window's monitoring rows."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    metric: str = Field(description="A monitoring metric, e.g. psi, null_rate_change, log_loss_ratio.")
    feature: str | None = Field(
        default=None, description="Only this feature / stage / version; unset means the worst of all rows."
    )
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    for_windows: int = Field(default=1, ge=1, description="Consecutive windows the condition must hold to fire.")
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = ""

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in MONITOR_METRICS:
            raise UserError(f"unknown metric {value!r}; expected one of: {', '.join(sorted(MONITOR_METRICS))}")
        return value


class WebhookConfig(StrictModel):
    """Alert notifications as JSON POSTs (retried with backoff on a background thread)."""

    url: str
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles each retry.")
    format: Literal["json", "alertmanager"] = Field(
        default="json", description="json: our alert events; alertmanager: Alertmanager v2 /api/v2/alerts body."
    )


class FeedbackConfig(StrictModel):
    """The feedback loop: retrain on recent labeled traffic, gate, promote."""

    rules: list[str] = Field(default_factory=list, description="Alert rules whose firing starts a retrain.")
    min_labeled_rows: int = Field(default=500, ge=1)
    min_new_labels: int = Field(
        default=200, ge=1, description="Labels ingested since the last retrain that a new retrain needs."
    )
    cooldown_s: float = Field(default=3600.0, ge=0, description="Shortest time between two automatic retrains.")
    models: list[Literal["logreg", "xgboost"]] = Field(default_factory=lambda: ["logreg"], min_length=1)
    holdout_windows: int = Field(
        default=1, ge=1, description="Most recent complete labeled windows kept out of training to compare the "
        "models; everything labeled before them trains (validation: a random slice of it)."
    )
    lookback_s: float | None = Field(
        default=None, gt=0, description="Train on events this recent (before the newest labeled one); unset: all."
    )
    promote: bool = Field(default=True, description="Promote a challenger that passes the gates to the served alias.")


class MonitoringConfig(StrictModel):
    """Monitoring of the prediction log, alert rules and the feedback loop."""

    root: str = Field(default="monitoring", description="Monitoring table, state, reports, alerts, labels.")
    window_s: float = Field(default=3600.0, gt=0, description="Length of a monitoring window.")
    grace_s: float = Field(
        default=10.0, ge=0, description="Wait after a window ends before reading it (replicas flush their logs)."
    )
    min_rows: int = Field(default=30, ge=1, description="Windows with fewer rows get no drift verdict.")
    bins: int = Field(default=10, ge=2, le=100, description="Quantile bins of the reference profile.")
    top_k: int = Field(default=20, ge=1, description="Categories kept by name in the reference profile.")
    thresholds: dict[str, DriftThreshold] = Field(
        default_factory=_default_thresholds, description="Metric -> warn/alert thresholds for verdicts."
    )
    feature_thresholds: dict[str, dict[str, DriftThreshold]] = Field(
        default_factory=dict, description="Per-feature overrides: feature -> metric -> thresholds."
    )
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="Serve gauges for Prometheus here.")
    rules: list[AlertRule] = Field(default_factory=list)
    webhook: WebhookConfig | None = None
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)

    # Files under `root` (resolve them with PipelineConfig.resolve, like data.output's).
    @property
    def table(self) -> str:
        """The monitoring table: Parquet, one row per window and metric."""
        return _join(self.root, "table")

    @property
    def state(self) -> str:
        """The monitor's persisted position and rule state."""
        return _join(self.root, "state.json")

    @property
    def active_alerts(self) -> str:
        """JSON list of firing alerts, read by serving replicas for GET /model."""
        return _join(self.root, "alerts/active.json")

    @property
    def alert_log(self) -> str:
        """Append-only JSON lines: every alert that fired or resolved."""
        return _join(self.root, "alerts/log.jsonl")

    @property
    def reports(self) -> str:
        """One HTML report (with PNG plots) per window."""
        return _join(self.root, "reports")

    @property
    def labels(self) -> str:
        """Accepted labels (Parquet) and their quarantine."""
        return _join(self.root, "labels")

    @property
    def feedback_runs(self) -> str:
        """Feedback runs' records and the keys of the labeled rows each fed back."""
        return _join(self.root, "feedback")

    @model_validator(mode="after")
    def _check_names(self) -> MonitoringConfig:
        names = [r.name for r in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UserError(f"rules: repeated rule names {repeated}")
        unknown = sorted(set(self.feedback.rules) - set(names))
        if unknown:
            raise UserError(f"feedback.rules names unknown rules {unknown}; defined rules: {sorted(names)}")
        bad = sorted(set(self.thresholds) - set(MONITOR_METRICS))
        if bad:
            raise UserError(f"thresholds: unknown metrics {bad}")
        return self


class PipelineConfig(StrictModel):
    """A whole pipeline.yaml."""

    data: DataConfig
    synthetic: SyntheticConfig | None = None
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    _source_file: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_feature_names(self) -> "PipelineConfig":
        schema = self.data.schema_
        view_features = [f for view in self.features.views.values() for f in view.feature_names]
        numeric = {n for n, c in schema.features.items() if c.type != "category"} | set(view_features)
        categorical = {n for n, c in schema.features.items() if c.type == "category"}
        problems = [
            ("features.numeric", sorted(set(self.features.numeric) - numeric), sorted(numeric)),
            ("features.categorical", sorted(set(self.features.categorical) - categorical), sorted(categorical)),
            ("features.exclude", sorted(set(self.features.exclude) - numeric - categorical), None),
        ]
        for key, unknown, known in problems:
            if unknown:
                hint = f"; expected any of {known}" if known else ""
                raise UserError(f"{key} names columns that are not such features: {unknown}{hint}")
        clash = sorted(set(view_features) & set(schema.columns))
        if clash:
            raise UserError(f"features.views produce columns that already exist in the data: {clash}")
        if self.features.views and not (schema.entity_key and schema.event_timestamp):
            raise UserError("features.views need data.schema.entity_key and data.schema.event_timestamp")
        if self.training.split.by == "time" and not schema.event_timestamp:
            raise UserError("training.split.by: time needs data.schema.event_timestamp")
        return self

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the file are resolved against."""
        return Path(self._source_file).parent if self._source_file else Path.cwd()

    def resolve(self, location: str) -> str:
        """A path from the config made absolute against the config file's directory; URIs unchanged."""
        if "://" in location or Path(location).is_absolute():
            return location
        return str((self.base_dir / location).resolve())

    def content_hash(self) -> str:
        """sha256 of the validated config's canonical JSON (for lineage)."""
        payload = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


# ---------------------------------------------------------------------------------------------
# loading and error messages
# ---------------------------------------------------------------------------------------------


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the key at `loc` (to list its allowed keys)."""
    current: Any = PipelineConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated so a field's model class can be found."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = arms[0] if len(arms) == 1 else tp
            if len(arms) != 1:
                return tp
        else:
            return tp


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = sorted((f.alias or n) for n, f in owner.model_fields.items()) if owner else []
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators' messages
    return f"{path}: {message} (got {shown})"


def parse_config(data: Any, source: str = "<config>") -> PipelineConfig:
    """Validate an already-parsed mapping; errors name `source` and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid pipeline config:\n{lines}") from None
    cfg._source_file = source if source != "<config>" else None
    return cfg


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    return parse_config(data, str(path.resolve()))
