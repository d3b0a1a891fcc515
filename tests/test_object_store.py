"""Every artifact on an object store: the pipeline against a real S3-compatible server (moto's
server mode, started by the tests) with the endpoint override AWS_ENDPOINT_URL, the registry's
commit-by-transaction on a store without rename, checksums on load, and a store that is down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app
from ray_pipeline.registry.database import RegistryError
from ray_pipeline.registry.handoff import load, register_run
from ray_pipeline.registry.store import Registry
from ray_pipeline.runtime import free_port
from ray_pipeline.storage import filesystem, list_files, read_bytes
from tests.tables import missing_table

from .helpers import make_run

runner = CliRunner()


@pytest.fixture
def model_cache(tmp_path, monkeypatch) -> Path:
    """This test's own download cache for registered versions."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ray-pipeline" / "models"


def test_registry_artifacts_on_s3_commit_by_transaction_and_verify_on_load(s3_bucket, tmp_path, model_cache):
    registry = Registry(tmp_path / "reg.db", f"{s3_bucket}/artifacts")
    run = make_run(tmp_path, 0.40, 0.80)
    v1 = register_run(registry, "fraud", run)
    v2 = register_run(registry, "fraud", make_run(tmp_path, 0.39, 0.81, seed=1))
    assert (v1.version, v2.version) == (1, 2)
    # no rename on an object store: each version keeps its own unique prefix, no staging debris
    assert v1.path.startswith(f"{s3_bucket}/artifacts/fraud/") and v1.path != v2.path
    stored = list_files(v1.path)
    assert "MANIFEST.json" in stored and "model/model.json" in stored and "feature_spec.json" in stored
    assert set(list_files(f"{s3_bucket}/artifacts/fraud")) == {f"{p.rsplit('/', 1)[1]}/{f}"
                                                             for p in (v1.path, v2.path)
                                                             for f in list_files(p)}  # fmt: skip

    loaded = load(registry, "models:/fraud/1")
    records = [{"amount": 12.0, "channel": "web"}, {"amount": None, "channel": "shop"}]
    reference = load(Registry(tmp_path / "local.db", tmp_path / "art"), register_run(
        Registry(tmp_path / "local.db", tmp_path / "art"), "fraud", run).uri)  # fmt: skip
    assert np.array_equal(loaded.predict(records).probabilities, reference.predict(records).probabilities)
    assert model_cache.joinpath("fraud").is_dir()  # downloaded once, then served from the cache

    # a file changed in the bucket after registration is refused on load, naming the file
    fs, path = filesystem(f"{v2.path}/model/model.json")
    with fs.open_output_stream(path) as f:
        f.write(read_bytes(f"{v2.path}/model/model.json").replace(b"0.", b"1.", 1))
    with pytest.raises(RegistryError, match=r"model/model.json does not match its checksum"):
        load(registry, "models:/fraud/2")
    # a cached copy damaged on disk is fetched again, not trusted
    cached = next(model_cache.joinpath("fraud").glob("1-*"))
    (cached / "model" / "model.json").write_text("{}")
    assert np.array_equal(load(registry, "models:/fraud/1").predict(records).probabilities, loaded.predict(records).probabilities)


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_a_registration_the_store_refuses_leaves_no_version(s3_bucket, tmp_path, monkeypatch):
    registry = Registry(tmp_path / "reg.db", f"{s3_bucket}/artifacts")
    register_run(registry, "fraud", make_run(tmp_path, 0.40, 0.80))
    # the store goes away: nothing answers on the endpoint any more (the S3 client retries ~15 s)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError, match=rf"registry artifact store {s3_bucket}/artifacts: "):
        register_run(registry, "fraud", make_run(tmp_path, 0.39, 0.81, seed=1))
    monkeypatch.undo()
    assert [v.version for v in registry.versions("fraud")] == [1]
    assert register_run(registry, "fraud", make_run(tmp_path, 0.38, 0.82, seed=2)).version == 2


