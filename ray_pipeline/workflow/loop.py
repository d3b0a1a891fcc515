"""The loop controller: the monitor reports each window, this decides what the window means for the
model. It owns every retrain trigger of `monitoring.feedback.triggers`:

- `rules`: an alert rule named there fired on this window's own values (new evidence);
- `new_labels`: N labels ingested, or K windows with labeled predictions processed, since the last
  completed retrain (continuous training: the model keeps learning when no alarm rings);
- `schedule`: an interval of window time passed since the last completed retrain.

Whatever the trigger, the retrain is the same (`workflow.retrain.retrain`): a challenger judged by
the paired gates, promoted only when the holdout says it is better. A window with fewer than
`monitoring.min_rows` predictions starts nothing, and `feedback.cooldown_s` spaces retrains.

Kill safety: the decision is written into the monitor's state (`state["loop"]["pending"]`) in the
same atomic save that moves the position past the window, so a controller killed during a retrain
redoes that retrain under its own id on restart, and never the window again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from ray_pipeline.config import PipelineConfig
from ray_pipeline.monitor.job import Monitor, WindowResult

UNFINISHED = ("skipped", "failed")  # decisions after which the triggers keep counting


class Retrain(Protocol):
    """A feedback run (workflow.retrain.retrain)."""

    def __call__(self, cfg: PipelineConfig, reason: str, window_s: float, until: datetime,
                 run_id: str) -> dict[str, Any]: ...  # fmt: skip


def _default_retrain(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from ray_pipeline.workflow.retrain import retrain  # imports the training stack only when one runs

    return retrain(*args, **kwargs)


def _run_id(end: datetime) -> str:
    return f"feedback-{end:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class Loop:
    """Monitor windows in order and start the retrains the triggers ask for."""

    def __init__(self, cfg: PipelineConfig, window_s: float | None = None, retrain: Retrain | None = _default_retrain,
                 ) -> None:  # fmt: skip
        """`retrain`: what a trigger runs; None watches and alerts only."""
        self.cfg = cfg
        self.monitor = Monitor(cfg, window_s)
        self.retrain = retrain
        self.state: dict[str, Any] = self.monitor.state.setdefault("loop", {})
        for key in ("last_retrain", "labels_at_retrain", "last_scheduled"):
            self.state.setdefault(key, None)
        self.state.setdefault("labeled_windows", 0)

    @property
    def window_s(self) -> float:
        """Length of a window (seconds)."""
        return self.monitor.window_s

    def trigger(self, result: WindowResult) -> str | None:
        """Why this window starts a retrain (every trigger that holds), or None."""
        fb = self.cfg.monitoring.feedback
        t, end = fb.triggers, result.end
        if any(r["metric"] == "labeled_rows" and r["value"] > 0 for r in result.metrics):
            self.state["labeled_windows"] += 1
        if t.schedule is not None and self.state["last_scheduled"] is None:
            self.state["last_scheduled"] = end.isoformat()  # the schedule's clock starts at the first window
        if self.retrain is None or result.rows < self.cfg.monitoring.min_rows:
            return None
        reasons = []
        rules = self.monitor.state["rules"]
        fired = [n for n in t.rules if rules.get(n, {}).get("firing") and rules[n].get("held_at") == end.isoformat()]
        if fired:
            reasons.append("alert " + ", ".join(fired))
        if t.new_labels is not None:
            new = self.monitor.label_count() - (self.state["labels_at_retrain"] or 0)
            if t.new_labels.labels is not None and new >= t.new_labels.labels:
                reasons.append(f"new_labels: {new:,} labels since the last retrain")
            if t.new_labels.windows is not None and self.state["labeled_windows"] >= t.new_labels.windows:
                reasons.append(f"new_labels: {self.state['labeled_windows']} labeled windows since the last retrain")
        if t.schedule is not None:
            since = (end - datetime.fromisoformat(self.state["last_scheduled"])).total_seconds()
            if since >= t.schedule.every_s:
                reasons.append(f"schedule: {since:g} s since the last retrain")
        if not reasons:
            return None
        last = self.state["last_retrain"]
        if last and (end - datetime.fromisoformat(last)).total_seconds() < fb.cooldown_s:
            return None
        return "; ".join(reasons)

    def _decide(self, result: WindowResult) -> None:
        """Record a pending retrain in the state the monitor is about to save with the window."""
        reason = self.trigger(result)
        if reason is None:
            return
        until = max(result.end, self.monitor.complete_until())  # later windows may be complete (catching up)
        self.state["pending"] = {"id": _run_id(result.end), "reason": reason, "until": until.isoformat(),
                                 "window_end": result.end.isoformat(), "labels": self.monitor.label_count()}  # fmt: skip

    def finish_retrain(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Run the retrain the state says is pending (a new one, or one a killed controller left), then
        raise or resolve the `feedback_failed` alert; returns its record and the alert events."""
        pending = self.state.get("pending")
        if not pending or self.retrain is None:
            return None, []
        until, at = datetime.fromisoformat(pending["until"]), datetime.fromisoformat(pending["window_end"])
        record = self.retrain(self.cfg, reason=pending["reason"], window_s=self.window_s, until=until,
                              run_id=pending["id"])  # fmt: skip
        events = self.monitor.feedback_outcome(record, at)
        if record.get("decision") not in UNFINISHED:  # skipped: not enough new labels yet; keep counting
            self.state.update(last_retrain=at.isoformat(), labels_at_retrain=pending.get("labels"),
                              labeled_windows=0, last_scheduled=at.isoformat())  # fmt: skip
        self.state.pop("pending", None)
        self.monitor.save_state()
        return record, events

    def process(self, start: datetime, end: datetime) -> WindowResult:
        """One window: the monitor's figures and alerts, then the retrain it triggered, if any."""
        result = self.monitor.process(start, end, self._decide)
        if self.state.get("pending"):
            result.feedback, events = self.finish_retrain()
            result.events = result.events + events
        return result

    def run(self, since: datetime | None = None, until: datetime | None = None) -> list[WindowResult]:
        """Finish a retrain a killed controller left, then process every complete window (ending at or
        before `until`, default now)."""
        self.finish_retrain()
        return [self.process(s, e) for s, e in self.monitor.pending(since, until)]

    def watch(self, since: datetime | None = None, echo: Callable[[str], Any] = print, stop_after: float | None = None,
              stop: threading.Event | None = None) -> None:  # fmt: skip
        """Process windows as they complete, until `stop` is set (checked between windows) or for
        `stop_after` seconds."""
        stop = stop or threading.Event()
        deadline = time.time() + stop_after if stop_after else None
        record, _ = self.finish_retrain()
        if record is not None:
            echo(f"finished the interrupted feedback run {record['id']}: {record.get('decision')}")
        while not stop.is_set() and (deadline is None or time.time() < deadline):
            for s, e in self.monitor.pending(since):
                if stop.is_set():
                    break
                echo(self.process(s, e).render())
            stop.wait(min(5.0, self.window_s / 4))

    def close(self) -> None:
        """Close the monitor (webhook queue, metrics endpoint)."""
        self.monitor.close()
