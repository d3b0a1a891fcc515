"""What the console reads and decides without a browser: access rules, the run index, promotion
attempts, traffic settings, paged registry reads, and charts that carry the numbers of the table
they are drawn from (the console's SVG and the per-window report's PNG charts)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from starlette.requests import Request

from ray_pipeline.console.access import COOKIE, Access, Denied
from ray_pipeline.registry.store import Registry

from .helpers import make_run, two_version_registry


def request(host: str = "127.0.0.1", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "client": (host, 5000)})


def test_without_a_token_pages_are_loopback_only_and_read_only():
    access = Access(None)
    access.check_page(request("127.0.0.1"))
    access.check_page(request("::1"))
    with pytest.raises(Denied) as far:
        access.check_page(request("10.1.2.3"))
    assert far.value.status == 403 and "loopback" in far.value.message
    with pytest.raises(Denied) as act:
        access.check_action(request("127.0.0.1"), {"csrf": ""})
    assert act.value.status == 403 and "token_env" in act.value.message


def test_with_a_token_pages_and_actions_need_it_and_actions_the_csrf_token():
    access = Access("s3cret")
    with pytest.raises(Denied) as anon:
        access.check_page(request("127.0.0.1"))  # loopback is no exception once a token is set
    assert anon.value.login
    access.check_page(request("10.1.2.3", {"Authorization": "Bearer s3cret"}))
    with pytest.raises(Denied):
        access.check_page(request("10.1.2.3", {"Authorization": "Bearer s3cre"}))
    cookie = {"Cookie": f"{COOKIE}={access.session_value}"}
    access.check_page(request("10.1.2.3", cookie))
    assert "s3cret" not in access.session_value and "s3cret" not in access.csrf()
    access.check_action(request("10.1.2.3", cookie), {"csrf": access.csrf()})
    with pytest.raises(Denied) as forged:
        access.check_action(request("10.1.2.3", cookie), {})
    assert forged.value.status == 403 and "CSRF" in forged.value.message
    with pytest.raises(Denied):
        access.check_action(request("10.1.2.3"), {"csrf": access.csrf()})  # the CSRF token alone is not the token
    assert access.login("s3cret") and not access.login("s3cre") and not Access(None).login("")


def test_every_promotion_attempt_is_recorded_with_the_gate_numbers(tmp_path):
    from ray_pipeline.config import GateRule
    from ray_pipeline.registry.attempts import attempts
    from ray_pipeline.registry.gates import PromotionRefused, promote

    registry = two_version_registry(tmp_path)  # v1 (log_loss 0.40) holds @champion; v2 is better
    gates = {"log_loss": GateRule(min_improvement=0.0)}
    promote(registry, "fraud", 2, "champion", gates, actor="alice")
    with pytest.raises(PromotionRefused):
        promote(registry, "fraud", 1, "champion", gates, actor="bob")
    [refused] = attempts(registry, "fraud", 1)
    [passed] = attempts(registry, "fraud", 2)
    assert (passed.outcome, passed.against_version, passed.actor) == ("passed", 1, "alice")
    assert (refused.outcome, refused.against_version, refused.actor) == ("refused", 2, "bob")
    assert re.search(r"FAIL log_loss .*0\.4 vs 0\.3", refused.report), refused.report
    assert registry.aliases("fraud")["champion"] == 2


def test_the_run_index_syncs_from_run_directories_and_sorts_filters_and_pages_in_sql(tmp_path):
    from ray_pipeline.registry.handoff import register_run
    from ray_pipeline.registry.runs import get_runs, query_runs, registered_as, sync_runs

    root = tmp_path / "runs"
    dirs = [make_run(root, loss, 0.9 - loss, seed=i) for i, loss in enumerate([0.5, 0.3, 0.4, 0.2, 0.6])]
    (root / "not-a-run").mkdir()  # Ray Train's files of a run in progress: left out
    registry = Registry(tmp_path / "reg.db", tmp_path / "art")
    assert sync_runs(registry, str(root)) == 5
    assert sync_runs(registry, str(root)) == 0
    total, page = query_runs(registry, sort="log_loss", descending=False, offset=1, limit=2)
    assert total == 5 and [r.metrics["log_loss"] for r in page] == [0.3, 0.4]
    assert query_runs(registry, kind="xgboost")[0] == 0
    v = register_run(registry, "fraud", dirs[1])
    [run] = get_runs(registry, [dirs[1].name])
    assert registered_as(registry, run) == [("fraud", v.version)]


def test_paged_versions_and_history_newest_first(tmp_path):
    from ray_pipeline.registry.aliases import history_page
    from ray_pipeline.registry.versions import model_names, versions_page

    registry = two_version_registry(tmp_path)
    registry.set_alias("fraud", "champion", 2, "up")
    registry.set_alias("fraud", "challenger", 1, "side")
    assert model_names(registry) == ["fraud"]
    total, versions = versions_page(registry, "fraud", 0, 1)
    assert total == 2 and versions[0].version == 2
    total, changes = history_page(registry, "fraud", 0, 2)
    assert total == 3 and [c.reason for c in changes] == ["side", "up"]
    assert history_page(registry, "fraud", version=2)[0] == 1


def test_traffic_settings_are_checked_and_the_newest_holds(tmp_path):
    from ray_pipeline.registry.database import RegistryError
    from ray_pipeline.registry.traffic import current_traffic, set_traffic, traffic_history

    registry = Registry(tmp_path / "reg.db", tmp_path / "art")
    assert current_traffic(registry, "fraud") is None
    set_traffic(registry, "fraud", "canary", 0.2, "alice")
    set_traffic(registry, "fraud", "off", 0.2, "bob")
    assert current_traffic(registry, "fraud").mode == "off"
    assert [t.actor for t in traffic_history(registry, "fraud")] == ["bob", "alice"]
    for mode, share in (("split", 0.1), ("canary", 1.5)):
        with pytest.raises(RegistryError):
            set_traffic(registry, "fraud", mode, share)


def test_a_replica_takes_the_traffic_split_set_in_the_registry(tmp_path):
    from ray_pipeline.registry.traffic import set_traffic
    from ray_pipeline.serve.replica import CHALLENGER, ModelSet

    registry = two_version_registry(tmp_path)
    registry.set_alias("fraud", "challenger", 2, "test")
    models = ModelSet(registry, "fraud", "champion", mode="off", seed=0)
    assert models.models[CHALLENGER] is None
    set_traffic(registry, "fraud", "canary", 1.0)
    assert "traffic: off 0 -> canary 1" in models.refresh()
    variant, model = models.pick()
    assert (variant, model.version.version) == ("challenger", 2)


def _monitoring_table(tmp: Path):
    from ray_pipeline.config import MonitoringConfig
    from ray_pipeline.monitor.job import TABLE_SCHEMA
    from ray_pipeline.storage import write_parquet

    m = MonitoringConfig(root=str(tmp / "monitoring"))
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    values = [0.02, 0.05, 0.4]
    for i, v in enumerate(values):
        s, e = start + timedelta(hours=i), start + timedelta(hours=i + 1)
        rows = [("psi", "amount", 1, v, "drift" if v > 0.25 else "ok"), ("psi", "channel", 1, v / 2, "ok")]
        table = pa.table({"window_start": [s] * 2, "window_end": [e] * 2,
                          **{c: [r[k] for r in rows] for k, c in enumerate(("metric", "feature", "model_version", "value", "verdict"))}},
                         schema=TABLE_SCHEMA)  # fmt: skip
        write_parquet(table, f"{m.table}/window={s:%Y%m%dT%H%M%S}.parquet")
    return m, values


def test_a_monitoring_chart_draws_the_values_of_the_table_and_the_rule_line(tmp_path):
    from ray_pipeline.console.charts import line_chart
    from ray_pipeline.monitor.history import MonitoringTable

    m, values = _monitoring_table(tmp_path)
    table = MonitoringTable(m)
    series = table.series("psi", "amount", 1)
    assert series.values == values and table.windows() == 3
    assert table.series("psi", "amount", 1, last=2).values == values[1:]
    assert table.series("psi", "channel").values == [v / 2 for v in values]
    svg = line_chart("psi amount", series.window_ends, {"psi": series.values},
                     {"rule input_drift": 0.25, "psi alert": 0.25, "psi warn": 0.1})  # fmt: skip
    drawn = json.loads(re.search(r'data-values="([^"]*)"', svg).group(1).replace("&quot;", '"'))
    assert drawn == values
    lines = dict(re.findall(r'data-threshold="([^"]*)" data-name="([^"]*)"', svg))
    assert lines == {"0.25": "rule input_drift / psi alert", "0.1": "psi warn"}  # one line per value
    # a new window file is read on the next refresh, the others are not read again
    import ray_pipeline.monitor.history as history

    reads = []
    original = history.pq.read_table
    history.pq.read_table = lambda *a, **k: reads.append(a[0]) or original(*a, **k)
    try:
        assert table.windows() == 3 and reads == []
    finally:
        history.pq.read_table = original


def test_the_window_reports_latency_chart_draws_the_windows_own_p50_and_p99():
    from ray_pipeline.monitor.report import latency_chart

    rows = [{"metric": "latency_p50_ms", "feature": s, "value": v, "model_version": None, "verdict": None}
            for s, v in (("lookup", 0.1), ("transform", 0.8), ("inference", 0.3))]  # fmt: skip
    rows += [{"metric": "latency_p99_ms", "feature": s, "value": v, "model_version": None, "verdict": None}
             for s, v in (("lookup", 0.5), ("transform", 2.5), ("inference", 1.1))]  # fmt: skip
    chart = latency_chart(rows)
    table = {(r["metric"], r["feature"]): r["value"] for r in rows}
    assert chart.labels == ["lookup", "transform", "inference"]
    assert chart.series["p50"] == [table[("latency_p50_ms", s)] for s in chart.labels]
    assert chart.series["p99"] == [table[("latency_p99_ms", s)] for s in chart.labels]
    assert set(chart.series) == {"p50", "p99"}  # no "reference"/"current" pair for a window's own numbers
