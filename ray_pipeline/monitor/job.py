"""`ray-pipeline monitor`: process the prediction log window by window. Each window's rows go to the
monitoring table, the Prometheus gauges and an HTML report; alert rules advance. The monitor reports
and never retrains: what a window means for the model (a retrain, on which trigger) is decided by
the loop controller above it (`workflow.loop`), which hands `process` a hook that records its
decision in the same state file before the position moves. The state is saved after each window
(atomically), so a killed monitor resumes where it stopped: no window twice, none skipped."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.features.profile import load_profile
from ray_pipeline.monitor import alerts as alerting
from ray_pipeline.monitor.collect import collect_window
from ray_pipeline.monitor.estimate import calibration_counts, load_calibration
from ray_pipeline.monitor.labels import accepted_labels, label_files
from ray_pipeline.monitor.prom import MonitorGauges
from ray_pipeline.monitor.report import write_report
from ray_pipeline.monitor.window import version_labels, window_rows
from ray_pipeline.registry.gates import task_of
from ray_pipeline.registry.handoff import open_registry
from ray_pipeline.serve.predlog import log_files
from ray_pipeline.storage import join, read_text, write_parquet, write_text

TABLE_SCHEMA = pa.schema([("window_start", pa.timestamp("us", tz="UTC")), ("window_end", pa.timestamp("us", tz="UTC")),
                          ("metric", pa.string()), ("feature", pa.string()), ("model_version", pa.int64()),
                          ("value", pa.float64()), ("verdict", pa.string())])  # fmt: skip


@dataclass
class WindowResult:
    """What processing one window produced."""

    start: datetime
    end: datetime
    rows: int
    metrics: list[dict[str, Any]]
    events: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    report: str
    feedback: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    seasonal: frozenset[str] = frozenset()  # calendar inputs: their drift is the calendar moving on
    labeled: dict[str, dict[str, list]] = field(default_factory=dict)  # "vN/variant" -> labels, scores, row keys

    def render(self) -> str:
        """One line per window, plus its alert events."""
        psi = [m for m in self.metrics if m["metric"] == "psi" and m["feature"] not in self.seasonal]
        worst = max(psi, key=lambda m: m["value"], default=None)
        drift = f"; max psi {worst['value']:.3f} ({worst['feature']})" if worst else ""
        empty = " (empty)" if self.rows == 0 else ""
        lines = [f"window {self.start:%Y-%m-%dT%H:%M:%S} .. {self.end:%H:%M:%S}: {self.rows:,} predictions{empty}{drift}"]
        lines += [f"  skipped {s['file']}: {s['error']}" for s in self.skipped]
        lines += [f"  ALERT {e['status']}: {e['rule']} ({e['metric']} {e['feature']} = {e['value']:.4g})"
                  for e in self.events]  # fmt: skip
        lines += [f"  {n}" for n in self.notes]
        if self.feedback:
            lines += [f"  {line}" for line in describe_feedback(self.feedback).splitlines()]
        return "\n".join(lines)


def describe_feedback(record: dict[str, Any]) -> str:
    """A feedback run's record for people: decision, the data it used, the gates with their intervals."""
    lines = [f"feedback {record.get('id')}: {record.get('decision')}"
             + (f" ({record['promoted']})" if record.get("promoted") else "")
             + (f": {record['why']}" if record.get("why") else "")]  # fmt: skip
    if record.get("decision") == "failed":
        lines.append(f"  failed in stage {record.get('stage')}: {record.get('error')}")
    data = record.get("data", {})
    if "train" in data:
        t, v, h = data["train"], data["valid"], data["holdout"]
        lines.append(f"  train {t['rows']:,} rows (events {t['events_from']} .. {t['events_to']}); "
                     f"valid {v['rows']:,} ({v['how']}); holdout {h['rows']:,} (served {h['from']} .. {h['to']}); "
                     f"fed back this run {data.get('fed_back_rows', 0):,}")  # fmt: skip
    if data.get("online"):
        lines.append("  online store refreshed: " + ", ".join(f"{v} {n:,} entity values" for v, n in data["online"].items()))
    lines += [f"  {line}" for line in record.get("gate_report", "").splitlines()]
    return "\n".join(lines)


FEEDBACK_FAILED = "feedback_failed"


