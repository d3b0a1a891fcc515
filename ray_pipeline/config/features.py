"""The `features` section: encodings, feature views and the online store."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from ray_pipeline.config.base import StrictModel
from ray_pipeline.errors import UserError


class NumericFeatureConfig(StrictModel):
    """How one numeric column becomes model input (all statistics come from the training data)."""

    log1p: bool = Field(default=False, description="Apply log1p first (non-negative, heavy-tailed columns).")
    impute: Literal["mean", "median"] = Field(default="mean", description="Fill for missing values.")
    missing_indicator: bool = Field(default=False, description="Add a 0/1 column that marks missing values.")
    standardize: bool = Field(default=True, description="Subtract the training mean, divide by the std.")
    clip_quantiles: tuple[float, float] | None = Field(
        default=None, description="Clip at these training quantiles, e.g. [0.001, 0.999]."
    )
    cyclic: float | None = Field(
        default=None, gt=0, description="Period of a calendar input (12 for month, 24 for hour of day, 7 for "
        "weekday): encoded as sin and cos of 2*pi*value/period, so the last value sits next to the first and a "
        "value outside the training range keeps its place on the cycle (replaces log1p, clipping and scaling).",
    )

    @model_validator(mode="after")
    def _check_quantiles(self) -> "NumericFeatureConfig":
        if self.cyclic is not None and (self.log1p or self.clip_quantiles is not None):
            raise UserError("cyclic replaces log1p and clip_quantiles: set only one of them")
        if self.clip_quantiles is not None:
            lo, hi = self.clip_quantiles
            if not 0.0 <= lo < hi <= 1.0:
                raise UserError(f"clip_quantiles must satisfy 0 <= low < high <= 1, got {list(self.clip_quantiles)}")
        return self


class CategoricalFeatureConfig(StrictModel):
    """How one categorical column becomes model input."""

    encoding: Literal["frequency", "onehot", "target"] = Field(
        default="frequency",
        description="Training frequency of the category; one 0/1 column per category; or target: the frequency "
        "and the category's smoothed mean target (per class for multiclass), out of fold on the train split.",
    )
    unseen: Literal["zero", "rare", "missing"] = Field(
        default="zero", description="Value for categories not seen in training: 0, the rare bucket's, or missing's."
    )
    missing: Literal["own", "zero"] = Field(
        default="own", description="Value for nulls and empty strings: their own training frequency, or 0."
    )
    min_count: int = Field(default=1, ge=1, description="Categories seen fewer times share one rare bucket.")
    max_onehot: int = Field(default=20, ge=1, description="One-hot keeps at most this many categories (most frequent).")
    target_smoothing: float = Field(
        default=20.0, ge=0, description="target: rows' worth of weight on the overall mean in each category's mean."
    )


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
    time_parts: list[Literal["hour", "weekday", "day_of_year", "month"]] = Field(
        default_factory=list, description="Parts of data.schema.event_timestamp given to models, each cyclic (sin "
        "and cos). A request then sends the event time with each record (without one: the time of the request).",
    )
    store_root: str = Field(default="features", description="Offline store directory or URI.")
    views: dict[str, FeatureViewConfig] = Field(default_factory=dict)
    online: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)
