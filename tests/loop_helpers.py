"""Shared pieces of the monitoring and feedback-loop tests: a small pipeline without feature views,
traffic from the generator sent window by window to the real Serve app, labels for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from ray_pipeline.config import PipelineConfig, SyntheticConfig, parse_config
from ray_pipeline.demo import replay
from ray_pipeline.runtime import free_port

FEATURES = {
    "amount": {"type": "float", "min": 0}, "distance_km": {"type": "float", "min": 0},
    "account_age_days": {"type": "int", "min": 0}, "credit_score": {"type": "int", "min": 300, "max": 850},
    "txn_count_24h": {"type": "int", "min": 0}, "avg_amount_30d": {"type": "float", "min": 0},
    "hour_of_day": {"type": "int", "min": 0, "max": 23}, "merchant_id": {"type": "category"},
    "merchant_category": {"type": "category"}, "channel": {"type": "category"}, "country": {"type": "category"},
}  # fmt: skip
INPUTS = list(FEATURES)
WINDOW_S = 3.0  # at most 2,000 rows a window, in requests as large as the endpoint takes


def loop_config(tmp: Path, shared: Path, name: str, label: str | dict = "label", logreg: dict | None = None,
                **monitoring: Any) -> PipelineConfig:  # fmt: skip
    """A pipeline over `shared` data (ingested once) with its own registry name, log and monitoring root."""
    logreg = logreg or {"optimizer": "gd", "learning_rate": 4.0, "epochs": 200}
    return parse_config(
        {
            "data": {"source": {"path": str(shared / "raw"), "format": "parquet"},
                     "schema": {"entity_key": "customer_id", "event_timestamp": "event_ts", "label": label,
                                "features": FEATURES},
                     "output": {"root": str(shared / "ingested")}},
            "features": {"store_root": str(tmp / "features"),
                         "numeric": {"amount": {"log1p": True}, "distance_km": {"log1p": True},
                                     "avg_amount_30d": {"log1p": True}, "account_age_days": {"log1p": True}},
                         "categorical": {"merchant_id": {"min_count": 5, "unseen": "rare"}}},
            "training": {"run_root": str(tmp / "runs"), "workers": 1, "cpus_per_worker": 0.5, "checkpoint_every": 500,
                         "logreg": logreg},
            "registry": {"db_path": str(shared / "registry.db"), "artifact_root": str(shared / "artifacts"),
                         "model_name": name},
            "serving": {"port": free_port(), "prediction_log": str(tmp / "predlog"), "log_flush_s": 0.5,
                        "reload_poll_s": 0.5, "app_name": name, "route_prefix": f"/{name}",
                        "max_records_per_request": 500},
            "monitoring": {"root": str(tmp / "monitoring"), "window_s": WINDOW_S, "grace_s": 2.0, "min_rows": 200,
                           **monitoring},
        }
    )  # fmt: skip


def traffic(seed: int, rows: int, start: str, days: float, drift: dict | None = None,
            task: str = "binary") -> list[dict[str, Any]]:  # fmt: skip
    """Generated events (inputs, entity, event time, label) in event-time order."""
    spec = SyntheticConfig(rows=rows, seed=seed, start=start, days=days, chunk_rows=rows, entities=2000,
                           drift=drift, task=task)  # fmt: skip
    return replay.generated_events(spec).to_pylist()


def send_windows(url: str, cfg: PipelineConfig, events: list[dict[str, Any]], per_window: int) -> list[dict]:
    """Send `events` in consecutive test windows; returns labels keyed by request id and row.

    Strict: a window that overran its end fails with WindowOverrun rather than odd rows per window."""
    return replay.send_windows(url, cfg.data.schema_, pa.Table.from_pylist(events), INPUTS, per_window, WINDOW_S,
                               per_request=cfg.serving.max_records_per_request, strict=True)  # fmt: skip


def next_window(offset: float = 0.3) -> None:
    """Sleep until just after the next test window boundary."""
    replay.wait_for_window(WINDOW_S, offset)


wait_for_version = replay.wait_for_version
write_labels = replay.write_labels_csv