def feedback_events(rules: dict[str, Any], record: dict[str, Any], at: datetime) -> list[dict[str, Any]]:
    """The `feedback_failed` alert: fires when a retrain fails, resolves when one completes."""
    s = rules.setdefault(FEEDBACK_FAILED, {"streak": 0, "firing": False})
    failed = record.get("decision") == "failed"
    if failed and not s["firing"]:
        alert = {"id": f"{FEEDBACK_FAILED}:{record['id']}:firing", "rule": FEEDBACK_FAILED, "severity": "critical",
                 "labels": {}, "summary": f"feedback run failed in stage {record.get('stage')}: {record.get('error')}",
                 "metric": "feedback", "feature": record.get("stage"), "model_version": None, "value": 1.0,
                 "threshold": 0.0, "op": ">", "window_start": at.isoformat(), "window_end": at.isoformat(),
                 "starts_at": at.isoformat(), "feedback_run": record["id"]}  # fmt: skip
        s.update(firing=True, since=at.isoformat(), alert=alert)
        return [{**alert, "status": "firing"}]
    if s["firing"] and record.get("decision") not in ("failed", "skipped"):
        alert = s.pop("alert")
        s.update(firing=False, since=None)
        return [{**alert, "status": "resolved", "ends_at": at.isoformat(), "value": 0.0,
                 "id": f"{FEEDBACK_FAILED}:{record['id']}:resolved"}]  # fmt: skip
    return []


def _floor(t: datetime, seconds: float) -> datetime:
    epoch = t.timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=timezone.utc)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h', '1d' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise UserError(f"--window {text!r}: expected a duration such as 30s, 5m or 1h") from None


