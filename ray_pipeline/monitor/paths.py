"""Where monitoring keeps its files under `monitoring.root` (one place, so every stage agrees)."""

from __future__ import annotations

from ray_pipeline.config import PipelineConfig


def monitoring_root(cfg: PipelineConfig) -> str:
    """The monitoring root, resolved against the config file."""
    return cfg.resolve(cfg.monitoring.root)


def active_alerts_path(cfg: PipelineConfig) -> str:
    """JSON list of firing alerts, read by serving replicas for GET /model."""
    return f"{monitoring_root(cfg)}/alerts/active.json"


def alert_log_path(cfg: PipelineConfig) -> str:
    """Append-only JSON lines: every alert that fired or resolved."""
    return f"{monitoring_root(cfg)}/alerts/log.jsonl"


def table_path(cfg: PipelineConfig) -> str:
    """The monitoring table: Parquet, one row per window and metric."""
    return f"{monitoring_root(cfg)}/table"


def state_path(cfg: PipelineConfig) -> str:
    """The monitor's persisted position and rule state."""
    return f"{monitoring_root(cfg)}/state.json"


def reports_dir(cfg: PipelineConfig) -> str:
    """One HTML report (with PNG plots) per window."""
    return f"{monitoring_root(cfg)}/reports"


def labels_dir(cfg: PipelineConfig) -> str:
    """Accepted labels (Parquet) and their quarantine."""
    return f"{monitoring_root(cfg)}/labels"


def feedback_dir(cfg: PipelineConfig) -> str:
    """Feedback runs: records, and the labeled traffic they fed back as accepted rows."""
    return f"{monitoring_root(cfg)}/feedback"


def feedback_accepted_path(cfg: PipelineConfig) -> str:
    """Labeled traffic turned into accepted rows (read by the feature stage beside ingest's output)."""
    return f"{feedback_dir(cfg)}/accepted"