def test_a_bucket_that_does_not_exist_is_named(s3_server, tmp_path):
    with pytest.raises(RegistryError, match=r"registry artifact store s3://no-such-bucket-rp/artifacts: .*no-such-bucket"):
        Registry(tmp_path / "reg.db", "s3://no-such-bucket-rp/artifacts")


@pytest.mark.slow
def test_pipeline_on_s3_from_csv_to_predictions(ray_session, s3_bucket, tmp_path, model_cache):
    """`init`, `run` (Ray Train workers, checkpoints in the bucket) and `predict` with every
    artifact on S3: the source table, ingest output, feature store, runs, registry, scores."""
    from ray_pipeline.config import load_config
    from ray_pipeline.registry.handoff import open_registry

    table = missing_table()
    local_csv = tmp_path / "missing.csv"
    table.to_csv(local_csv, index=False)
    fs, bucket = filesystem(s3_bucket)
    with fs.open_output_stream(f"{bucket}/in/missing.csv") as f:
        f.write(local_csv.read_bytes())
    config = tmp_path / "pipeline.yaml"
    result = runner.invoke(app, ["init", "--data", f"{s3_bucket}/in/missing.csv", "--label", "y", "--out", str(config)])
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(config.read_text())
    body["data"]["output"]["root"] = f"{s3_bucket}/ingest"
    body.setdefault("features", {})["store_root"] = f"{s3_bucket}/features"
    # checkpoints every step (a converged run keeps none from its last step)
    body.setdefault("training", {}).update(run_root=f"{s3_bucket}/runs", in_process_max_rows=0, checkpoint_every=1)
    body.setdefault("registry", {})["artifact_root"] = f"{s3_bucket}/artifacts"
    config.write_text(yaml.safe_dump(body, sort_keys=False))

    result = runner.invoke(app, ["run", "--config", str(config), "--models", "logreg"])
    assert result.exit_code == 0, result.output
    cfg = load_config(config)
    stored = list_files(s3_bucket)
    assert any(p.startswith("ingest/accepted/") and p.endswith(".parquet") for p in stored)
    assert any(p.startswith("features/") and p.endswith(".parquet") for p in stored)
    run = next(p.split("/")[1] for p in stored if p.startswith("runs/logreg-") and p.endswith("/model/model.json"))
    assert any(p.startswith(f"runs/{run}/checkpoint_") for p in stored)  # Ray Train's, beside the run's files
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()  # nothing in a local folder named s3:
    champion = open_registry(cfg).resolve(f"models:/{cfg.registry.model_name}@champion")
    assert champion.path.startswith(f"{s3_bucket}/artifacts/")

    out = runner.invoke(app, ["predict", "--config", str(config), "--input", f"{s3_bucket}/in/missing.csv",
                              "--out", f"{s3_bucket}/scores"])  # fmt: skip
    assert out.exit_code == 0, out.output
    scores = pd.concat(pd.read_parquet(pafs.FileSystem.from_uri(f"{s3_bucket}/scores")[0].open_input_file(
        f"{bucket}/scores/{name}")) for name in list_files(f"{s3_bucket}/scores") if name.endswith(".parquet"))  # fmt: skip
    assert len(scores) == len(table)
    model = load(open_registry(cfg), champion.uri)
    expected = model.predict(table.drop(columns=["y"]).head(5)).probabilities
    got = scores.set_index("row").sort_index()["score"].head(5).to_numpy()
    assert np.allclose(got, expected, atol=1e-6)


