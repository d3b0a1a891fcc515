"""The `synthetic` section: the demo's generator and the drift it can inject."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
)

from ray_pipeline.config.base import StrictModel, as_utc


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
    """The synthetic transactions generator (ground truth included: `p_true`, or `y_true` for regression)."""

    task: Literal["binary", "multiclass", "regression"] = Field(
        default="binary",
        description="binary: label 0/1 (fraud); multiclass: outcome ok/fraud/dispute; regression: a risk score.",
    )
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
