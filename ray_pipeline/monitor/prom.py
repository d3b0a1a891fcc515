"""Prometheus side of monitoring: the window's values as gauges (HTTP endpoint and a textfile for
node_exporter) and the alert rules as a Prometheus alerting-rule file."""

from __future__ import annotations

from typing import Any

from ray_pipeline.config import MonitoringConfig
from ray_pipeline.storage import write_bytes

GAUGE = "rp_monitor_value"


class MonitorGauges:
    """rp_monitor_value{metric, feature, model_version}, the last window's end, and firing alerts."""

    def __init__(self, port: int | None = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.value = Gauge(GAUGE, "Monitoring statistic of the last processed window.",
                           ["metric", "feature", "model_version"], registry=self.registry)  # fmt: skip
        self.window_end = Gauge("rp_monitor_window_end_seconds", "End of the last processed window (Unix time).",
                                registry=self.registry)  # fmt: skip
        self.firing = Gauge("rp_monitor_alert_firing", "1 while an alert rule fires.", ["alertname", "severity"],
                            registry=self.registry)  # fmt: skip
        self.server = start_http_server(port, registry=self.registry) if port else None

    def update(self, rows: list[dict[str, Any]], window_end: float, alerts: list[dict[str, Any]],
               rules: list[str]) -> None:  # fmt: skip
        """Replace the gauges with one window's rows (series absent from it disappear)."""
        self.value.clear()
        for r in rows:
            version = "" if r["model_version"] is None else str(r["model_version"])
            self.value.labels(r["metric"], r["feature"], version).set(r["value"])
        self.window_end.set(window_end)
        self.firing.clear()
        firing = {a["rule"]: a["severity"] for a in alerts}
        for name in rules:
            if name in firing:
                self.firing.labels(name, firing[name]).set(1)

    def write_textfile(self, path: str) -> None:
        """The same gauges in the text exposition format (node_exporter's textfile collector)."""
        from prometheus_client import generate_latest

        write_bytes(path, generate_latest(self.registry))

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self.server is not None:
            server, _thread = self.server
            server.shutdown()


def alerting_rules(m: MonitoringConfig) -> dict[str, Any]:
    """`monitoring.rules` as a Prometheus rule file over rp_monitor_value (same thresholds and windows)."""
    rules = []
    for r in m.rules:
        selector = f'metric="{r.metric}"' + (f',feature="{r.feature}"' if r.feature else "")
        agg = "max" if r.op in (">", ">=") else "min"
        rule: dict[str, Any] = {
            "alert": r.name,
            "expr": f"{agg}({GAUGE}{{{selector}}}) {r.op} {r.threshold!r}",
            # The gauge holds each window's value for one window: N windows in a row = N-1 windows held.
            "for": f"{int((r.for_windows - 1) * m.window_s)}s",
            "labels": {"severity": r.severity, **r.labels},
            "annotations": {"summary": r.summary or f"{r.metric} {r.op} {r.threshold}",
                            "value": "{{ $value }}"},  # fmt: skip
        }
        rules.append(rule)
    return {"groups": [{"name": "ray-pipeline-monitoring", "interval": f"{int(min(m.window_s, 60))}s",
                        "rules": rules}]}  # fmt: skip