def test_cli_names_an_unreachable_store(tmp_path, s3_server):
    """A command whose registry store cannot be reached exits 2 with one line naming it."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"source": {"path": "unused"}, "schema": {"label": "y", "features": {"a": {"type": "float"}}},
                 "output": {"root": str(tmp_path / "out")}},
        "registry": {"db_path": str(tmp_path / "reg.db"), "artifact_root": "s3://rp-absent-bucket/artifacts"},
    }))  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "ray_pipeline.cli", "models", "list", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "s3://rp-absent-bucket/artifacts" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_monitoring_on_s3_log_labels_windows_alerts_reports_and_state(ray_session, s3_bucket, tmp_path):
    """The prediction log, labels, monitoring table, report, alerts and the monitor's position all
    in the bucket; a second monitor resumes from the state it finds there."""
    from datetime import timedelta

    import ray.data

    from ray_pipeline.config import parse_config
    from ray_pipeline.features.profile import build_profile, save_profile
    from ray_pipeline.monitor.job import Monitor
    from ray_pipeline.monitor.labels import accepted_labels, ingest_labels
    from ray_pipeline.registry.handoff import open_registry
    from ray_pipeline.storage import read_text, write_text
    from tests.test_monitoring import RULE, T0, _log, _rows, config

    from .helpers import SPEC

    body = config(tmp_path, rules=[{**RULE, "for_windows": 1}])
    body["registry"]["artifact_root"] = f"{s3_bucket}/artifacts"
    body["serving"]["prediction_log"] = f"{s3_bucket}/predlog"
    body["monitoring"]["root"] = f"{s3_bucket}/mon"
    cfg = parse_config(body)
    rng = np.random.default_rng(0)
    run = make_run(tmp_path, 0.40, 0.80)
    save_profile(build_profile(ray.data.from_arrow(_rows(rng, 5000)), SPEC, rng.random(1000), bins=10), run)
    registry = open_registry(cfg)
    registry.set_alias("fraud", "champion", register_run(registry, "fraud", run).version)
    _log(cfg, _rows(rng, 500), T0 + timedelta(seconds=5), rng.random(500))
    _log(cfg, _rows(rng, 500, shift=1.5, new_share=0.3), T0 + timedelta(seconds=65), rng.random(500))

    write_text(f"{s3_bucket}/incoming/labels.csv", "request_id,row,y\nr1000-0,0,1\nr1000-1,0,0\nnope,0,1\n")
    labeled = ingest_labels(cfg, f"{s3_bucket}/incoming/labels.csv")
    assert (labeled.accepted, labeled.quarantined) == (2, {"unknown_request": 1})
    assert labeled.accepted_path.startswith(f"{s3_bucket}/mon/labels/accepted/part-")
    assert sorted(accepted_labels(cfg)["request_id"].to_pylist()) == ["r1000-0", "r1000-1"]

    mon = Monitor(cfg)
    try:
        results = mon.run(until=T0 + timedelta(minutes=2))
    finally:
        mon.close()
    assert [r.rows for r in results] == [500, 500]
    assert not results[0].events and [e["rule"] for e in results[1].events] == ["input_drift"]
    stored = list_files(f"{s3_bucket}/mon")
    assert {"state.json", "alerts/active.json", "alerts/log.jsonl", "metrics.prom"} <= set(stored)
    assert sum(p.startswith("table/window=") for p in stored) == 2
    assert results[1].report == f"{s3_bucket}/mon/reports/20261128T100100/index.html"
    assert any(p.startswith("reports/20261128T100100/") and p.endswith(".png") for p in stored)
    assert [a["rule"] for a in json.loads(read_text(f"{s3_bucket}/mon/alerts/active.json"))] == ["input_drift"]
    assert len(read_text(f"{s3_bucket}/mon/alerts/log.jsonl").splitlines()) == 1

    again = Monitor(cfg)  # its position comes from the bucket: nothing processed twice
    try:
        assert again.run(until=T0 + timedelta(minutes=2)) == []
        assert [r.start for r in again.run(until=T0 + timedelta(minutes=3))] == [T0 + timedelta(minutes=2)]
    finally:
        again.close()
    assert len(read_text(f"{s3_bucket}/mon/alerts/log.jsonl").splitlines()) >= 1
