"""The Ray Serve application on the session's local Ray: API contract, online features, auth,
hot reload without failed requests, metrics and the prediction log."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from ray_pipeline.config import FeatureColumn
from ray_pipeline.features.online import SQLiteOnlineStore
from ray_pipeline.features.spec import NumericSpec
from ray_pipeline.registry.gates import promote
from ray_pipeline.registry.handoff import load, register_run
from ray_pipeline.serve.predlog import read_log

from .helpers import KEY, SPEC, call, make_run, samples, scrape_until, serve_config, two_version_registry, wait_until

pytestmark = pytest.mark.slow  # Ray Serve / Ray Train / the whole pipeline: `make test-fast` skips these

RECORD = {"amount": 3.0, "channel": "pos"}


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory, monkeypatch_module):
    from ray import serve

    from ray_pipeline.serve.deploy import deploy

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
    return body


def test_records_are_scored_like_the_registered_model(served):
    records = [{"amount": 12.5, "channel": "pos"}, {"amount": None, "channel": "unseen"}, {}]
    body = predict(served["url"], records)
    expected = load(served["registry"], "models:/fraud/1").predict(records).probabilities
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]], expected, rtol=1e-12)
    assert body["model"] == "fraud" and body["version"] == 1 and len(body["request_id"]) == 32
    assert body["variant"] == "champion"
    assert predict(served["url"], records[:1])["request_id"] != body["request_id"]


def test_explain_returns_columns_that_add_up_to_the_logit_and_costs_nothing_unasked(served):
    records = [{"amount": 12.5, "channel": "pos"}, {"amount": None, "channel": "unseen"}]
    plain = predict(served["url"], records)
    assert all("explanation" not in p for p in plain["predictions"])
    status, body = call(served["url"], "/predict", {"records": records, "explain": True, "top_k": 1})
    assert status == 200, body
    for p, same in zip(body["predictions"], plain["predictions"]):
        assert p["probability"] == same["probability"]  # explaining does not change the answer
        why = p["explanation"]
        logit = np.log(p["probability"] / (1 - p["probability"]))
        assert why["bias"] + sum(c["value"] for c in why["contributions"]) + why["rest"] == pytest.approx(logit, abs=1e-6)
        assert len(why["contributions"]) == 1 and why["contributions"][0]["column"] in {"amount", "channel"}
    for bad in ({"records": records, "top_k": 0}, {"records": records, "explain": "yes"}):
        got, detail = call(served["url"], "/predict", bad)
        assert got == 422, detail
        assert list(jsonschema_errors(served["url"], bad)), f"the schema allows {bad}"


def jsonschema_errors(url: str, body: dict):
    """The OpenAPI request schema's complaints about `body`."""
    import jsonschema

    return jsonschema.Draft202012Validator(request_schema(url)).iter_errors(body)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"records": [{"amount": "12.5"}]}, 422, "amount"),
        ({"records": [{"channel": 5}]}, 422, "channel"),
        ({"records": [{"amt": 1.0}]}, 422, "amt"),
        ({"records": [{"amount": 1.0}], "entity_ids": [1]}, 422, "exactly one of records or entity_ids"),
        ({}, 422, "exactly one"),
        ({"records": None, "entity_ids": [7]}, 422, "records"),
        ({"records": [{"amount": 1.0}] * 51}, 413, "at most 50"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field_and_the_schema_refuses_them_too(served, body, status, needle):
    import jsonschema

    got, detail = call(served["url"], "/predict", body)
    assert got == status
    assert needle in json.dumps(detail)
    errors = list(jsonschema.Draft202012Validator(request_schema(served["url"])).iter_errors(body))
    assert errors, f"the OpenAPI schema allows {body}, which the API refuses with {status}"


def openapi(url: str) -> dict:
    """The served OpenAPI document."""
    with urllib.request.urlopen(url + "/openapi.json") as r:
        return json.loads(r.read())


def request_schema(url: str) -> dict:
    """/predict's request-body schema from the served OpenAPI document, with what it refers to."""
    doc = openapi(url)
    return {**doc["components"]["schemas"]["PredictRequest"], "components": doc["components"]}


def test_every_body_the_schema_allows_is_answered(served):
    """Schema-based fuzzing: whatever /openapi.json says /predict takes, it answers."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis_jsonschema import from_schema

    url = served["url"]

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(from_schema(request_schema(url)))
    def answered(body: dict) -> None:
        status, answer = call(url, "/predict", body)
        assert status == 200, (body, answer)
        sent = body["records"] if "records" in body else body["entity_ids"]
        assert len(answer["predictions"]) == len(sent)

    answered()


def test_entity_ids_use_the_online_store_with_per_row_status(served):
    status, body = call(served["url"], "/predict", {"entity_ids": [7, "unknown-1"]})
    assert status == 200, body
    known, unknown = body["predictions"]
    expected = load(served["registry"], "models:/fraud/1").predict([{"amount": 20.0, "channel": "pos"}]).probabilities[0]
    assert known == {"probability": pytest.approx(expected, rel=1e-12), "status": "ok"}
    assert unknown == {"probability": None, "status": "unknown_entity"}
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
    assert info["inputs"] == ["amount", "channel"]
    doc = openapi(served["url"])
    assert set(doc["components"]["schemas"]["Record"]["properties"]) == {"amount", "channel"}
    assert {"401", "413", "422", "503"} <= set(doc["paths"]["/predict"]["post"]["responses"])
    assert "models:/fraud/1" in doc["info"]["description"]
    with urllib.request.urlopen(served["url"] + "/docs") as r:
        assert r.status == 200


@contextmanager
def steady_load(url: str, body: dict, threads: int = 4) -> Iterator[tuple[list, list]]:
    """`threads` clients posting `body` until the block ends: (versions answered, failures)."""
    versions: list[int] = []
    errors: list = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            status, answer = call(url, "/predict", body)
            if status != 200:
                errors.append((status, answer))
            else:
                versions.append(answer["version"])

    workers = [threading.Thread(target=stream) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        assert wait_until(lambda: len(versions) >= threads, 30, every=0.1), f"no answers under load: {errors[:3]}"
        yield versions, errors
    finally:
        stop.set()
        for w in workers:
            w.join()


def answered_by(versions: list[int], version: int) -> bool:
    """Wait until the latest answer under load comes from `version`."""
    return wait_until(lambda: versions[-1] == version, 20, every=0.1)


def test_promote_and_rollback_under_load_without_errors(served):
    url, registry = served["url"], served["registry"]
    with steady_load(url, {"records": [RECORD]}) as (versions, errors):
        promote(registry, "fraud", 2, "champion", {})
        assert answered_by(versions, 2), "replicas did not switch to the promoted version"
        registry.rollback("fraud", "champion")
        assert answered_by(versions, 1), "replicas did not switch back on rollback"
    assert errors == []
    assert 2 in versions and call(url, "/model")[1]["version"] == 1


def test_a_promoted_version_with_an_added_input_is_served_with_its_own_contract(served):
    """The request model follows the served version: v3 takes `age`, v1 refuses it."""
    url, registry = served["url"], served["registry"]
    age = NumericSpec(name="age", log1p=False, clip=None, fill=35.0, missing_indicator=False, mean=35.0, std=10.0,
                      count=100, missing=0)  # fmt: skip
    spec = SPEC.model_copy(update={"numeric": [*SPEC.numeric, age]})
    v3 = register_run(registry, "fraud", make_run(served["tmp"], 0.2, 0.95, seed=3, spec=spec)).version
    with_age = {**RECORD, "age": 70.0}
    status, detail = call(url, "/predict", {"records": [with_age]})
    assert status == 422 and "age" in json.dumps(detail), "v1 does not take age"
    with steady_load(url, {"records": [RECORD]}) as (versions, errors):  # callers that do not send age
        promote(registry, "fraud", v3, "champion", {}, force=True)
        assert answered_by(versions, v3)
        status, body = call(url, "/predict", {"records": [with_age]})
        assert status == 200 and body["version"] == v3, body
        expected = load(registry, f"models:/fraud/{v3}").predict([with_age, RECORD]).probabilities
        assert body["predictions"][0]["probability"] == pytest.approx(expected[0], rel=1e-12)
        assert expected[0] != pytest.approx(expected[1]), "age must change the score, or the check proves nothing"
        assert "age" in openapi(url)["components"]["schemas"]["Record"]["properties"]
        assert "age" in call(url, "/model")[1]["inputs"]
        registry.rollback("fraud", "champion")
        assert answered_by(versions, 1)
    assert errors == []
    status, detail = call(url, "/predict", {"records": [with_age]})
    assert status == 422 and "age" in json.dumps(detail), "back on v1, age is refused again"
    assert "age" not in openapi(url)["components"]["schemas"]["Record"]["properties"]


def test_metrics_are_exported(served):
    predict(served["url"], [{"amount": 1.0, "channel": "pos"}] * 5)
    wanted = [
        "ray_rp_predictions_total", "ray_rp_score_bucket", "ray_rp_batch_size_bucket",
        "ray_rp_missing_features_total", "ray_rp_model_load_seconds", "ray_serve_num_http_requests_total",
    ]  # fmt: skip

    def ours(text: str) -> list[float]:
        # This app's prediction counter for version 1 (other apps on the cluster export too).
        return samples(text, "ray_rp_predictions_total", application="test-app", model_version="1")

    text = scrape_until(lambda text: all(w in text for w in wanted) and bool(ours(text)))
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not on the metrics port: {missing}"
    assert ours(text), "no ray_rp_predictions_total for application test-app, model_version 1"
    assert sum(ours(text)) >= 5


def test_local_deploy_onto_a_running_serve_skips_the_port_check(served):
    """The demo deploys with local=True; when Serve already runs, its port is in use by Serve itself."""
    from urllib.parse import urlparse

    from ray import serve

    from ray_pipeline.serve.deploy import deploy

    port = urlparse(served["url"]).port
    cfg = serve_config(served["tmp"], "second-app", port=port, prediction_log=str(served["tmp"] / "predlog-2"))
    url = deploy(cfg, local=True)
    try:
        assert urlparse(url).port == port
        assert call(url, "/healthz", key=None) == (200, {"status": "ok"})
    finally:
        serve.delete("second-app")


def test_prediction_log_keeps_every_scored_record(ray_session, tmp_path, monkeypatch):
    """Its own app and registry: every answered record is in the log once, refusals too."""
    from ray import serve

    from ray_pipeline.serve.deploy import deploy

    cfg = serve_config(tmp_path, "log-app", max_records_per_request=50, api_key_env="RP_TEST_KEY")
    # ingest's rules on the inputs: a record breaking one is answered flagged (serving.on_invalid: flag)
    cfg.data.schema_.features["amount"] = FeatureColumn(type="float", min=0.0)
    cfg.data.schema_.features["channel"] = FeatureColumn(type="category", categories=["pos", "online"])
    registry = two_version_registry(tmp_path)
    monkeypatch.setenv("RP_TEST_KEY", KEY)
    url = deploy(cfg)
    ids = [predict(url, [RECORD] * 3)["request_id"], predict(url, [RECORD, {}])["request_id"]]
    flagged = predict(url, [{"amount": -1.0, "channel": "pos"}, {"amount": 2.0, "channel": "zzz"}, RECORD])
    assert [p["status"] for p in flagged["predictions"]] == ["out_of_range", "unknown_category", "ok"]
    assert all(p["probability"] is not None for p in flagged["predictions"])  # flagged, still answered
    ids.append(flagged["request_id"])
    counted = scrape_until(lambda text: samples(text, "ray_rp_flagged_records_total", application="log-app"))
    assert sum(samples(counted, "ray_rp_flagged_records_total", application="log-app")) == 2
    assert call(url, "/predict", {"records": [RECORD]}, key=None)[0] == 401
    assert call(url, "/predict", {"records": [RECORD] * 51})[0] == 413
    assert call(url, "/predict", {"records": [{"amount": "1"}]})[0] == 422
    promote(registry, "fraud", 2, "champion", {})
    assert wait_until(lambda: call(url, "/model")[1]["version"] == 2, 20, every=0.1)
    ids.append(predict(url, [RECORD])["request_id"])
    serve.delete(cfg.serving.app_name)  # graceful: replicas flush what they buffered
    everything = read_log(str(tmp_path / "predlog"))
    log = everything.filter(pc.not_equal(everything["variant"], "refused"))
    assert sorted(log.column("request_id").to_pylist()) == sorted([ids[0]] * 3 + [ids[1]] * 2 + [ids[2]] * 3 + [ids[3]])
    marked = log.filter(pc.equal(log["request_id"], ids[2])).sort_by("row")
    assert [json.loads(e)["status"] if e else "ok" for e in marked["extra"].to_pylist()] == \
        ["out_of_range", "unknown_category", "ok"]  # fmt: skip
    assert log.column("model_version").to_pylist().count(2) == 1
    assert set(log.column("variant").to_pylist()) == {"champion"}
    # refused requests are logged too (one row each, with their HTTP status) for monitoring to count
    refused = everything.filter(pc.equal(everything["variant"], "refused"))
    assert sorted(refused["http_status"].to_pylist()) == [401, 413, 422]
    assert refused["score"].null_count == refused.num_rows
    files = list(Path(tmp_path / "predlog").rglob("part-*.parquet"))
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

    from ray_pipeline.serve.deploy import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = serve_config(tmp_path, "unused", port=taken.getsockname()[1])
        with pytest.raises(ValueError, match=rf"serving.port: 127.0.0.1:{cfg.serving.port} is already in use"):
            check_port_free(cfg)
    check_port_free(cfg)  # free again once the listener is gone


def test_missing_nullable_inputs_are_answered_with_the_inputs_imputed(served):
    body = predict(served["url"], [{"amount": None, "channel": "pos"}, {}, RECORD])
    assert [p.get("imputed") for p in body["predictions"]] == [["amount"], ["amount", "channel"], None]
    assert all(p["status"] == "ok" for p in body["predictions"])


def test_a_non_nullable_input_is_required_by_the_contract_and_the_schema():
    """What ingest would quarantine (a missing non-nullable input) serving refuses, naming the field."""
    import jsonschema
    from pydantic import ValidationError

    from ray_pipeline.serve.api import request_model

    strict = request_model(SPEC.model_copy(update={"required": ["channel"]}), 10, entity_ids=False)
    for record, needle in (({}, "missing"), ({"amount": 1.0, "channel": None}, "string_type")):
        with pytest.raises(ValidationError) as refused:
            strict.model_validate_json(json.dumps({"records": [record]}))
        assert refused.value.errors()[0]["loc"] == ("records", 0, "channel") and refused.value.errors()[0]["type"] == needle
    strict.model_validate_json(json.dumps({"records": [{"channel": "pos"}]}))  # amount stays optional (imputed)
    schema = strict.model_json_schema()
    record_schema = schema["$defs"]["Record"]
    assert record_schema["required"] == ["channel"] and "default" not in record_schema["properties"]["channel"]
    assert list(jsonschema.Draft202012Validator(schema).iter_errors({"records": [{}]}))
    # specs written before `required` existed keep their content hash
    assert SPEC.content_hash() == SPEC.model_copy(update={"required": []}).content_hash()


def test_embedded_instances_started_one_after_another_get_their_own_serve_ports(tmp_path, monkeypatch):
    """Two embedded Rays on one box (pytest workers, a demo beside the tests) have adjacent process
    ids: each gets its own HAProxy and fallback-proxy ports, none of Ray's machine-wide defaults."""
    from ray_pipeline import runtime

    keys = ["RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"]  # fmt: skip
    monkeypatch.setattr(runtime, "_env_set_by_us", set())
    picked = []
    for pid in (4242, 4243):
        for key in [*keys, "RAY_SERVE_ENABLE_HA_PROXY"]:
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setattr(runtime.os, "getpid", lambda pid=pid: pid)
        runtime._serve_fast_path_env(str(tmp_path / str(pid)))
        picked.append({int(runtime.os.environ[key]) for key in keys})
    assert len(picked[0]) == len(picked[1]) == 4
    assert not picked[0] & picked[1], picked
    assert not (picked[0] | picked[1]) & {8500, 9500, 9101, 8404}