class Monitor:
    """Processes complete windows of the prediction log in order, keeping its position on disk."""

    def __init__(self, cfg: PipelineConfig, window_s: float | None = None) -> None:
        m = cfg.monitoring
        self.cfg = cfg
        self.window_s = window_s or m.window_s
        self.registry = open_registry(cfg)
        self.log_dir = cfg.serving.prediction_log
        self.state = self._load_state()
        self.refs: dict[str, Any] = {}
        self.tested: dict[str, dict[str, Any]] = {}  # version -> its task and test metrics
        self._label_files: list[str] | None = None
        self._label_table: pa.Table | None = None
        self.webhook = alerting.Webhook(m.webhook) if m.webhook else None
        self.gauges = MonitorGauges(m.metrics_port)
        # Calendar and seasonal inputs: drift reported, never what a rule without a feature fires on.
        self.seasonal = frozenset(n for n, c in cfg.data.schema_.features.items() if c.seasonal)

    # ------------------------------------------------------------------------------ state

    def _load_state(self) -> dict[str, Any]:
        path = self.cfg.monitoring.state
        text = read_text(path)
        state = json.loads(text) if text else {}
        if state.get("window_s") not in (None, self.window_s):
            raise UserError(f"{path}: the monitor ran with {state['window_s']} s windows; "
                             f"remove the state to start over with {self.window_s} s")  # fmt: skip
        return {"window_s": self.window_s, "next": None, "rules": {}, "calibration": {}, **state}

    def save_state(self) -> None:
        """Write the state whole (after a window's outputs: the position moves only once they exist)."""
        write_text(self.cfg.monitoring.state, json.dumps(self.state, indent=1, default=str))

    def _first_start(self, since: datetime | None) -> datetime | None:
        if since is not None:
            return _floor(since, self.window_s)
        earliest = None
        folder = None
        for f in log_files(self.log_dir):  # the first prediction of the earliest hour partition
            if folder is not None and f.rsplit("/", 1)[0] != folder and earliest is not None:
                break
            folder = f.rsplit("/", 1)[0]
            try:
                ts = pq.read_table(f, columns=["ts"])["ts"]
            except Exception:
                continue  # unreadable: processing its window will name it
            if len(ts):
                first = pc.min(ts).as_py()
                earliest = first if earliest is None else min(earliest, first)
        return None if earliest is None else _floor(earliest, self.window_s)

    # ------------------------------------------------------------------------------ windows

    def _references(self) -> list[str]:
        """Load (once) the reference profile of every registered version; notes for those without."""
        notes = []
        name = self.cfg.registry.model_name
        for record in self.registry.versions(name):
            v = str(record.version)
            if v in self.refs:
                continue
            try:
                directory = self.registry.checkout(record)
                self.refs[v] = {**load_profile(directory), "task": task_of(record)}
                self.tested[v] = {"task": task_of(record), **record.metrics}
                self.state["calibration"].setdefault(v, load_calibration(directory))
            except Exception as exc:
                self.refs[v] = None
                notes.append(f"{record.uri}: no usable reference profile, drift not computed ({exc})")
        return notes

    def process(self, start: datetime, end: datetime,
                decide: Callable[[WindowResult], None] | None = None) -> WindowResult:  # fmt: skip
        """Compute, store and alert on one window. `decide` (the loop controller's) sees the result
        and may record what it will do in `state` before the position is saved with it."""
        m = self.cfg.monitoring
        notes = self._references()
        refs = {k: v for k, v in self.refs.items() if v is not None}
        data = collect_window(self.log_dir, start, end, refs, self._labels())
        rows = window_rows(data, refs, self.tested, m, self.state["calibration"])
        if data.skipped:
            rows.append({"metric": "skipped_files", "feature": "all", "model_version": None,
                         "value": float(len(data.skipped)), "verdict": None})  # fmt: skip
        self._write_table(start, end, rows)
        # Too few rows for any statistic to mean something: no rule fires or resolves on them.
        judged = rows if data.rows >= m.min_rows else []
        if not judged and data.rows:
            notes.append(f"{data.rows} predictions, fewer than monitoring.min_rows ({m.min_rows}): no rule judged")
        events = alerting.evaluate(m.rules, judged, self.state["rules"], start, end, self.seasonal, m.stale_windows)
        self._calibrate(data)
        self.publish(events)
        report = write_report(join(m.reports, f"{start:%Y%m%dT%H%M%S}"), data, rows, refs, events)
        self.gauges.update(rows, end.timestamp(), alerting.active(self.state["rules"]),
                           [r.name for r in m.rules] + [FEEDBACK_FAILED])  # fmt: skip
        self.gauges.write_textfile(join(m.root, "metrics.prom"))
        result = WindowResult(start, end, data.rows, rows, events, data.skipped, report, notes=notes,
                              seasonal=self.seasonal, labeled=data.labeled)  # fmt: skip
        self.state["next"] = end.isoformat()
        if decide is not None:
            decide(result)
        self.save_state()
        return result

    def _calibrate(self, data: Any) -> None:
        """Keep each binary version's newest labeled windows (as calibration-bin counts) for its estimates:
        answered or scored in shadow, the same request scored once per version."""
        keep = self.cfg.monitoring.calibration_windows
        for version in sorted({k.split("/")[0][1:] for k in data.labeled}):  # a shadow's scores count too
            if self.tested.get(version, {}).get("task") != "binary":
                continue
            y, p = version_labels(data.labeled, version, shadow=True)
            if y.size >= self.cfg.monitoring.min_rows:
                kept = self.state["calibration"].setdefault(version, [])
                kept.append(calibration_counts(y, p))
                del kept[:-keep]

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Alert events to the log (once each), the webhook and the active-alerts file."""
        m = self.cfg.monitoring
        new = alerting.append_log(m.alert_log, events)
        if self.webhook:
            self.webhook.send(new)
        alerting.write_active(m.active_alerts, alerting.active(self.state["rules"]))

    def feedback_outcome(self, record: dict[str, Any], at: datetime) -> list[dict[str, Any]]:
        """Raise or resolve the `feedback_failed` alert for a finished retrain; publishes the events."""
        events = feedback_events(self.state["rules"], record, at)
        self.publish(events)
        return events

    def label_count(self) -> int:
        """Accepted labels so far (read only when new label files arrived)."""
        return self._labels().num_rows

    def _labels(self) -> pa.Table:
        """Accepted labels, read again only when new label files arrived (not once per window)."""
        files = label_files(self.cfg)
        if files != self._label_files:
            self._label_files, self._label_table = files, accepted_labels(self.cfg)
        return self._label_table

    def _write_table(self, start: datetime, end: datetime, rows: list[dict[str, Any]]) -> None:
        n = len(rows)
        table = pa.table({"window_start": [start] * n, "window_end": [end] * n,
                          **{c: [r[c] for r in rows] for c in ("metric", "feature", "model_version", "value", "verdict")}},
                         schema=TABLE_SCHEMA)  # fmt: skip
        # a replayed window replaces its own file: never two copies
        write_parquet(table, join(self.cfg.monitoring.table, f"window={start:%Y%m%dT%H%M%S}.parquet"))

    def complete_until(self) -> datetime:
        """End of the newest window complete now (its grace passed)."""
        return _floor(datetime.now(timezone.utc) - timedelta(seconds=self.cfg.monitoring.grace_s), self.window_s)

    def pending(self, since: datetime | None = None, now: datetime | None = None) -> list[tuple[datetime, datetime]]:
        """Complete windows not processed yet (a window is complete `grace_s` after it ends)."""
        now = now or datetime.now(timezone.utc)
        start = datetime.fromisoformat(self.state["next"]) if self.state["next"] else self._first_start(since)
        if start is None:
            return []
        out = []
        step = timedelta(seconds=self.window_s)
        while start + step + timedelta(seconds=self.cfg.monitoring.grace_s) <= now:
            out.append((start, start + step))
            start += step
        return out

    def run(self, since: datetime | None = None, until: datetime | None = None) -> list[WindowResult]:
        """Process every complete window (ending at or before `until`, default now)."""
        return [self.process(s, e) for s, e in self.pending(since, until)]

    def close(self) -> None:
        """Deliver queued webhook events, stop the metrics endpoint."""
        if self.webhook:
            self.webhook.close()
        self.gauges.close()
