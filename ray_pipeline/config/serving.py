"""The `serving` section: HTTP, batching, autoscaling, traffic split, prediction log."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from ray_pipeline.config.base import StrictModel
from ray_pipeline.errors import UserError


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
    explain_method: Literal["treeshap", "saabas"] = Field(
        default="treeshap",
        description="XGBoost per-request explanations: treeshap (exact Shapley values) or saabas (path "
        "attribution, several times cheaper per row; both add up to the margin). Linear models are exact either way.",
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key; unset means no auth."
    )
    prediction_log: str = Field(default="predictions", description="Directory of the prediction log (Parquet).")
    log_flush_rows: int = Field(default=1000, ge=1)
    log_flush_s: float = Field(default=5.0, gt=0)
    on_invalid: Literal["flag", "refuse"] = Field(
        default="flag", description="A record that ingest would quarantine for a value out of its column's min/max "
        "or outside its category list: flag answers it with that status (out_of_range, unknown_category; counted and "
        "logged), refuse answers 422 naming the field and the rule. A value of the wrong type (1.5 for an integer "
        "input) is refused either way.",
    )


# Metric names the monitor writes (monitor/stats.py); alert rules may only name these.
