"""The loop on natural drift (issue: the loop on real data). A year of subscriber records
(`synthetic/seasonal.py`: a calendar input, a seasonal input, gradual concept drift, a two-period
campaign that shifts the plan mix and ends); the first six periods train the base model, later ones
are served one period per monitoring window through the registry's @champion into the real
prediction log, with one window without traffic. Labels arrive by entity and event time after each
window; the monitor alerts and the feedback loop retrains, gates by paired bootstrap and promotes.

Scoring goes through the champion alias in-process rather than over HTTP, so the log's times can
be the records' event times (a window per period) and the test takes a minute, not a year; the
HTTP path into the same log is what tests/test_feedback_loop.py drives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ray_pipeline.config import parse_config
from ray_pipeline.synthetic.seasonal import FEATURES, seasonal_period

pytestmark = pytest.mark.slow

ROWS = 2500
SEED = 3
PERIOD_S = 86400.0
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
BASE_PERIODS = range(6)
SERVED = [6, 7, 8, 10, 11, 12, 13]  # period 9: a window without traffic
RULES = [
    {"name": "input_drift", "metric": "psi", "op": ">", "threshold": 0.25, "severity": "critical"},
    {"name": "performance", "metric": "log_loss_ratio", "op": ">", "threshold": 1.05},
]  # fmt: skip
FEEDBACK = {"triggers": {"rules": ["input_drift", "performance"]}, "min_labeled_rows": 500, "min_new_labels": 500,
            "cooldown_s": 0, "holdout_windows": 1}  # fmt: skip


def drift_config(tmp: Path, **monitoring: object) -> object:
    """A pipeline over the seasonal table with day-long windows (one period each)."""
    return parse_config(drift_config_body(tmp, **monitoring))


def drift_config_body(tmp: Path, **monitoring: object) -> dict:
    """drift_config as a plain mapping (to write a pipeline.yaml for the CLI)."""
    schema = {"entity_key": "customer_id", "event_timestamp": "event_ts", "label": "label", "features": FEATURES}
    return replay_config_body(tmp, schema, "churn", {}, {"window_s": PERIOD_S, "min_rows": 200, "rules": RULES,
                                                         "feedback": FEEDBACK, **monitoring})  # fmt: skip


def replay_config_body(tmp: Path, schema: dict, model_name: str, features: dict, monitoring: dict) -> dict:
    """A pipeline under `tmp` for a replayed table (scored in-process, log times = event times)."""
    return {
        "data": {"source": {"path": str(tmp / "raw"), "format": "parquet"}, "schema": schema,
                 "output": {"root": str(tmp / "ingested")}},
        "features": {"store_root": str(tmp / "features"), **features},
        "training": {"run_root": str(tmp / "runs"), "workers": 1, "checkpoint_every": 500,
                     "logreg": {"optimizer": "newton", "epochs": 50}},
        "registry": {"db_path": str(tmp / "registry.db"), "artifact_root": str(tmp / "artifacts"),
                     "model_name": model_name},
        "serving": {"prediction_log": str(tmp / "predlog")},
        "monitoring": {"root": str(tmp / "monitoring"), "grace_s": 0, **monitoring},
    }  # fmt: skip


def period(k: int, rows: int = ROWS, start: datetime = START, period_s: float = PERIOD_S) -> pa.Table:
    """Period k of the table (deterministic)."""
    return seasonal_period(k, rows, SEED, start, period_s)


def base_model(cfg, tables: list[pa.Table], drop: tuple[str, ...] = ("p_true",)):
    """Ingest `tables`, build features, train and register the base model as @champion."""
    from ray_pipeline.data.ingest import ingest
    from ray_pipeline.features.build import build_features
    from ray_pipeline.registry.handoff import open_registry, register_run
    from ray_pipeline.storage import write_parquet
    from ray_pipeline.train.runner import train_model

    raw = pa.concat_tables(tables).drop_columns(list(drop))
    write_parquet(raw, cfg.data.source.path + "/part-0.parquet")
    ingest(cfg)
    build_features(cfg)
    registry = open_registry(cfg)
    name = cfg.registry.model_name
    base = register_run(registry, name, train_model(cfg, "logreg").run_dir)
    registry.set_alias(name, "champion", base.version, "base model")
    return registry


def serve_period(cfg, registry, rows: pa.Table, k: int) -> int:
    """Score a period with the model @champion serves (and, in shadow mode, the @challenger) and log it
    at the records' own times."""
    from ray_pipeline.registry.handoff import load
    from ray_pipeline.registry.traffic import current_traffic
    from ray_pipeline.serve.predlog import PredictionLog, rows_table

    schema, name = cfg.data.schema_, cfg.registry.model_name
    model = load(registry, f"models:/{name}@champion")
    inputs = rows.select(model.spec.input_columns)
    n = rows.num_rows
    base = {"request_id": [f"p{k}-{i // 100}" for i in range(n)], "row": [i % 100 for i in range(n)],
            "entity": rows[schema.entity_key].to_pylist(), "event_ts": rows[schema.event_timestamp].to_pylist(),
            "score": model.predict(inputs).outputs.tolist(), "model_name": [name] * n,
            "model_version": [model.version.version] * n, "variant": ["champion"] * n, "http_status": [200] * n}  # fmt: skip
    tables = [rows_table(base, inputs, START)]
    traffic = current_traffic(registry, name)
    challenger = registry.aliases(name).get(cfg.serving.traffic.challenger_alias)
    if traffic is not None and traffic.mode == "shadow" and challenger is not None:  # as a replica does
        shadow = load(registry, f"models:/{name}/{challenger}")
        scored = shadow.predict(rows.select(shadow.spec.input_columns)).outputs.tolist()
        tables.append(rows_table({**base, "score": scored, "model_version": [challenger] * n, "variant": ["shadow"] * n},
                                 inputs, START))  # fmt: skip
    table = pa.concat_tables(tables)
    ts = pa.concat_arrays([rows[schema.event_timestamp].combine_chunks()] * len(tables))
    table = table.set_column(table.schema.get_field_index("ts"), "ts", ts)
    log = PredictionLog(cfg.serving.prediction_log, flush_rows=10 * table.num_rows)  # written by close() itself
    log.append_table(table)
    log.close()
    return model.version.version


