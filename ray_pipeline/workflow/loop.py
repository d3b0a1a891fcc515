"""The loop controller: the monitor reports each window, this decides what the window means for the
model. It owns every retrain trigger of `monitoring.feedback.triggers`:

- `rules`: an alert rule named there fired on this window's own values (new evidence);
- `new_labels`: N labels ingested, or K windows with labeled predictions processed, since the last
  completed retrain (continuous training: the model keeps learning when no alarm rings);
- `schedule`: an interval of window time passed since the last completed retrain.

Whatever the trigger, the retrain is the same (`workflow.retrain.retrain`): a challenger judged by
the paired gates, promoted only when the holdout says it is better. A window with fewer than
`monitoring.min_rows` predictions starts nothing, and `feedback.cooldown_s` spaces retrains.

A retrain whose challenger the holdout could not separate from the champion starts a race
(`registry.race`): the challenger scores in shadow and each window's paired labeled rows are added
to the race's evidence, until it is surely better (promoted), surely worse or out of windows
(retired: @challenger and the traffic split go back to what they were). Retrains go on during a
race: a challenger that passes the gates is promoted (the race is then abandoned), an undecided one
takes the race's place.

Kill safety: the decision is written into the monitor's state (`state["loop"]["pending"]`) in the
same atomic save that moves the position past the window, so a controller killed during a retrain
redoes that retrain under its own id on restart, and never the window again. A race's evidence is
added in that save too; its ending is acted on after it, and redone (idempotently) on restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from ray_pipeline.config import PipelineConfig
from ray_pipeline.feedback.records import finish_race_record
from ray_pipeline.monitor.job import Monitor, WindowResult
from ray_pipeline.monitor.window import paired_rows
from ray_pipeline.registry.gates import PromotionRefused, promote
from ray_pipeline.registry.race import PROMOTE, RETIRE, Race, row_losses
from ray_pipeline.registry.traffic import set_traffic

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
        """Record the window's race evidence and a pending retrain in the state the monitor is about to
        save with the window."""
        self._race_step(result)
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
        if record.get("decision") == "racing":
            race, old = dict(record["race"]), self.state.get("race")
            held = {"run": record["id"], "challenger_before": race.pop("challenger_before"),
                    "traffic_before": race.pop("traffic_before"), "race": race, "verdict": None}
            if old is not None:  # the newer challenger takes the shadow slot; what to restore stays the first's
                held.update(challenger_before=old["challenger_before"], traffic_before=old["traffic_before"])
                finish_race_record(self.cfg, old["run"], "retired", old["race"], "retired: a newer challenger races")
            self.state["race"] = held
        self.state.pop("pending", None)
        self.monitor.save_state()
        return record, events

    def _race_step(self, result: WindowResult) -> None:
        """Add the window's paired labeled rows (champion and shadow challenger) to a running race."""
        held = self.state.get("race")
        if not held or held["verdict"]:
            return
        race = Race.from_dict(held["race"])
        champion = self.monitor.registry.aliases(self.cfg.registry.model_name).get(self.cfg.serving.alias)
        if champion != race.champion:
            held["verdict"] = f"abandoned: @{self.cfg.serving.alias} moved to v{champion} during the race"
            return
        y, p_champion, p_challenger = paired_rows(result.labeled, f"v{race.champion}/champion",
                                                  f"v{race.challenger}/shadow")  # fmt: skip
        if not y.size:
            return  # no labeled pairs yet (labels late, or no traffic): the race waits
        loss = row_losses(race.task, y, p_champion, race.metric)
        race.add(loss - row_losses(race.task, y, p_challenger, race.metric), loss)
        held["race"], held["verdict"], held["report"] = race.to_dict(), race.verdict(), race.report()
        result.notes.append(held["report"])

    def finish_race(self) -> str | None:
        """Act on a race that ended (promote, or retire: @challenger and the traffic split go back);
        idempotent, so a restart redoes what a kill cut short. Returns what was done."""
        held = self.state.get("race")
        if not held or not held["verdict"]:
            return None
        race, name = Race.from_dict(held["race"]), self.cfg.registry.model_name
        registry, alias = self.monitor.registry, self.cfg.serving.alias
        outcome = "retired"
        if held["verdict"] == PROMOTE:
            try:
                if registry.aliases(name).get(alias) != race.challenger:
                    promote(registry, name, race.challenger, alias, race, actor="feedback",
                            reason=f"{held['run']}: won its race in shadow")  # fmt: skip
                outcome = "promoted"
            except PromotionRefused:
                outcome = "retired (the champion moved during the race)"
        if registry.aliases(name).get(self.cfg.serving.traffic.challenger_alias) == race.challenger:
            before, challenger_alias = held["challenger_before"], self.cfg.serving.traffic.challenger_alias
            if before is None:
                registry.delete_alias(name, challenger_alias, f"{held['run']}: race over", "feedback")
            else:
                registry.set_alias(name, challenger_alias, before, f"{held['run']}: race over", "feedback")
        mode, share = held["traffic_before"] or (self.cfg.serving.traffic.mode, self.cfg.serving.traffic.canary_share)
        set_traffic(registry, name, mode, share, "feedback", f"{held['run']}: race over")
        line = f"{outcome}: {race.report()}" + ("" if held["verdict"] in (PROMOTE, RETIRE) else f" ({held['verdict']})")
        finish_race_record(self.cfg, held["run"], outcome, race.to_dict(), line)
        self.state.pop("race")
        self.monitor.save_state()
        return line

    def process(self, start: datetime, end: datetime) -> WindowResult:
        """One window: the monitor's figures and alerts, a race's ending, then the retrain the window
        triggered, if any."""
        result = self.monitor.process(start, end, self._decide)
        ended = self.finish_race()
        if ended is not None:
            result.notes.append(f"race over, {ended}")
        if self.state.get("pending"):
            result.feedback, events = self.finish_retrain()
            result.events = result.events + events
        return result

    def run(self, since: datetime | None = None, until: datetime | None = None) -> list[WindowResult]:
        """Finish a retrain or a race a killed controller left, then process every complete window
        (ending at or before `until`, default now)."""
        self.finish_race()
        self.finish_retrain()
        return [self.process(s, e) for s, e in self.monitor.pending(since, until)]

    def watch(self, since: datetime | None = None, echo: Callable[[str], Any] = print, stop_after: float | None = None,
              stop: threading.Event | None = None) -> None:  # fmt: skip
        """Process windows as they complete, until `stop` is set (checked between windows) or for
        `stop_after` seconds."""
        stop = stop or threading.Event()
        deadline = time.time() + stop_after if stop_after else None
        ended = self.finish_race()
        if ended is not None:
            echo(f"finished the race a killed monitor left: {ended}")
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
