"""Alert rules evaluated on every window: alerts fire after `for_windows` windows in a row, resolve
when the condition clears, are deduplicated per rule, and go to the alert log, a webhook (JSON or
an Alertmanager v2 body, retried with backoff on a background thread) and the active-alerts file
that serving replicas read for GET /model."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
from datetime import datetime
from typing import Any

from ray_pipeline.config import AlertRule, WebhookConfig
from ray_pipeline.storage import read_text, write_text

_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def rule_value(rule: AlertRule, rows: list[dict[str, Any]], quiet: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The row a rule looks at: the worst value of its metric (and feature), or None when absent.
    A rule without a feature skips the `quiet` features (calendar inputs: their drift is the
    calendar moving on); a rule that names one still sees it."""
    match = [r for r in rows if r["metric"] == rule.metric
             and (r["feature"] == rule.feature if rule.feature is not None else r["feature"] not in quiet)]  # fmt: skip
    if not match:
        return None
    pick = max if rule.op in (">", ">=") else min
    return pick(match, key=lambda r: r["value"])


def evaluate(rules: list[AlertRule], rows: list[dict[str, Any]], state: dict[str, Any], start: datetime,
             end: datetime, quiet: frozenset[str] = frozenset(), stale_windows: int | None = None,
             ) -> list[dict[str, Any]]:  # fmt: skip
    """Advance each rule's state by one window; returns the fired and resolved events. A rule's
    `held_at` is the end of the last window whose own values met its condition (new evidence).
    A firing rule without a value for `stale_windows` windows in a row resolves as stale: nothing
    says the condition still holds, and an alert nobody can clear is noise."""
    events = []
    for rule in rules:
        s = state.setdefault(rule.name, {"streak": 0, "firing": False})
        row = rule_value(rule, rows, quiet)
        if row is None:  # no value this window (no traffic, no labels yet): neither fires nor resolves...
            s["absent"] = s.get("absent", 0) + 1
            if s["firing"] and stale_windows and s["absent"] >= stale_windows:  # ...until it is stale
                alert = s.pop("alert")
                s.update(firing=False, since=None, streak=0)
                events.append({**alert, "status": "resolved", "stale": True, "ends_at": end.isoformat(),
                               "id": f"{rule.name}:{end.isoformat()}:stale"})  # fmt: skip
            continue
        s["absent"] = 0
        holds = _OPS[rule.op](row["value"], rule.threshold)
        s["streak"] = s["streak"] + 1 if holds else 0
        if holds:
            s["held_at"] = end.isoformat()
        if holds and not s["firing"] and s["streak"] >= rule.for_windows:
            s.update(firing=True, since=end.isoformat(), alert=_alert(rule, row, start, end))
            events.append({**s["alert"], "status": "firing"})
        elif holds and s["firing"]:
            s["alert"].update(value=row["value"], feature=row["feature"], model_version=row["model_version"],
                              window_end=end.isoformat())  # fmt: skip
        elif not holds and s["firing"]:
            alert = s.pop("alert")
            s.update(firing=False, since=None)
            events.append({**alert, "status": "resolved", "ends_at": end.isoformat(), "value": row["value"],
                           "feature": row["feature"], "model_version": row["model_version"],
                           "id": f"{rule.name}:{end.isoformat()}:resolved"})  # the value that cleared it  # fmt: skip
    return events


def _alert(rule: AlertRule, row: dict[str, Any], start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "id": f"{rule.name}:{end.isoformat()}:firing",
        "rule": rule.name,
        "severity": rule.severity,
        "labels": dict(rule.labels),
        "summary": rule.summary or f"{rule.metric} {rule.op} {rule.threshold}",
        "metric": rule.metric,
        "feature": row["feature"],
        "model_version": row["model_version"],
        "value": row["value"],
        "threshold": rule.threshold,
        "op": rule.op,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "starts_at": end.isoformat(),
    }


def active(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Alerts firing now."""
    return [s["alert"] for s in state.values() if s.get("firing")]


def append_log(path: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append events not already in the log (a window replayed after a crash adds nothing twice).

    The log is rewritten whole (object stores cannot append); it grows by a few lines per alert."""
    text = read_text(path) or ""
    seen = {json.loads(line)["id"] for line in text.splitlines() if line.strip()}
    new = [e for e in events if e["id"] not in seen]
    if new:
        write_text(path, text + "".join(json.dumps(e, default=str) + "\n" for e in new))
    return new


def write_active(path: str, alerts: list[dict[str, Any]]) -> None:
    """Replace the active-alerts file whole (replicas never read half of it)."""
    write_text(path, json.dumps(alerts, default=str))


def alertmanager_body(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alertmanager v2 POST /api/v2/alerts body for these events."""
    out = []
    for e in events:
        labels = {"alertname": e["rule"], "severity": e["severity"], **e["labels"]}
        if e.get("feature"):
            labels["feature"] = str(e["feature"])
        if e.get("model_version") is not None:
            labels["model_version"] = str(e["model_version"])
        item = {"labels": labels, "startsAt": e["starts_at"],
                "annotations": {"summary": e["summary"], "value": f"{e['value']:.6g}",
                                "window": f"{e['window_start']} .. {e['window_end']}"}}  # fmt: skip
        if e["status"] == "resolved":
            item["endsAt"] = e["ends_at"]
        out.append(item)
    return out


class Webhook:
    """Delivers events on a background thread with retries and exponential backoff; never blocks."""

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, daemon=True, name="alert-webhook")
        self._thread.start()

    def send(self, events: list[dict[str, Any]]) -> None:
        """Queue events for delivery (dropped with a message when the queue is full)."""
        if not events:
            return
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            self.failed += len(events)
            print(f"alert webhook {self.cfg.url}: queue full, {len(events)} event(s) dropped")

    def _post(self, events: list[dict[str, Any]]) -> None:
        body = alertmanager_body(events) if self.cfg.format == "alertmanager" else events
        req = urllib.request.Request(self.cfg.url, data=json.dumps(body, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
            resp.read()

    def _run(self) -> None:
        while (events := self._queue.get()) is not None:
            delay = self.cfg.backoff_s
            for attempt in range(self.cfg.retries + 1):
                try:
                    self._post(events)
                    self.delivered += len(events)
                    break
                except Exception as exc:
                    if attempt == self.cfg.retries:
                        self.failed += len(events)
                        print(f"alert webhook {self.cfg.url}: gave up after {attempt + 1} attempt(s): {exc}")
                    else:
                        time.sleep(delay)
                        delay *= 2
            self._queue.task_done()

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop."""
        deadline = time.time() + timeout
        while self._queue.unfinished_tasks and time.time() < deadline:
            time.sleep(0.05)
        self._queue.put(None)
