"""The loop closed on the session's real Ray and Serve: traffic from the generator, window by window,
through the served model; labels arrive; the monitor raises (or does not raise) alerts; the feedback
loop retrains, gates, promotes, and serving hot-reloads.

Three runs share one ingested base table and one trained base model (registered under a name per
run): covariate shift + new categories, concept drift alone, and a control without drift."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ray_pipeline.config import SyntheticConfig
from ray_pipeline.serve.predlog import read_log

from .loop_helpers import (
    loop_config,
    next_window,
    send_windows,
    traffic,
    wait_for_version,
    write_labels,
)

pytestmark = pytest.mark.slow  # Ray Serve / Ray Train / the whole pipeline: `make test-fast` skips these

PER_WINDOW = 2000
RULES = [
    {"name": "input_drift", "metric": "psi", "op": ">", "threshold": 0.25, "severity": "critical",
     "summary": "an input or the scores drifted"},
    {"name": "performance", "metric": "log_loss_ratio", "op": ">", "threshold": 1.2, "severity": "warning",
     "summary": "live log-loss well above the test log-loss"},
]  # fmt: skip
# no lookback: the retrain learns from the 20k base rows and every fed-back window, newest included
FEEDBACK = {"triggers": {"rules": ["input_drift", "performance"]}, "min_labeled_rows": 1000, "cooldown_s": 3600,
            "holdout_windows": 1}  # fmt: skip
# Large amounts far from home become common: the base model's linear fit of that interaction is off there.
SHIFT = {"start": "2024-02-04T00:00:00Z", "covariate_shift": {"amount": {"loc": 2.0}, "distance_km": {"loc": 1.5}},
         "new_categories": {"merchant_category": 0.3}}  # fmt: skip
CONCEPT = {"start": "2024-02-04T00:00:00Z", "concept_drift": {"intercept": -1.6}}


@pytest.fixture(scope="module")
def base(ray_session, tmp_path_factory):
    """20k pre-drift rows ingested, features built, a logistic model trained once."""
    from ray_pipeline.data.ingest import ingest
    from ray_pipeline.synthetic.transactions import generate
    from ray_pipeline.features.build import build_features
    from ray_pipeline.train.runner import train_model

    shared = tmp_path_factory.mktemp("loop-shared")
    cfg = loop_config(shared / "base", shared, "base")
    generate(SyntheticConfig(rows=20_000, seed=1, start="2024-01-01T00:00:00Z", days=31, entities=2000),
             str(shared / "raw"))  # fmt: skip
    ingest(cfg)
    build_features(cfg)
    run = train_model(cfg, "logreg")
    return {"shared": shared, "run_dir": run.run_dir}


def _scenario(base, tmp_path, name: str):
    from ray_pipeline.registry.handoff import open_registry, register_run

    # the quiet 3 s windows between sends must not resolve an alert as stale: these tests watch it
    # resolve on traffic that no longer drifts
    cfg = loop_config(tmp_path, base["shared"], name, rules=RULES, feedback=FEEDBACK, stale_windows=100)
    registry = open_registry(cfg)
    v = register_run(registry, name, base["run_dir"])
    registry.set_alias(name, "champion", v.version, "test setup")
    return cfg, registry


def _monitor(cfg):
    from ray_pipeline.workflow.loop import Loop

    mon = Loop(cfg)
    try:
        return mon.run()
    finally:
        mon.close()


def _deploy(cfg):
    from ray_pipeline.serve.deploy import deploy

    return deploy(cfg)


def _labels(cfg, tmp_path, labels, tag):
    from ray_pipeline.monitor.labels import ingest_labels

    result = ingest_labels(cfg, write_labels(tmp_path / f"labels-{tag}.csv", labels))
    assert result.accepted == len(labels) and not result.quarantined
    return result


def _fired(results, rule):
    return [i for i, r in enumerate(results) for e in r.events if e["rule"] == rule and e["status"] == "firing"]


def _busy(results):
    return [r for r in results if r.rows > 0]


def test_covariate_shift_fires_retrains_promotes_and_matches_an_oracle(base, tmp_path):
    from ray import serve

    from ray_pipeline.serve.client import http_json

    cfg, registry = _scenario(base, tmp_path, "shift")
    url = _deploy(cfg)
    try:
        before = traffic(11, 2 * PER_WINDOW, "2024-02-01T00:00:00Z", 3)
        after = traffic(12, 3 * PER_WINDOW, "2024-02-04T00:00:00Z", 3, SHIFT)
        labels = send_windows(url, cfg, before, PER_WINDOW) + send_windows(url, cfg, after, PER_WINDOW)
        next_window(offset=2.5)  # the last window closed, its grace passed, the log is flushed
        _labels(cfg, tmp_path, labels, "1")
        results = _monitor(cfg)
        busy = _busy(results)
        assert [r.rows for r in busy] == [PER_WINDOW] * 5, [r.render() for r in results]
        assert not any(e for r in busy[:2] for e in r.events), "pre-drift traffic raised an alert"
        fired = [i for i, r in enumerate(busy) if any(e["rule"] == "input_drift" for e in r.events)]
        assert fired and fired[0] in (2, 3), "the drift alert fires within 2 windows of the shift"
        drifted = {m["feature"] for m in busy[2].metrics if m["verdict"] == "drift"}
        assert {"amount", "merchant_category"} <= drifted
        record = next(r.feedback for r in results if r.feedback)
        assert record["decision"] == "promoted", (record.get("gate_report"), record.get("data"), record.get("why"))
        # what serves is the promoted recipe refitted on every labeled row, the judging window included
        new_version = int(record["refit"]["version"].rsplit("/", 1)[1])
        assert registry.aliases("shift")["champion"] == new_version
        assert registry.get("shift", new_version).lineage["refit_of"] == int(record["challenger"].rsplit("/", 1)[1])
        wait_for_version(url, new_version)  # hot reload

        # GET /model carries the alerts about the served version; the old version's alert is not its
        status, info = http_json(url + "/model")
        assert status == 200 and isinstance(info["alerts"], list)

        later = traffic(13, 2 * PER_WINDOW, "2024-02-07T00:00:00Z", 2, SHIFT)
        labels_after = send_windows(url, cfg, later, PER_WINDOW)
        next_window(offset=2.5)  # the last window closed, its grace passed, the log is flushed
        _labels(cfg, tmp_path, labels_after, "2")
        post = _busy(_monitor(cfg))
        assert [r.rows for r in post] == [PER_WINDOW] * 2
        assert any(e["rule"] == "input_drift" and e["status"] == "resolved" for r in post for e in r.events), \
            [r.render() for r in post]
        live = [m["value"] for r in post for m in r.metrics
                if m["metric"] == "log_loss" and m["feature"] == f"v{new_version}/champion"]  # fmt: skip
        assert len(live) == 2
        oracle = _oracle_log_loss(cfg, later)
        assert np.mean(live) <= 1.05 * oracle, (live, oracle)
    finally:
        serve.delete(cfg.serving.app_name)


def _oracle_log_loss(cfg, events) -> float:
    """Log-loss on `events` of a model trained directly on 20k post-drift rows (scikit-learn lbfgs)."""
    import ray.data
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from ray_pipeline.features.fit import fit
    from ray_pipeline.features.transform import transform_table

    train = pa.Table.from_pylist(traffic(21, 20_000, "2024-02-04T00:00:00Z", 3, SHIFT))
    spec = fit(ray.data.from_arrow(train), cfg.data.schema_, cfg.features)
    model = LogisticRegression(C=10.0, max_iter=1000).fit(transform_table(train, spec), train["label"].to_numpy())
    test = pa.Table.from_pylist(events)
    return float(log_loss(test["label"].to_numpy(), model.predict_proba(transform_table(test, spec))[:, 1]))


def test_concept_drift_keeps_input_drift_quiet_and_fires_the_performance_alert(base, tmp_path):
    from ray import serve

    cfg, registry = _scenario(base, tmp_path, "concept")
    cfg.monitoring.feedback.triggers.rules = []  # this run checks the alerts only
    url = _deploy(cfg)
    try:
        before = traffic(31, PER_WINDOW, "2024-02-01T00:00:00Z", 3)
        after = traffic(32, 2 * PER_WINDOW, "2024-02-04T00:00:00Z", 3, CONCEPT)
        labels = send_windows(url, cfg, before, PER_WINDOW) + send_windows(url, cfg, after, PER_WINDOW)
        next_window(offset=2.5)  # the last window closed, its grace passed, the log is flushed
        _labels(cfg, tmp_path, labels, "1")
        busy = _busy(_monitor(cfg))
        assert [r.rows for r in busy] == [PER_WINDOW] * 3
        assert not any(e["rule"] == "input_drift" for r in busy for e in r.events), "inputs did not change"
        assert not any(e for e in busy[0].events)
        assert any(e["rule"] == "performance" and e["status"] == "firing" for r in busy[1:] for e in r.events)
        ratio = [m["value"] for m in busy[1].metrics if m["metric"] == "log_loss_ratio"]
        assert ratio and ratio[0] > 1.2

        # a retrain on this traffic that searches instead of reusing settings: its best trial competes
        from ray_pipeline.workflow.retrain import retrain

        cfg.monitoring.feedback.hyperparameters = "search"
        cfg.monitoring.feedback.search_trials = 3
        cfg.training.search.scheduler = "fifo"
        record = retrain(cfg, reason="manual")
        searched = record["searches"]["logreg"]
        assert searched["trials"] == 3 and searched["finished"] == 3, record.get("error")
        assert record["decision"] == "promoted", (record.get("why"), record.get("gate_report"))
        version = registry.get("concept", registry.aliases("concept")["champion"])
        assert version.lineage["search"]["id"] == searched["id"]
        assert version.lineage["search"]["params"] == searched["best_params"]
    finally:
        serve.delete(cfg.serving.app_name)


def test_control_without_drift_raises_nothing_and_promotes_nothing(base, tmp_path):
    from ray import serve

    cfg, registry = _scenario(base, tmp_path, "control")
    url = _deploy(cfg)
    try:
        events = traffic(41, 3 * PER_WINDOW, "2024-02-01T00:00:00Z", 6)
        labels = send_windows(url, cfg, events, PER_WINDOW)
        next_window(offset=2.5)  # the last window closed, its grace passed, the log is flushed
        _labels(cfg, tmp_path, labels, "1")
        results = _monitor(cfg)
        assert [r.rows for r in _busy(results)] == [PER_WINDOW] * 3
        assert not any(r.events for r in results)
        assert not any(r.feedback for r in results)
        assert registry.aliases("control") == {"champion": 1}
        log = read_log(cfg.serving.prediction_log)
        assert log.num_rows == 3 * PER_WINDOW
        assert log.schema.field("amount").type == pa.float64() and log.schema.field("channel").type == pa.string()
        assert set(log["variant"].to_pylist()) == {"champion"}
    finally:
        serve.delete(cfg.serving.app_name)