def deliver_labels(cfg, rows: pa.Table, path: Path) -> None:
    """Labels by entity and event time, as an upstream system sends them after the period."""
    from ray_pipeline.demo.replay import write_labels_csv
    from ray_pipeline.monitor.labels import ingest_labels

    keys = (cfg.data.schema_.entity_key, cfg.data.schema_.event_timestamp, cfg.data.schema_.label)
    labels = [{keys[0]: e, keys[1]: t.isoformat(), keys[2]: y} for e, t, y in zip(*(rows[c].to_pylist() for c in keys))]
    result = ingest_labels(cfg, write_labels_csv(path, labels))
    assert result.accepted == rows.num_rows, result.render()


def oracle_auc(k: int) -> float:
    """scikit-learn logistic regression (impute, scale, one-hot) retrained on every earlier labeled period."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = [c for c, f in FEATURES.items() if f["type"] != "category"]
    cat = [c for c, f in FEATURES.items() if f["type"] == "category"]
    earlier = pd.concat([period(j).to_pandas() for j in [*BASE_PERIODS, *SERVED] if j < k])
    prep = ColumnTransformer([("n", make_pipeline(SimpleImputer(), StandardScaler()), num),
                              ("c", OneHotEncoder(handle_unknown="ignore"), cat)])  # fmt: skip
    model = make_pipeline(prep, LogisticRegression(max_iter=2000)).fit(earlier[num + cat], earlier["label"])
    test = period(k).to_pandas()
    return float(roc_auc_score(test["label"], model.predict_proba(test[num + cat])[:, 1]))


def test_the_loop_holds_on_natural_drift(ray_session, tmp_path):
    from ray_pipeline.feedback.records import feedback_runs
    from ray_pipeline.workflow.loop import Loop

    cfg = drift_config(tmp_path)
    registry = base_model(cfg, [period(k) for k in BASE_PERIODS])

    table, results, fired, resolved = [], [], set(), set()
    mon = Loop(cfg)
    try:
        for k in SERVED:
            rows = period(k)
            served = serve_period(cfg, registry, rows, k)
            deliver_labels(cfg, rows, tmp_path / f"labels-{k}.csv")
            end = START + timedelta(seconds=(k + 1) * PERIOD_S)
            done = mon.run(since=START + timedelta(seconds=SERVED[0] * PERIOD_S), until=end)
            results += done
            busy = [r for r in done if r.rows]
            assert len(busy) == 1 and busy[0].rows == ROWS, [r.render() for r in done]
            live = {m["metric"]: m["value"] for m in busy[0].metrics if m["feature"] == f"v{served}/champion"}
            for r in done:
                fired |= {e["rule"] for e in r.events if e["status"] == "firing"}
                resolved |= {e["rule"] for e in r.events if e["status"] == "resolved"}
            fb = busy[0].feedback or {}
            gate = next((g for g in fb.get("gates", []) if g["metric"] == "log_loss"), None)
            interval = None if gate is None else f"{gate['gain']:+.2%} [{gate['lower']:+.2%}, {gate['upper']:+.2%}]"
            table.append({"period": k, "served": served, "auc": live["roc_auc"], "log_loss": live["log_loss"],
                          "oracle_auc": oracle_auc(k), "alerts": sorted(f"{e['rule']} {e['status']}" for r in done for e in r.events),
                          "decision": fb.get("decision"), "log_loss_gain": interval})  # fmt: skip
    finally:
        mon.close()
    print(f"{'period':>6} {'served':>6} {'auc':>6} {'logloss':>7} {'oracle':>6}  decision (log-loss gain, 95% interval)  alerts")
    for t in table:
        print(f"{t['period']:>6} {'v' + str(t['served']):>6} {t['auc']:.4f} {t['log_loss']:.4f}  {t['oracle_auc']:.4f}  "
              f"{(t['decision'] or '-') + (' ' + t['log_loss_gain'] if t['log_loss_gain'] else ''):<40} {', '.join(t['alerts'])}")
    print(f"mean live AUC {np.mean([t['auc'] for t in table]):.4f}, oracle {np.mean([t['oracle_auc'] for t in table]):.4f}")

    records = feedback_runs(cfg)
    assert records, "the drift never started a retrain"
    assert not [r for r in records if r.get("decision") == "failed"], records
    # no retrain on nothing new, none started by a window without traffic
    empty_windows = [r for r in results if r.rows == 0]
    assert empty_windows and not any(r.feedback for r in empty_windows)
    trained = [r for r in records if r.get("decision") not in ("skipped", None)]
    assert all(r["new_labels"] >= FEEDBACK["min_new_labels"] for r in trained)
    # every promotion cleared the bootstrap; no version is registered twice
    for r in records:
        if r["decision"] == "promoted":
            assert all(g["passed"] and g["lower"] > (0 if g["metric"] == "log_loss" else -0.011) for g in r["gates"]), r
    versions = registry.versions("churn")
    digests = [v.lineage["model_sha256"] for v in versions]
    assert len(digests) == len(set(digests))
    assert len(versions) == 1 + sum(1 for r in records if r.get("challenger")) + sum(1 for r in records if r.get("refit"))
    # each promotion serves its recipe refitted on every labeled row, the judging window included
    for r in records:
        if r["decision"] == "promoted":
            refit = registry.get("churn", int(r["refit"]["version"].rsplit("/", 1)[1]))
            assert refit.lineage["refit_of"] == int(r["challenger"].rsplit("/", 1)[1])
            assert refit.lineage["event_time_range"][1] >= r["data"]["holdout"]["events"]["to"], refit.lineage
    # the newest fed-back labels train: each retrain's training events reach the window before its holdout
    for r in trained:
        holdout_from = datetime.fromisoformat(r["data"]["holdout"]["from"])
        train_to = datetime.fromisoformat(r["data"]["train"]["events_to"])
        assert holdout_from - train_to < timedelta(seconds=2 * PERIOD_S), r["data"]
        assert r["data"]["holdout"]["rows"] == ROWS
    assert any(r["decision"] == "promoted" for r in records)
    # quality: the served model keeps up with an oracle retrained on all earlier periods
    served_auc, oracle = np.mean([t["auc"] for t in table]), np.mean([t["oracle_auc"] for t in table])
    assert served_auc >= oracle - 0.02, (served_auc, oracle)
    # alerts have a lifecycle: the seasonal inputs never fire one; whatever fired resolved
    assert "input_drift" in fired
    seasonal = {n for n, f in FEATURES.items() if f.get("seasonal")}
    assert not [e for r in results for e in r.events if e["status"] == "firing" and e["feature"] in seasonal]
    assert fired <= resolved, (fired, resolved)
