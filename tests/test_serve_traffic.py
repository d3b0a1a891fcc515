"""Traffic beyond one model on a real local Ray Serve: canary and shadow challengers, autoscaling up
and down under load without failed requests, and fast 503s when a replica's queue is full."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ray_pipeline.registry.handoff import load
from ray_pipeline.serve.predlog import read_log

from .helpers import call, samples, scrape_until, serve_config, two_version_registry, wait_until

pytestmark = pytest.mark.slow  # Ray Serve / Ray Train / the whole pipeline: `make test-fast` skips these

RECORD = {"amount": 3.0, "channel": "pos"}


@pytest.fixture
def deployed(ray_session, tmp_path):
    """Deploys apps built from serve_config overrides; deletes them after the test."""
    from ray import serve

    from ray_pipeline.serve.deploy import deploy

    names: list[str] = []

    def _deploy(app_name: str, **serving) -> tuple[str, object]:
        cfg = serve_config(tmp_path, app_name, **serving)
        names.append(app_name)
        return deploy(cfg), cfg

    registry = two_version_registry(tmp_path)
    yield _deploy, registry, tmp_path
    for name in names:
        serve.delete(name)


def test_canary_sends_a_share_to_the_challenger_with_per_version_metrics(deployed):
    deploy_app, registry, _ = deployed
    registry.set_alias("fraud", "challenger", 2, "canary test")
    url, _ = deploy_app("canary", traffic={"mode": "canary", "canary_share": 0.3})
    expected = {v: load(registry, f"models:/fraud/{v}").predict([RECORD]).probabilities[0] for v in (1, 2)}
    answers = [call(url, "/predict", {"records": [RECORD]}, key=None) for _ in range(300)]
    assert all(status == 200 for status, _ in answers)
    by_variant = {"champion": 0, "challenger": 0}
    for _, body in answers:
        by_variant[body["variant"]] += 1
        version = 2 if body["variant"] == "challenger" else 1
        assert body["version"] == version
        assert body["predictions"][0]["probability"] == pytest.approx(expected[version], rel=1e-12)
    # 300 draws at p=0.3: mean 90, sd ~7.9; 50..130 is about 5 sd either side.
    assert 50 <= by_variant["challenger"] <= 130, by_variant
    info = call(url, "/model", key=None)[1]
    assert info["version"] == 1
    assert info["traffic"]["mode"] == "canary" and info["traffic"]["challenger"]["version"] == 2

    def counted(text: str, version: int, variant: str) -> float:
        return sum(samples(text, "ray_rp_predictions_total", application="canary", model_version=str(version),
                           variant=variant))  # fmt: skip

    seen = (by_variant["champion"], by_variant["challenger"])
    text = scrape_until(lambda text: (counted(text, 1, "champion"), counted(text, 2, "challenger")) == seen)
    assert (counted(text, 1, "champion"), counted(text, 2, "challenger")) == seen


def test_canary_follows_the_challenger_alias(deployed):
    deploy_app, registry, _ = deployed
    url, _ = deploy_app("canary-late", traffic={"mode": "canary", "canary_share": 1.0})
    # No challenger yet: everything is answered by the champion.
    assert {call(url, "/predict", {"records": [RECORD]}, key=None)[1]["variant"] for _ in range(10)} == {"champion"}
    registry.set_alias("fraud", "challenger", 2, "late challenger")
    wait_until(lambda: call(url, "/predict", {"records": [RECORD]}, key=None)[1]["version"] == 2, 20, every=0.1)
    status, body = call(url, "/predict", {"records": [RECORD]}, key=None)
    assert (status, body["variant"], body["version"]) == (200, "challenger", 2)
    registry.delete_alias("fraud", "challenger", "canary over")
    wait_until(lambda: call(url, "/predict", {"records": [RECORD]}, key=None)[1]["version"] == 1, 20, every=0.1)
    assert call(url, "/predict", {"records": [RECORD]}, key=None)[1]["variant"] == "champion"


def test_shadow_answers_from_champion_and_logs_the_challenger(deployed):
    from ray import serve

    deploy_app, registry, tmp = deployed
    registry.set_alias("fraud", "challenger", 2, "shadow test")
    url, cfg = deploy_app("shadow", traffic={"mode": "shadow"})
    records = [RECORD, {"amount": 250.0, "channel": "online"}]
    v1 = load(registry, "models:/fraud/1").predict(records).probabilities
    v2 = load(registry, "models:/fraud/2").predict(records).probabilities
    ids = []
    for _ in range(20):
        status, body = call(url, "/predict", {"records": records}, key=None)
        assert status == 200 and (body["variant"], body["version"]) == ("champion", 1)
        assert [p["probability"] for p in body["predictions"]] == pytest.approx(list(v1), rel=1e-12)
        ids.append(body["request_id"])
    serve.delete("shadow")  # graceful: shadow work finishes and the log is flushed
    log = read_log(str(tmp / "predlog")).to_pylist()
    shadow = [row for row in log if row["variant"] == "shadow"]
    answered = [row for row in log if row["variant"] == "champion"]
    assert len(shadow) == len(answered) == 40
    assert {row["request_id"] for row in shadow} == set(ids) == {row["request_id"] for row in answered}
    assert {row["model_version"] for row in shadow} == {2}
    for row in shadow:
        i = 0 if row["amount"] == 3.0 else 1
        assert row["score"] == pytest.approx(v2[i], rel=1e-12)


def _replicas(app: str) -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications[app].deployments["predictor"].replica_states)


# Serve warns when look_back_period_s is under its (deprecated) 10 s metrics_interval_s; replicas push
# ongoing-request counts far more often than that, and a 1 s window keeps this test short.
@pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")
def test_autoscaling_goes_up_under_load_and_back_down_without_failed_requests(deployed):
    deploy_app, _, _ = deployed
    autoscaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
                   "downscale_delay_s": 2, "look_back_period_s": 1}  # fmt: skip
    url, _ = deploy_app("scaling", autoscaling=autoscaling, max_ongoing_requests=8, max_queued_requests=-1,
                        batch_wait_timeout_s=0.05)  # fmt: skip
    failures, done, heavy, stop = [], [0], threading.Event(), threading.Event()

    def client(always: bool) -> None:
        while not stop.is_set():
            if not always and not heavy.is_set():
                time.sleep(0.05)
                continue
            status, body = call(url, "/predict", {"records": [RECORD]}, key=None)
            if status != 200:
                failures.append((status, body))
            done[0] += 1
            if always:
                time.sleep(0.1)  # a trickle keeps flowing while replicas come and go

    threads = [threading.Thread(target=client, args=(i == 0,)) for i in range(9)]
    for t in threads:
        t.start()
    try:
        heavy.set()
        assert wait_until(lambda: _replicas("scaling").get("RUNNING", 0) == 2, 60, every=0.25), (
            f"did not scale up: {_replicas('scaling')}"
        )
        answered = done[0]  # requests keep flowing with two replicas up
        assert wait_until(lambda: done[0] >= answered + 20, 30, every=0.1)
        heavy.clear()
        assert wait_until(lambda: _replicas("scaling") == {"RUNNING": 1}, 60, every=0.25), "did not scale back down"
        answered = done[0]  # and after the scale-down, through the remaining replica
        assert wait_until(lambda: done[0] >= answered + 5, 30, every=0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert done[0] > 50
    assert failures == []


def test_overload_is_refused_fast_with_503(deployed):
    deploy_app, _, _ = deployed
    # Each request waits 1 s for its batch to fill, so one ongoing + one queued request fill the
    # replica and the rest must be turned away at once rather than wait.
    url, _ = deploy_app("overload", max_ongoing_requests=1, max_queued_requests=1, max_batch_size=64,
                        batch_wait_timeout_s=1.0, autoscaling={"min_replicas": 1, "max_replicas": 1})  # fmt: skip

    def timed() -> tuple[int, float]:
        started = time.perf_counter()
        status, _ = call(url, "/predict", {"records": [RECORD]}, key=None)
        return status, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: timed(), range(10)))
    statuses = sorted(status for status, _ in results)
    assert set(statuses) == {200, 503}, statuses
    assert 1 <= statuses.count(200) <= 3
    assert max(elapsed for status, elapsed in results if status == 503) < 0.9, results
    assert call(url, "/predict", {"records": [RECORD]}, key=None)[0] == 200  # recovers once the burst is over
