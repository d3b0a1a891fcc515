"""The loop controller's triggers on a served model's real prediction log and labels: new labels
and a schedule start retrains without any alert, a window under `min_rows` judges no rule and starts
nothing, and the controller's counters move only when a retrain completes. The retrain itself is
the controller's injected step (the real one is exercised by tests/test_natural_drift.py and
tests/test_real_drift.py); here it records what it was asked."""

from __future__ import annotations

from datetime import timedelta

import pytest

from .test_natural_drift import PERIOD_S, START, base_model, deliver_labels, drift_config, period, serve_period

pytestmark = pytest.mark.slow

TRAFFIC = {"name": "traffic", "metric": "rows", "feature": "all", "op": ">", "threshold": 0}
TRIGGERS = {"new_labels": {"labels": 4000}, "schedule": {"every_s": 3 * PERIOD_S}}


def test_new_labels_and_a_schedule_retrain_without_alerts_and_small_windows_start_nothing(ray_session, tmp_path):
    from ray_pipeline.workflow.loop import Loop

    cfg = drift_config(tmp_path, rules=[TRAFFIC], feedback={"triggers": TRIGGERS, "cooldown_s": 0})
    registry = base_model(cfg, [period(k, 1500) for k in range(3)])
    asked: list[str] = []

    def retrain(cfg, reason, window_s, until, run_id):  # noqa: ANN001, ANN202 - the Retrain protocol
        asked.append(reason)
        return {"id": run_id, "decision": "promoted"}

    loop = Loop(cfg, retrain=retrain)
    # (period, rows served, labels delivered)
    plan = [(6, 50, True), (7, 2500, True), (8, 2500, True), (10, 2500, False), (11, 2500, False)]
    seen = {}
    try:
        for k, rows, labeled in plan:
            table = period(k, rows)
            serve_period(cfg, registry, table, k)
            if labeled:
                deliver_labels(cfg, table, tmp_path / f"labels-{k}.csv")
            done = loop.run(since=START + timedelta(seconds=6 * PERIOD_S), until=START + timedelta(seconds=(k + 1) * PERIOD_S))
            for r in done:
                seen[r.start] = r
    finally:
        loop.close()
    by_period = {int((start - START).total_seconds() // PERIOD_S): r for start, r in seen.items()}
    assert sorted(by_period) == [6, 7, 8, 9, 10, 11]  # period 9: no traffic, still a window
    # 50 predictions: the traffic rule is not judged (it would fire on any row), nothing retrains
    small = by_period[6]
    assert small.rows == 50 and small.events == [] and small.feedback is None
    assert any("fewer than monitoring.min_rows" in n for n in small.notes)
    # 2,550 labels so far: under the trigger's 4,000, and the schedule's clock only started
    assert [e["rule"] for e in by_period[7].events] == ["traffic"] and by_period[7].feedback is None
    # 5,050 labels: continuous training starts a retrain though no rule names one
    assert by_period[8].feedback == {"id": by_period[8].feedback["id"], "decision": "promoted"}
    assert asked[0].startswith("new_labels: 5,050 labels")
    # no new labels after it; three periods of window time after it, the schedule comes round
    assert by_period[9].feedback is None and by_period[10].feedback is None
    assert by_period[11].feedback is not None and asked[1].startswith("schedule: ")
    assert len(asked) == 2
    state = loop.monitor.state["loop"]
    assert state["labels_at_retrain"] == 5050 and state["last_retrain"] == by_period[11].end.isoformat()
