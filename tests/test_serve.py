"""The Ray Serve application on the session's local Ray: API contract, online features, auth,
hot reload without failed requests, metrics and the prediction log."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from ray_pipeline.features.online import SQLiteOnlineStore
from ray_pipeline.registry.models import load, promote
from ray_pipeline.serve.predlog import read_log

from .helpers import KEY, call, scrape_until, serve_config, two_version_registry

pytestmark = pytest.mark.slow  # Ray Serve / Ray Train / the whole pipeline: `make test-fast` skips these

SENT = {"count": 0}  # records scored, to check the prediction log against


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory, monkeypatch_module):
    from ray import serve

    from ray_pipeline.serve.app import deploy

    tmp = tmp_path_factory.mktemp("serve")
    cfg = serve_config(tmp, "test-app", max_records_per_request=50, api_key_env="RP_TEST_KEY")
    registry = two_version_registry(tmp)
    now = int(datetime.now(timezone.utc).timestamp() * 1e6)
    old = now - 7200 * 10**6  # older than the view's 1-hour TTL
    SQLiteOnlineStore(tmp / "online.db").write(
        "profile", [("7", now, {"amount": 20.0, "channel": "pos"}), ("8", old, {"amount": 1.0, "channel": "pos"})]
    )
    monkeypatch_module.setenv("RP_TEST_KEY", KEY)
    url = deploy(cfg)
    yield {"url": url, "cfg": cfg, "registry": registry, "tmp": tmp}
    serve.delete(cfg.serving.app_name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def predict(url: str, records: list[dict]) -> dict:
    status, body = call(url, "/predict", {"records": records})
    assert status == 200, body
    SENT["count"] += len(records)
    return body


def test_records_are_scored_like_the_registered_model(served):
    records = [{"amount": 12.5, "channel": "pos"}, {"amount": None, "channel": "unseen"}, {}]
    body = predict(served["url"], records)
    expected = load(served["registry"], "models:/fraud/1").predict_proba(records)
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]], expected, rtol=1e-12)
    assert body["model"] == "fraud" and body["version"] == 1 and len(body["request_id"]) == 32
    assert body["variant"] == "champion"
    assert predict(served["url"], records[:1])["request_id"] != body["request_id"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"records": [{"amount": "12.5"}]}, 422, "amount"),
        ({"records": [{"channel": 5}]}, 422, "channel"),
        ({"records": [{"amt": 1.0}]}, 422, "amt"),
        ({"records": [{"amount": 1.0}], "entity_ids": [1]}, 422, "exactly one of records or entity_ids"),
        ({}, 422, "exactly one"),
        ({"records": [{"amount": 1.0}] * 51}, 413, "at most 50"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(served, body, status, needle):
    got, detail = call(served["url"], "/predict", body)
    assert got == status
    assert needle in json.dumps(detail)


def test_entity_ids_use_the_online_store_with_per_row_status(served):
    status, body = call(served["url"], "/predict", {"entity_ids": [7, "unknown-1"]})
    assert status == 200, body
    known, unknown = body["predictions"]
    expected = load(served["registry"], "models:/fraud/1").predict_proba([{"amount": 20.0, "channel": "pos"}])[0]
    assert known == {"probability": pytest.approx(expected, rel=1e-12), "status": "ok"}
    assert unknown == {"probability": None, "status": "unknown_entity"}
    SENT["count"] += 1
    status, body = call(served["url"], "/predict", {"entity_ids": ["nobody", 8]})
    assert status == 200
    assert body["predictions"] == [
        {"probability": None, "status": "unknown_entity"},
        {"probability": None, "status": "expired"},
    ]


def test_api_key_is_required(served):
    status, body = call(served["url"], "/predict", {"records": [{}]}, key=None)
    assert status == 401 and "X-API-Key" in body["detail"]
    assert call(served["url"], "/predict", {"records": [{}]}, key="wrong")[0] == 401


def test_health_model_and_openapi(served):
    assert call(served["url"], "/healthz") == (200, {"status": "ok"})
    status, info = call(served["url"], "/model")
    assert status == 200 and info["version"] == 1 and len(info["feature_spec_hash"]) == 64 and info["loaded_at"]
    assert info["traffic"] == {"mode": "off"}
    with urllib.request.urlopen(served["url"] + "/openapi.json") as r:
        spec = json.loads(r.read())
    assert "/predict" in spec["paths"] and "Record" in json.dumps(spec["components"])
    with urllib.request.urlopen(served["url"] + "/docs") as r:
        assert r.status == 200


def test_promote_and_rollback_under_load_without_errors(served):
    url, registry = served["url"], served["registry"]
    errors, versions, stop = [], [], threading.Event()

    def stream() -> None:
        while not stop.is_set():
            status, body = call(url, "/predict", {"records": [{"amount": 3.0, "channel": "pos"}]})
            if status != 200:
                errors.append((status, body))
            else:
                SENT["count"] += 1
                versions.append(body["version"])

    workers = [threading.Thread(target=stream) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        promote(registry, "fraud", 2, "champion", {})
        deadline = time.time() + 20
        while time.time() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.1)
        assert versions and versions[-1] == 2, "replicas did not switch to the promoted version"
        registry.rollback("fraud", "champion")
        deadline = time.time() + 20
        while time.time() < deadline and versions[-1] != 1:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert errors == []
    assert versions[-1] == 1 and 2 in versions
    assert call(url, "/model")[1]["version"] == 1


def test_metrics_are_exported(served):
    predict(served["url"], [{"amount": 1.0, "channel": "pos"}] * 5)
    wanted = [
        "ray_rp_predictions_total", "ray_rp_score_bucket", "ray_rp_batch_size_bucket",
        "ray_rp_missing_features_total", "ray_rp_model_load_seconds", "ray_serve_num_http_requests_total",
    ]  # fmt: skip

    def ours(text: str) -> list[str]:
        # This app's prediction counter for version 1 (other apps on the cluster export too).
        return [
            line
            for line in text.splitlines()
            if line.startswith("ray_rp_predictions_total") and 'application="test-app"' in line
            and 'model_version="1"' in line
        ]  # fmt: skip

    text = scrape_until(lambda text: all(w in text for w in wanted) and bool(ours(text)))
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not on the metrics port: {missing}"
    assert ours(text), "no ray_rp_predictions_total for application test-app, model_version 1"
    assert float(ours(text)[0].rsplit(" ", 1)[1]) >= 5


def test_local_deploy_onto_a_running_serve_skips_the_port_check(served):
    """The demo deploys with local=True; when Serve already runs, its port is in use by Serve itself."""
    from urllib.parse import urlparse

    from ray import serve

    from ray_pipeline.serve.app import deploy

    port = urlparse(served["url"]).port
    cfg = serve_config(served["tmp"], "second-app", port=port, prediction_log=str(served["tmp"] / "predlog-2"))
    url = deploy(cfg, local=True)
    try:
        assert urlparse(url).port == port
        assert call(url, "/healthz", key=None) == (200, {"status": "ok"})
    finally:
        serve.delete("second-app")


def test_prediction_log_keeps_every_scored_record(served):
    from ray import serve

    serve.delete(served["cfg"].serving.app_name)  # graceful: replicas flush what they buffered
    everything = read_log(str(served["tmp"] / "predlog"))
    log = everything.filter(pc.not_equal(everything["variant"], "refused"))
    assert log.num_rows == SENT["count"]
    # refused requests are logged too (one row each, with their HTTP status) for monitoring to count
    refused = everything.filter(pc.equal(everything["variant"], "refused"))
    assert {401, 413, 422} <= set(refused["http_status"].to_pylist())
    assert refused["score"].null_count == refused.num_rows
    assert set(log.column("model_version").to_pylist()) == {1, 2}
    assert set(log.column("variant").to_pylist()) == {"champion"}
    assert len(set(log.column("request_id").to_pylist())) > 1
    files = list(Path(served["tmp"] / "predlog").rglob("part-*.parquet"))
    assert files and all("date=" in str(f) and "hour=" in str(f) for f in files)


def test_generated_serve_config_is_valid_and_strict(tmp_path):
    """Serve's schema ignores unknown keys, so check every key against the schema models too."""
    import yaml
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema
    from typer.testing import CliRunner

    from ray_pipeline.cli import app

    from .conftest import DEMO_CONFIG

    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(app, ["serve", "config", "--config", str(DEMO_CONFIG), "--out", str(out)])
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(body)

    def keys_known(data: dict, model) -> list[str]:
        return sorted(set(data) - set(model.model_fields))

    assert keys_known(body, ServeDeploySchema) == []
    for application in body["applications"]:
        assert keys_known(application, ServeApplicationSchema) == []
        assert application["import_path"] == "ray_pipeline.serve.entry:build"
        for deployment in application["deployments"]:
            assert keys_known(deployment, DeploymentSchema) == []
    committed = Path(__file__).resolve().parents[1] / "cluster" / "serve-demo.yaml"
    assert (
        yaml.safe_load(committed.read_text())["applications"][0]["deployments"]
        == body["applications"][0]["deployments"]
    )


def test_a_taken_port_is_named_before_serve_tries_it(tmp_path):
    import socket

    from ray_pipeline.serve.app import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = serve_config(tmp_path, "unused", port=taken.getsockname()[1])
        with pytest.raises(ValueError, match=rf"serving.port: 127.0.0.1:{cfg.serving.port} is already in use"):
            check_port_free(cfg)
    check_port_free(cfg)  # free again once the listener is gone
