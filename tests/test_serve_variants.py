"""What one replica does with a champion and a challenger, without HTTP: broken challengers never
stop the champion, a failing canary falls back to the champion, shadow work is bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ray_pipeline.serve import replica
from ray_pipeline.serve.api import ScoreRequest
from ray_pipeline.serve.replica import ModelRunner, ServingSettings
from ray_pipeline.serve.predlog import read_log
from ray_pipeline.serve.replica import CHALLENGER, ModelSet
from ray_pipeline.train.rundir import model_dir

from .helpers import two_version_registry

pytestmark = pytest.mark.slow  # Ray Serve / Ray Train / the whole pipeline: `make test-fast` skips these

RECORD = {"amount": 3.0, "channel": "pos"}


def _tamper(registry, version: int) -> None:
    folder = model_dir(registry.get("fraud", version).path)
    victim = next(p for p in sorted(folder.iterdir()) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"x")


def _settings(tmp: Path, mode: str) -> ServingSettings:
    return ServingSettings(db_path=str(tmp / "reg.db"), artifact_root=str(tmp / "art"), model_name="fraud",
                           alias="champion", prediction_log=str(tmp / "predlog"), traffic_mode=mode,
                           canary_share=1.0, max_batch_size=8, batch_wait_timeout_s=0.0, reload_poll_s=3600.0,
                           log_flush_rows=100_000, log_flush_s=3600.0)  # fmt: skip


def _request(i: int, variant: str, runner: ModelRunner) -> ScoreRequest:
    """A validated request as the HTTP route hands it to the runner: its variant and that version."""
    return ScoreRequest(f"r{i}", variant, runner.models.models[variant], [RECORD], [None])


def test_a_broken_challenger_is_reported_and_the_champion_still_serves(tmp_path):
    registry = two_version_registry(tmp_path)
    _tamper(registry, 2)
    registry.set_alias("fraud", "challenger", 2)
    models = ModelSet(registry, "fraud", "champion", mode="canary", canary_share=1.0)
    assert models.models[CHALLENGER] is None and models.pick()[0] == "champion"
    info = models.info()
    assert info["version"] == 1 and "v2:" in info["load_errors"]["challenger"]
    assert "checksum" in info["load_errors"]["challenger"]
    assert models.refresh() == []  # not retried (or re-reported) until the alias moves
    registry.set_alias("fraud", "challenger", 1)
    assert models.refresh() == ["challenger: vNone -> v1"]
    assert models.pick()[0] == "challenger" and "load_errors" not in models.info()


def test_a_failing_canary_is_answered_by_the_champion(ray_session, tmp_path):
    registry = two_version_registry(tmp_path)
    registry.set_alias("fraud", "challenger", 2)
    runner = ModelRunner(_settings(tmp_path, "canary"))

    def broken(records):
        raise RuntimeError("challenger exploded")

    runner.models.models[CHALLENGER].model.task_output = broken  # fault injected into the loaded v2
    requests = [_request(0, "challenger", runner), _request(1, "champion", runner), _request(2, "challenger", runner)]
    out = runner.score(requests)
    for req, result in zip(requests, out):  # what the HTTP route does after answering
        runner.record(req, result, {"transform_ms": result.transform_ms, "inference_ms": result.inference_ms})
    assert [(o.variant, o.version) for o in out] == [("champion", 1)] * 3
    assert all(len(o.outputs) == 1 for o in out)
    runner.close()
    log = read_log(str(tmp_path / "predlog"))
    assert sorted(log.column("request_id").to_pylist()) == ["r0", "r1", "r2"]
    assert set(log.column("variant").to_pylist()) == {"champion"}


def test_shadow_backlog_is_bounded_and_drained_on_close(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(replica, "MAX_SHADOW_BATCHES", 3)
    registry = two_version_registry(tmp_path)
    registry.set_alias("fraud", "challenger", 2)
    runner = ModelRunner(_settings(tmp_path, "shadow"))
    gate = threading.Event()
    challenger = runner.models.models[CHALLENGER]
    real = challenger.model.task_output

    def slow(records):
        gate.wait(30)
        return real(records)

    challenger.model.task_output = slow  # the challenger falls behind
    for i in range(6):
        req = _request(i, "champion", runner)
        result = runner.score([req])[0]
        assert result.version == 1  # answers never wait for shadow
        runner.record(req, result, {})
    gate.set()
    runner.close()
    log = read_log(str(tmp_path / "predlog")).to_pylist()
    assert sorted(r["request_id"] for r in log if r["variant"] == "champion") == [f"r{i}" for i in range(6)]
    shadow = sorted(r["request_id"] for r in log if r["variant"] == "shadow")
    assert shadow == ["r0", "r1", "r2"], "only MAX_SHADOW_BATCHES batches wait; later ones are skipped"
