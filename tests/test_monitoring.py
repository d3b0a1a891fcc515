"""Monitoring pieces on real files and the session's Ray: statistics against scipy computed
directly, bad prediction-log files, empty windows, labels quarantine, alert rules, the webhook, and
the Prometheus side checked by the real promtool."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ray_pipeline.config import ConfigError, parse_config
from ray_pipeline.features.profile import build_profile, save_profile
from ray_pipeline.monitor import alerts
from ray_pipeline.registry.handoff import open_registry, register_run
from ray_pipeline.serve.predlog import PredictionLog, rows_table

from .conftest import require_binary
from .helpers import SPEC, make_run, wait_until

T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=timezone.utc)
RULE = {"name": "input_drift", "metric": "psi", "op": ">", "threshold": 0.25, "for_windows": 2}


def config(tmp: Path, **monitoring) -> dict:
    """A minimal pipeline config whose registry, log and monitoring live under `tmp`."""
    return {
        "data": {"source": {"path": "unused"}, "output": {"root": str(tmp / "out")},
                 "schema": {"entity_key": "customer_id", "event_timestamp": "ts", "label": "y",
                            "features": {"amount": {"type": "float"}, "channel": {"type": "category"}}}},
        "registry": {"db_path": str(tmp / "reg.db"), "artifact_root": str(tmp / "art"), "model_name": "fraud"},
        "serving": {"prediction_log": str(tmp / "predlog")},
        "monitoring": {"root": str(tmp / "mon"), "window_s": 60, "grace_s": 0, "min_rows": 10,
                       "rules": [RULE], **monitoring},
    }  # fmt: skip


def test_rules_on_unknown_metrics_and_feedback_on_unknown_rules_are_config_errors(tmp_path):
    bad_metric = config(tmp_path, rules=[{**RULE, "metric": "psii"}])
    with pytest.raises(ConfigError, match=r"monitoring\.rules\.0\.metric: unknown metric 'psii'"):
        parse_config(bad_metric, "p.yaml")
    bad_feedback = config(tmp_path, feedback={"triggers": {"rules": ["nope"]}})
    with pytest.raises(ConfigError, match=r"monitoring: feedback.triggers.rules names unknown rules \['nope'\]"):
        parse_config(bad_feedback, "p.yaml")


def _rows(rng, n: int, shift: float = 0.0, new_share: float = 0.0) -> pa.Table:
    amount = np.exp(rng.normal(3.0 + shift, 1.0, n))
    amount[rng.random(n) < 0.05] = np.nan
    channel = rng.choice(["pos", "online", "atm"], n, p=[0.6, 0.3, 0.1]).astype(object)
    channel[rng.random(n) < new_share] = "brand_new"
    return pa.table({"amount": pa.array(amount, from_pandas=True), "channel": pa.array(channel, pa.string())})


@pytest.fixture
def monitored(ray_session, tmp_path):
    """A registered version with a reference profile from 5,000 rows, and a monitor config."""
    import ray.data

    cfg = parse_config(config(tmp_path))
    rng = np.random.default_rng(0)
    run = make_run(tmp_path, 0.40, 0.80)
    save_profile(build_profile(ray.data.from_arrow(_rows(rng, 5000)), SPEC, rng.random(1000), bins=10), run)
    registry = open_registry(cfg)
    registry.set_alias("fraud", "champion", register_run(registry, "fraud", run).version)
    return cfg, rng


def _log(cfg, table: pa.Table, at: datetime, scores: np.ndarray) -> None:
    log = PredictionLog(cfg.serving.prediction_log, flush_rows=10**9, flush_s=3600)
    n = table.num_rows
    base = {"request_id": [f"r{at:%H%M}-{i}" for i in range(n)], "row": [0] * n, "score": scores.tolist(),
            "model_name": ["fraud"] * n, "model_version": [1] * n, "variant": ["champion"] * n,
            "http_status": [200] * n, "latency_inference_ms": [1.0] * n}  # fmt: skip
    log.append_table(rows_table(base, table, at))
    log.close()


def test_window_statistics_match_scipy_and_bad_files_and_empty_windows_are_reported(monitored):
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chisquare

    from ray_pipeline.monitor.job import Monitor

    cfg, rng = monitored
    _log(cfg, _rows(rng, 2000), T0 + timedelta(seconds=5), rng.random(2000))
    drifted = _rows(rng, 2000, shift=1.5, new_share=0.3)
    _log(cfg, drifted, T0 + timedelta(seconds=125), rng.random(2000))
    log_dir = Path(cfg.serving.prediction_log)
    corrupt = next(log_dir.rglob("part-*.parquet")).parent / "part-corrupt.parquet"
    corrupt.write_bytes(b"PAR1 truncated")
    mon = Monitor(cfg)
    try:
        results = mon.run(until=T0 + timedelta(minutes=3))
    finally:
        mon.close()
    assert [r.rows for r in results] == [2000, 0, 2000]  # the middle window is empty, and says so
    assert all(len(r.skipped) == 1 and r.skipped[0]["file"].endswith("part-corrupt.parquet") for r in results)
    assert "(empty)" in results[1].render()
    assert not [m for m in results[1].metrics if m["metric"] not in ("rows", "skipped_files")]
    assert not results[0].events and not results[2].events  # for_windows=2: one drifted window is not enough
    rule_state = json.loads(Path(cfg.monitoring.root, "state.json").read_text())["rules"]["input_drift"]
    assert rule_state["streak"] == 1  # the empty window neither reset nor advanced it

    # the same statistics computed directly from the rows with numpy/scipy
    ref = mon.refs["1"]
    values = {(m["metric"], m["feature"]): m["value"] for m in results[2].metrics}
    x = drifted["amount"].to_numpy(zero_copy_only=False)
    x = x[~np.isnan(x)]
    r = ref["numeric"]["amount"]
    q = np.bincount(np.searchsorted(r["edges"], x, side="right"), minlength=len(r["edges"]) + 1) / x.size
    p = np.asarray(r["shares"])
    pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    assert values[("psi", "amount")] == pytest.approx(np.sum((qf - pf) * np.log(qf / pf)), abs=1e-9)
    assert values[("ks", "amount")] == pytest.approx(np.max(np.abs(np.cumsum(p) - np.cumsum(q))), abs=1e-9)
    assert values[("js", "amount")] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-9)
    assert values[("out_of_range_rate", "amount")] == pytest.approx(np.mean((x < r["min"]) | (x > r["max"])), abs=1e-9)
    ch = drifted["channel"].to_pylist()
    c = ref["categorical"]["channel"]
    top = list(c["top"])
    counts = np.array([ch.count(k) for k in top] + [len(ch) - sum(ch.count(k) for k in top)], dtype=float)
    expected = np.maximum([*c["top"].values(), c["other"]], 1e-4)
    assert values[("chi2", "channel")] == pytest.approx(chisquare(counts, expected / expected.sum() * len(ch)).statistic)
    unseen = sum(1 for v in ch if v not in ("pos", "online"))  # what the model's FeatureSpec knows
    assert values[("unseen_rate", "channel")] == pytest.approx(unseen / len(ch), abs=1e-12)
    assert values[("psi", "amount")] > 0.25 and values[("psi", "channel")] > 0.25
    assert values[("null_rate", "amount")] == pytest.approx(1 - x.size / 2000, abs=1e-12)
    table = pa.concat_tables([pa.parquet.read_table(f) for f in sorted(Path(cfg.monitoring.table).glob("*.parquet"))])
    assert set(table["verdict"].to_pylist()) >= {"drift", None}
    assert (Path(results[2].report)).exists() and list(Path(results[2].report).parent.glob("*.png"))

    # a second run resumes after the last window: nothing twice, nothing skipped
    again = Monitor(cfg)
    try:
        assert again.run(until=T0 + timedelta(minutes=3)) == []
        assert [r.start for r in again.run(until=T0 + timedelta(minutes=5))] == [T0 + timedelta(minutes=3),
                                                                              T0 + timedelta(minutes=4)]
    finally:
        again.close()


def test_labels_for_unknown_requests_duplicates_and_bad_values_go_to_quarantine(monitored, tmp_path):
    from ray_pipeline.monitor.labels import accepted_labels, ingest_labels

    cfg, rng = monitored
    _log(cfg, _rows(rng, 3), T0, np.array([0.1, 0.2, 0.3]))
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,y\nr1000-0,0,1\nr1000-1,0,0\nr1000-0,0,1\nnope,0,1\nr1000-2,0,yes\n,0,1\n")
    result = ingest_labels(cfg, str(path))
    assert (result.read, result.accepted) == (6, 2)
    assert result.quarantined == {"duplicate": 1, "unknown_request": 1, "invalid_label": 1, "missing_key": 1}
    assert sorted(accepted_labels(cfg)["request_id"].to_pylist()) == ["r1000-0", "r1000-1"]
    quarantine = pa.parquet.read_table(result.quarantine_path).to_pylist()
    assert {q["_row"] for q in quarantine} == {3, 4, 5, 6}
    assert any("nope" in q["_detail"] for q in quarantine)
    again = ingest_labels(cfg, str(path))  # the same file twice: nothing accepted twice
    assert again.accepted == 0 and again.quarantined["duplicate"] == 3


def _rule_rows(value: float | None) -> list[dict]:
    return [] if value is None else [{"metric": "psi", "feature": "amount", "model_version": 1, "value": value,
                                      "verdict": None}]  # fmt: skip


def test_alerts_fire_after_n_windows_resolve_and_are_logged_once(tmp_path):
    cfg = parse_config(config(tmp_path))
    state: dict = {}
    fired = []
    for i, value in enumerate([0.5, None, 0.6, 0.7, 0.1]):
        start = T0 + timedelta(minutes=i)
        fired.append(alerts.evaluate(cfg.monitoring.rules, _rule_rows(value), state, start, start + timedelta(minutes=1)))
    assert [[e["status"] for e in f] for f in fired] == [[], [], ["firing"], [], ["resolved"]]
    assert fired[2][0]["value"] == 0.6 and fired[4][0]["value"] == 0.1  # each event says what it saw
    log = str(tmp_path / "alerts.jsonl")
    events = [e for f in fired for e in f]
    assert len(alerts.append_log(log, events)) == 2
    assert alerts.append_log(log, events) == []  # a replayed window writes nothing twice
    body = alerts.alertmanager_body(events)
    assert body[0]["labels"]["alertname"] == "input_drift" and "endsAt" in body[1]


def test_webhook_retries_with_backoff_without_blocking(tmp_path):
    from ray_pipeline.config import WebhookConfig

    received, attempts = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            attempts.append(1)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if len(attempts) < 3:  # the receiver is down twice, then accepts
                self.send_response(503)
                self.end_headers()
                return
            received.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = alerts.Webhook(WebhookConfig(url=f"http://127.0.0.1:{server.server_port}/", retries=3, backoff_s=0.05,
                                        format="alertmanager"))  # fmt: skip
    event = {"id": "x", "rule": "input_drift", "severity": "critical", "labels": {}, "summary": "s", "feature": "amount",
             "model_version": 1, "value": 0.5, "window_start": "a", "window_end": "b", "starts_at": "b",
             "status": "firing"}  # fmt: skip
    hook.send([event])  # returns at once; delivery happens on the webhook's thread
    hook.close(timeout=10)
    server.shutdown()
    assert len(attempts) == 3 and hook.delivered == 1
    assert received[0][0]["labels"] == {"alertname": "input_drift", "severity": "critical", "feature": "amount",
                                        "model_version": "1"}  # fmt: skip


@pytest.fixture
def promtool() -> str:
    return require_binary("promtool", "prometheus")


def test_exported_rules_pass_promtool_check_and_unit_tests(promtool, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ray_pipeline.cli import app

    cfg_path = tmp_path / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(config(tmp_path, rules=[RULE, {"name": "few_rows", "metric": "rows",
                                                                       "op": "<", "threshold": 10}])))  # fmt: skip
    out = tmp_path / "alerts.yml"
    result = CliRunner().invoke(app, ["monitor", "rules", "--config", str(cfg_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # psi above 0.25 for two 60 s windows fires input_drift; a short spike does not
    tests = {"rule_files": [str(out)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": 'rp_monitor_value{metric="psi",feature="amount",model_version="1"}',
             "values": "0.05 0.5 0.05 0.5 0.6 0.7 0.7"},
            {"series": 'rp_monitor_value{metric="rows",feature="all",model_version=""}', "values": "100x6"}],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "input_drift", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "input_drift",
             "exp_alerts": [{"exp_labels": {"severity": "warning"},
                             "exp_annotations": {"summary": "psi > 0.25", "value": "0.7"}}]},
            {"eval_time": "5m", "alertname": "few_rows", "exp_alerts": []}]}]}  # fmt: skip
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    unit = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_gauges_are_valid_prometheus_exposition(promtool, tmp_path):
    from prometheus_client import generate_latest

    from ray_pipeline.monitor.prom import MonitorGauges

    gauges = MonitorGauges()
    gauges.update(_rule_rows(0.4), T0.timestamp(), [{"rule": "input_drift", "severity": "warning"}], ["input_drift"])
    gauges.write_textfile(str(tmp_path / "metrics.prom"))
    text = (tmp_path / "metrics.prom").read_text()
    assert 'rp_monitor_value{feature="amount",metric="psi",model_version="1"} 0.4' in text
    assert generate_latest(gauges.registry).decode() == text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_a_real_prometheus_scrapes_the_monitor_gauges(tmp_path):
    import urllib.parse
    import urllib.request

    from ray_pipeline.monitor.prom import MonitorGauges
    from ray_pipeline.runtime import free_port

    binary = require_binary("prometheus", "prometheus")
    port, web = free_port(), free_port()
    gauges = MonitorGauges(port)
    gauges.update(_rule_rows(0.42), T0.timestamp(), [], ["input_drift"])
    (tmp_path / "prometheus.yml").write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: monitor\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        query = urllib.parse.quote('rp_monitor_value{metric="psi"}')

        def scraped() -> list:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/query?query={query}", timeout=5) as r:
                    return json.loads(r.read())["data"]["result"]
            except OSError:
                return []  # not listening yet

        result = wait_until(scraped, 60, every=1)
        assert result, "Prometheus never scraped the monitor's gauges"
        assert result[0]["metric"]["feature"] == "amount" and float(result[0]["value"][1]) == 0.42
    finally:
        proc.terminate()
        proc.wait(30)
        gauges.close()


def test_two_retrains_never_run_at_once(tmp_path):
    from ray_pipeline.registry.store import Registry

    registry = Registry(tmp_path / "reg.db", tmp_path / "art")
    assert registry.acquire_lock("retrain:fraud", "run-a", 3600) is None
    assert registry.acquire_lock("retrain:fraud", "run-b", 3600) == "run-a"  # held: the second trigger waits
    registry.release_lock("retrain:fraud", "run-b")  # only the holder can release
    assert registry.acquire_lock("retrain:fraud", "run-b", 3600) == "run-a"
    registry.release_lock("retrain:fraud", "run-a")
    assert registry.acquire_lock("retrain:fraud", "run-b", 0.0) is None
    assert registry.acquire_lock("retrain:fraud", "run-c", 3600) is None  # an expired lock is a crashed holder's


def test_cli_labels_ingest_and_monitor(monitored, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ray_pipeline.cli import app

    cfg, rng = monitored
    _log(cfg, _rows(rng, 300), T0 + timedelta(seconds=5), rng.random(300))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,y\n" + "".join(f"r1000-{i},{i % 2}\n" for i in range(300)) + "r-unknown,1\n")
    runner = CliRunner()
    result = runner.invoke(app, ["labels", "ingest", "--config", str(path), "--path", str(labels)])
    assert result.exit_code == 0, result.output
    assert "accepted 300" in result.output and "quarantined unknown_request: 1" in result.output
    result = runner.invoke(app, ["monitor", "--config", str(path), "--since", "2026-11-28T10:00:00",
                                 "--until", "2026-11-28T10:01:00"])
    assert result.exit_code == 0, result.output
    assert "window 2026-11-28T10:00:00 .. 10:01:00: 300 predictions" in result.output
    bad = runner.invoke(app, ["monitor", "--config", str(path), "--window", "10x"])
    assert bad.exit_code == 2 and "--window '10x'" in bad.output
