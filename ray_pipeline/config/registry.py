"""The `registry` section: database, artifacts, gates and the paired test behind them."""

from __future__ import annotations

from pydantic import (
    Field,
)

from ray_pipeline.config.base import StrictModel


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
