"""The `monitoring` section: windows, thresholds, alert rules, webhook and the feedback loop."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from ray_pipeline.config.base import StrictModel, join
from ray_pipeline.errors import UserError

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
    "accuracy": "share of served classes that match the label (multiclass)",
    "macro_f1": "F1 of the served classes averaged over classes (multiclass)",
    "rmse": "root mean squared error of the served values (regression)",
    "mae": "mean absolute error of the served values (regression)",
    "r2": "coefficient of determination of the served values (regression)",
    "error_ratio": "live error over the version's test error: log-loss (binary), error rate (multiclass), RMSE (regression)",
    "mean_score": "mean served score (binary)",
    "positive_rate": "share of positive labels (binary)",
    "roc_auc_drop": "the version's test ROC AUC minus the live one (binary)",
    "mean_score_gap": "absolute difference of the mean served score and the positive rate (binary)",
    "relative_log_loss": "live log-loss over that of a constant prediction at the window's positive rate (binary; "
    "1 = no better than knowing the base rate)",
    "relative_log_loss_ratio": "relative_log_loss over the same figure on the version's test split (binary)",
    "challenger_gain": "share of the champion's live log-loss (binary) or RMSE (regression) a shadow version saves "
    "on the same labeled rows (feature = vVERSION/shadow)",
    # quality estimated from the scores before labels arrive (feature = vVERSION; binary; monitor.estimate)
    "estimated_roc_auc": "ROC AUC expected from the calibrated scores (confidence-based estimation)",
    "estimated_log_loss": "log-loss expected from the calibrated scores (confidence-based estimation)",
    "estimated_roc_auc_error": "estimated minus realized ROC AUC, once the window's labels are in",
    "estimated_log_loss_error": "estimated minus realized log-loss, once the window's labels are in",
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


class NewLabelsTrigger(StrictModel):
    """Continuous training: retrain when enough new labels arrived, whatever the alerts say."""

    labels: int | None = Field(default=None, ge=1, description="Retrain every this many labels ingested since "
                               "the last retrain.")
    windows: int | None = Field(default=None, ge=1, description="Retrain every this many processed windows that "
                                "held labeled predictions.")

    @model_validator(mode="after")
    def _one(self) -> NewLabelsTrigger:
        if self.labels is None and self.windows is None:
            raise UserError("new_labels: give labels (every N labels) or windows (every K labeled windows)")
        return self


class ScheduleTrigger(StrictModel):
    """Retrain on a calendar: every interval of the monitor's window clock (the prediction log's time)."""

    every_s: float = Field(gt=0, description="Interval between scheduled retrains, in seconds of window time.")


class TriggersConfig(StrictModel):
    """What starts a feedback retrain; any trigger that holds starts one (each judged by the same gates)."""

    rules: list[str] = Field(default_factory=list, description="Alert rules whose firing starts a retrain.")
    new_labels: NewLabelsTrigger | None = Field(default=None, description="Continuous training on new labels.")
    schedule: ScheduleTrigger | None = Field(default=None, description="Retrain every interval of window time.")


class FeedbackConfig(StrictModel):
    """The feedback loop: retrain on recent labeled traffic, gate, promote."""

    triggers: TriggersConfig = Field(default_factory=TriggersConfig)
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
    race_windows: int = Field(
        default=4, ge=0, description="A challenger the holdout cannot separate from the champion (not surely "
        "better, not surely worse) races it in shadow for up to this many windows, its paired per-row loss "
        "decided by an anytime-valid confidence sequence; 0: refuse it at once. Binary and regression.",
    )
    refit: bool = Field(
        default=True, description="After a promotion, refit the promoted recipe (model kind and settings) on every "
        "labeled row, the judging window included, and serve that: the gates judge the recipe, and without the "
        "refit the served model never learns from the newest window.",
    )
    warm_start: bool = Field(
        default=False, description="Also retrain a challenger from the champion itself, beside the fresh ones: "
        "XGBoost continues boosting on the rows newer than its training data, the linear model starts from its "
        "weights; both on the champion's feature encodings. The gates judge warm and fresh alike (and the record "
        "says which won): cheap frequent retrains that keep what the champion learned.",
    )
    hyperparameters: Literal["champion", "search"] = Field(
        default="champion",
        description="champion: a model kind retrains with the champion's searched parameters when the champion is "
        "that kind and came from a search (else with training's); search: a small search on Ray Tune per kind, "
        "its best trial the challenger.",
    )
    search_trials: int = Field(default=8, ge=1, description="hyperparameters: search: trials per model kind.")
    search_time_budget_s: float = Field(
        default=600, gt=0, description="hyperparameters: search: the search stops starting trials after this."
    )


class MonitoringConfig(StrictModel):
    """Monitoring of the prediction log, alert rules and the feedback loop."""

    root: str = Field(default="monitoring", description="Monitoring table, state, reports, alerts, labels.")
    window_s: float = Field(default=3600.0, gt=0, description="Length of a monitoring window.")
    grace_s: float = Field(
        default=10.0, ge=0, description="Wait after a window ends before reading it (replicas flush their logs)."
    )
    min_rows: int = Field(default=30, ge=1, description="Windows with fewer rows get no verdict and advance no "
                          "alert rule (they neither fire nor resolve one).")
    stale_windows: int = Field(default=3, ge=1, description="A firing alert whose rule has no value (no traffic, "
                               "too few rows) for this many windows in a row resolves as stale.")
    calibration_windows: int = Field(default=3, ge=1, description="Newest labeled windows of a version that its "
                                     "quality estimates are calibrated on.")
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
        return join(self.root, "table")

    @property
    def state(self) -> str:
        """The monitor's persisted position and rule state."""
        return join(self.root, "state.json")

    @property
    def active_alerts(self) -> str:
        """JSON list of firing alerts, read by serving replicas for GET /model."""
        return join(self.root, "alerts/active.json")

    @property
    def alert_log(self) -> str:
        """Append-only JSON lines: every alert that fired or resolved."""
        return join(self.root, "alerts/log.jsonl")

    @property
    def reports(self) -> str:
        """One HTML report (with PNG plots) per window."""
        return join(self.root, "reports")

    @property
    def labels(self) -> str:
        """Accepted labels (Parquet) and their quarantine."""
        return join(self.root, "labels")

    @property
    def feedback_runs(self) -> str:
        """Feedback runs' records and the keys of the labeled rows each fed back."""
        return join(self.root, "feedback")

    @model_validator(mode="after")
    def _check_names(self) -> MonitoringConfig:
        names = [r.name for r in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UserError(f"rules: repeated rule names {repeated}")
        unknown = sorted(set(self.feedback.triggers.rules) - set(names))
        if unknown:
            raise UserError(f"feedback.triggers.rules names unknown rules {unknown}; defined rules: {sorted(names)}")
        bad = sorted(set(self.thresholds) - set(MONITOR_METRICS))
        if bad:
            raise UserError(f"thresholds: unknown metrics {bad}")
        return self
