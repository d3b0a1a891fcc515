"""`ray-pipeline monitor`: process the prediction log window by window. Each window's rows go to the
monitoring table, the Prometheus gauges and an HTML report; alert rules advance; a rule named in
`monitoring.feedback` that fires on a window with traffic starts a retrain. The position and rule
state are saved after each window (atomically) and before a retrain starts, so a killed monitor
resumes where it stopped: no window twice, none skipped, an interrupted retrain redone under its
own id. A retrain that fails raises the `feedback_failed` alert; the monitor keeps watching."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.features.profile import load_profile
from ray_pipeline.monitor import alerts as alerting
from ray_pipeline.monitor.collect import collect_window
from ray_pipeline.monitor.labels import accepted_labels, label_files
from ray_pipeline.monitor.prom import MonitorGauges
from ray_pipeline.monitor.report import write_report
from ray_pipeline.monitor.window import window_rows
from ray_pipeline.registry.gates import task_of
from ray_pipeline.registry.versions import open_registry
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

    def render(self) -> str:
        """One line per window, plus its alert events."""
        worst = max((m for m in self.metrics if m["metric"] == "psi"), key=lambda m: m["value"], default=None)
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


class Retrain(Protocol):
    """What the monitor calls when a feedback rule fires (workflow.retrain.retrain)."""

    def __call__(self, cfg: PipelineConfig, reason: str, window_s: float, until: datetime,
                 run_id: str) -> dict[str, Any]: ...  # fmt: skip


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


def _run_id(end: datetime) -> str:
    return f"feedback-{end:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


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

    def __init__(self, cfg: PipelineConfig, window_s: float | None = None, retrain: Retrain | None = None) -> None:
        """`retrain`: what a firing feedback rule runs (`workflow.retrain.retrain`, given by whoever runs
        the monitor: monitoring reports, it does not import the stage above it); None: alerts only."""
        m = cfg.monitoring
        self.retrain = retrain
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
        return {"window_s": self.window_s, "next": None, "rules": {}, "last_retrain": None, **state}

    def _save_state(self) -> None:
        # written whole, after the window's outputs: the position moves only once they exist
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
                self.refs[v] = load_profile(self.registry.checkout(record))
                self.tested[v] = {"task": task_of(record), **record.metrics}
            except Exception as exc:
                self.refs[v] = None
                notes.append(f"{record.uri}: no usable reference profile, drift not computed ({exc})")
        return notes

    def process(self, start: datetime, end: datetime) -> WindowResult:
        """Compute, store and alert on one window."""
        m = self.cfg.monitoring
        notes = self._references()
        refs = {k: v for k, v in self.refs.items() if v is not None}
        data = collect_window(self.log_dir, start, end, refs, self._labels())
        rows = window_rows(data, refs, self.tested, self.cfg.monitoring)
        if data.skipped:
            rows.append({"metric": "skipped_files", "feature": "all", "model_version": None,
                         "value": float(len(data.skipped)), "verdict": None})  # fmt: skip
        self._write_table(start, end, rows)
        events = alerting.evaluate(self.cfg.monitoring.rules, rows, self.state["rules"], start, end, self.seasonal)
        self._publish(events)
        report = write_report(join(m.reports, f"{start:%Y%m%dT%H%M%S}"), data, rows, refs, events)
        self.gauges.update(rows, end.timestamp(), alerting.active(self.state["rules"]),
                           [r.name for r in self.cfg.monitoring.rules] + [FEEDBACK_FAILED])  # fmt: skip
        self.gauges.write_textfile(join(m.root, "metrics.prom"))
        result = WindowResult(start, end, data.rows, rows, events, data.skipped, report, notes=notes)
        self.state["next"] = end.isoformat()
        trigger = self._trigger(data.rows, end)
        if trigger is not None:
            # Saved before the retrain starts: a monitor killed during it redoes that retrain (under
            # the same id, so nothing is written twice) and never this window again.
            until = max(end, self._complete_until())  # windows after this one may be complete (catching up)
            self.state["pending_retrain"] = {"id": _run_id(end), "reason": trigger, "until": until.isoformat(),
                                             "window_end": end.isoformat()}  # fmt: skip
        self._save_state()
        if trigger is not None:
            result.feedback, fb_events = self.finish_retrain()
            result.events = result.events + fb_events
        return result

    def _publish(self, events: list[dict[str, Any]]) -> None:
        """Alert events to the log (once each), the webhook and the active-alerts file."""
        m = self.cfg.monitoring
        new = alerting.append_log(m.alert_log, events)
        if self.webhook:
            self.webhook.send(new)
        alerting.write_active(m.active_alerts, alerting.active(self.state["rules"]))

    def finish_retrain(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Run the retrain the state says is pending (a new one, or one a killed monitor left), then
        raise or resolve the `feedback_failed` alert; returns its record and the alert events."""
        pending = self.state.get("pending_retrain")
        if not pending or self.retrain is None:
            return None, []
        until, at = datetime.fromisoformat(pending["until"]), datetime.fromisoformat(pending["window_end"])
        record = self.retrain(self.cfg, reason=pending["reason"], window_s=self.window_s, until=until,
                              run_id=pending["id"])  # fmt: skip
        events = feedback_events(self.state["rules"], record, at)
        if record.get("decision") not in ("skipped", "failed"):  # skipped: not enough new labels yet
            self.state["last_retrain"] = at.isoformat()
        self.state.pop("pending_retrain", None)
        self._publish(events)
        self._save_state()
        return record, events

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

    def _complete_until(self) -> datetime:
        """End of the newest window complete now (its grace passed)."""
        return _floor(datetime.now(timezone.utc) - timedelta(seconds=self.cfg.monitoring.grace_s), self.window_s)

    def _trigger(self, rows: int, end: datetime) -> str | None:
        """Why this window starts a retrain, or None. A firing rule counts only with new evidence:
        this window had traffic and the rule's condition held on it (an alert left active through
        quiet windows does not keep retraining)."""
        fb = self.cfg.monitoring.feedback
        if rows == 0 or self.retrain is None:
            return None
        rules = self.state["rules"]
        triggers = [n for n in fb.rules if rules.get(n, {}).get("firing") and rules[n].get("held_at") == end.isoformat()]
        if not triggers:
            return None
        last = self.state.get("last_retrain")
        if last and (end - datetime.fromisoformat(last)).total_seconds() < fb.cooldown_s:
            return None
        return "alert " + ", ".join(triggers)

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
        """Process every complete window (ending at or before `until`, default now), after finishing
        a retrain an earlier monitor was killed in."""
        self.finish_retrain()
        return [self.process(s, e) for s, e in self.pending(since, until)]

    def watch(self, since: datetime | None = None, echo=print, stop_after: float | None = None,
              stop: threading.Event | None = None) -> None:  # fmt: skip
        """Process windows as they complete, until `stop` is set (checked between windows) or for
        `stop_after` seconds."""
        stop = stop or threading.Event()
        deadline = time.time() + stop_after if stop_after else None
        record, _ = self.finish_retrain()
        if record is not None:
            echo(f"finished the interrupted feedback run {record['id']}: {record.get('decision')}")
        while not stop.is_set() and (deadline is None or time.time() < deadline):
            for s, e in self.pending(since):
                if stop.is_set():
                    break
                echo(self.process(s, e).render())
            stop.wait(min(5.0, self.window_s / 4))

    def close(self) -> None:
        """Deliver queued webhook events, stop the metrics endpoint."""
        if self.webhook:
            self.webhook.close()
        self.gauges.close()
