"""Model registry: versions, URIs, tamper detection, concurrency, crash safety, aliases, gates, CLI."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app
from ray_pipeline.config import GateRule
from ray_pipeline.features.transform import transform_records
from ray_pipeline.registry.database import RegistryError
from ray_pipeline.registry.gates import PromotionRefused, promote
from ray_pipeline.registry.handoff import load, register_run
from ray_pipeline.registry.store import Registry
from ray_pipeline.train.models import LogisticModel
from ray_pipeline.train.rundir import PARAMS_FILE, SPEC_FILE, model_dir, read_run

from .conftest import postgres_instance
from .helpers import SPEC, make_run


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path) -> Registry:
    """The registry on each metadata backend: a SQLite file, and a real PostgreSQL server."""
    db = tmp_path / "reg" / "registry.db" if request.param == "sqlite" else request.getfixturevalue("postgres_db")
    return Registry(db, tmp_path / "reg" / "artifacts")


def test_register_versions_and_uris(registry, tmp_path):
    v1 = register_run(registry, "fraud", make_run(tmp_path, 0.40, 0.80))
    v2 = register_run(registry, "fraud", make_run(tmp_path, 0.38, 0.82))
    assert (v1.version, v2.version) == (1, 2) and v2.uri == "models:/fraud/2"
    assert [v.version for v in registry.versions("fraud")] == [1, 2]
    assert v1.signature["features"] == SPEC.feature_names
    assert v1.lineage["feature_spec_hash"] == SPEC.content_hash() and "code_version" in v1.lineage
    assert registry.resolve("models:/fraud/1").metrics["log_loss"] == 0.40
    registry.set_alias("fraud", "champion", 2, "first")
    assert registry.resolve("models:/fraud@champion").version == 2
    for bad in ("models:/fraud", "fraud/1", "models:/fraud/x"):
        with pytest.raises(RegistryError, match="expected models:/NAME/VERSION"):
            registry.resolve(bad)
    with pytest.raises(RegistryError, match="alias 'nope' is not set"):
        registry.resolve("models:/fraud@nope")


def test_loaded_model_predicts_from_records_with_its_spec(registry, tmp_path):
    run = make_run(tmp_path, 0.4, 0.8)
    register_run(registry, "fraud", run)
    loaded = load(registry, "models:/fraud/1")
    records = [{"amount": 12.5, "channel": "pos"}, {"amount": None, "channel": "new"}]
    X, _ = transform_records(records, SPEC)
    expected = LogisticModel.load(model_dir(run)).task_output(X)
    np.testing.assert_array_equal(loaded.predict(records).probabilities, expected)
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame(records)).probabilities, expected)


@pytest.mark.parametrize("damage", ["edit", "truncate", "extra", "manifest", "delete"])
def test_tampered_artifacts_are_refused(registry, tmp_path, damage):
    version = register_run(registry, "fraud", make_run(tmp_path, 0.4, 0.8))
    folder = Path(version.path)
    model = model_dir(folder) / "model.json"
    if damage == "edit":
        model.write_text(model.read_text().replace("0.1", "0.2"))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:20])
    elif damage == "extra":
        (model_dir(folder) / "evil.pkl").write_bytes(b"x")
    elif damage == "manifest":
        (folder / "MANIFEST.json").write_text("{}")
    else:
        (folder / SPEC_FILE).unlink()
    with pytest.raises(RegistryError):
        load(registry, version.uri)


def _register_many(db: str, artifacts: str, run: str, n: int) -> list[int]:
    reg = Registry(db, artifacts)
    return [register_run(reg, "fraud", run).version for _ in range(n)]


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_concurrent_registration_gives_distinct_gap_free_versions(registry, tmp_path):
    run = str(make_run(tmp_path, 0.4, 0.8))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_register_many, [(str(registry.db), str(registry.root), run, 4)] * 4)
    got = sorted(v for r in results for v in r)
    assert got == list(range(1, 17))
    assert [v.version for v in registry.versions("fraud")] == got
    assert all(Path(v.path).is_dir() for v in registry.versions("fraud"))


class _CrashBeforeCommit(Registry):
    def _before_commit(self, version: int) -> None:
        raise RuntimeError("simulated crash")


def test_crash_during_registration_leaves_nothing_visible(registry, tmp_path):
    run = make_run(tmp_path, 0.4, 0.8)
    register_run(registry, "fraud", run)
    crashing = _CrashBeforeCommit(registry.db, registry.root)
    with pytest.raises(RuntimeError, match="simulated crash"):
        register_run(crashing, "fraud", run)
    assert [v.version for v in registry.versions("fraud")] == [1]
    assert not list((Path(registry.root) / "fraud").glob(".staging-*"))
    # A hard kill (no cleanup at all) between moving the folder and committing:
    script = (
        "import os, sys; from ray_pipeline.registry.store import Registry; "
        "from ray_pipeline.registry.handoff import register_run\n"
        "class R(Registry):\n    def _before_commit(self, v): os._exit(9)\n"
        f"register_run(R({str(registry.db)!r}, {str(registry.root)!r}), 'fraud', {str(run)!r})"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert [v.version for v in registry.versions("fraud")] == [1]
    assert register_run(registry, "fraud", run).version == 2  # the debris folder is replaced
    load(registry, "models:/fraud/2")


def test_an_unreachable_database_is_named_and_nothing_is_registered(tmp_path):
    from ray_pipeline.runtime import free_port

    url = f"postgresql+psycopg://rp:secret@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    with pytest.raises(RegistryError, match=r"registry database postgresql\+psycopg://rp:\*\*\*@127.0.0.1:\d+/postgres: "
                                            r".*(refused|failed)"):
        register_run(Registry(url, tmp_path / "art"), "fraud", make_run(tmp_path, 0.4, 0.8))
    assert list((tmp_path / "art").iterdir()) == [], "no artifacts without a registry to record them"


@pytest.mark.slow
def test_postgres_stopped_during_registration_leaves_no_partial_version(tmp_path):
    """The server goes down with a registration's transaction open: a clear error, no version."""
    run = make_run(tmp_path, 0.4, 0.8)
    with postgres_instance() as server:
        registry = Registry(server.url, tmp_path / "art")
        register_run(registry, "fraud", run)

        class StopsTheServer(Registry):
            def _before_commit(self, version: int) -> None:
                server.stop()

        with pytest.raises(RegistryError, match="registry database postgresql"):
            register_run(StopsTheServer(server.url, tmp_path / "art"), "fraud", run)
        with pytest.raises(RegistryError, match="registry database postgresql"):
            registry.versions("fraud")  # while it is down: an error naming it, not a hang
        server.start()
        assert [v.version for v in registry.versions("fraud")] == [1], "the interrupted version was not committed"
        assert register_run(registry, "fraud", run).version == 2  # gap-free; the folder it left is replaced
        load(registry, "models:/fraud/2")


def test_aliases_history_and_rollback(registry, tmp_path):
    for i in range(3):
        register_run(registry, "fraud", make_run(tmp_path, 0.4 - i / 100, 0.8, seed=i))
    registry.set_alias("fraud", "champion", 1, "initial", actor="alice")
    registry.set_alias("fraud", "champion", 3, "better", actor="bob")
    with pytest.raises(RegistryError, match="models:/fraud/9 does not exist"):
        registry.set_alias("fraud", "champion", 9)
    assert registry.aliases("fraud") == {"champion": 3}  # the failed move changed nothing
    change = registry.rollback("fraud", "champion")
    assert (change.from_version, change.to_version) == (3, 1)
    history = registry.history("fraud", "champion")
    assert [(h.from_version, h.to_version) for h in history] == [(None, 1), (1, 3), (3, 1)]
    assert history[0].actor == "alice" and history[-1].reason.startswith("rollback")
    registry.set_alias("fraud", "challenger", 2)
    registry.rollback("fraud", "challenger")  # its only change: rolling back removes it
    assert "challenger" not in registry.aliases("fraud")


def test_promotion_gates_refuse_pass_and_force(registry, tmp_path):
    gates = {"log_loss": GateRule(min_improvement=0.01), "roc_auc": GateRule(max_regression=0.01)}
    register_run(registry, "fraud", make_run(tmp_path, 0.40, 0.80))
    register_run(registry, "fraud", make_run(tmp_path, 0.399, 0.80))  # better, but < 1% better
    register_run(registry, "fraud", make_run(tmp_path, 0.35, 0.795))  # much better, AUC -0.6%
    promote(registry, "fraud", 1, "champion", gates)  # no holder yet: gates do not apply
    with pytest.raises(PromotionRefused) as refused:
        promote(registry, "fraud", 2, "champion", gates)
    assert "FAIL log_loss" in str(refused.value) and "PASS roc_auc" in str(refused.value)
    assert registry.aliases("fraud") == {"champion": 1}
    change, report = promote(registry, "fraud", 3, "champion", gates)
    assert change.to_version == 3 and "PASS log_loss" in report
    change, _ = promote(registry, "fraud", 2, "champion", gates, force=True)
    assert change.reason.startswith("FORCED") and registry.aliases("fraud") == {"champion": 2}


def test_gates_are_checked_against_the_holder_the_move_replaces(registry, tmp_path):
    """A promotion that lands while another is being checked is compared with the new holder."""
    import threading
    import time

    from ray_pipeline.registry.gates import gate_report

    gates = {"log_loss": GateRule(min_improvement=0.0)}
    for loss in (0.40, 0.38, 0.39):
        register_run(registry, "fraud", make_run(tmp_path, loss, 0.8))
    registry.set_alias("fraud", "champion", 1, "first")
    inside = threading.Event()

    def slow_gate(candidate, current):  # v2 passes against v1, then takes its time to commit
        passed, _ = gate_report(candidate, current, gates)
        assert passed and current.version == 1
        inside.set()
        time.sleep(1.0)
        return "promoted: gates passed"

    first = threading.Thread(target=registry.set_alias, args=("fraud", "champion", 2), kwargs={"check": slow_gate})
    first.start()
    assert inside.wait(30)
    # v3 beats v1 but not v2: checked against v1 (read before v2's move commits) it would win
    with pytest.raises(PromotionRefused, match="models:/fraud/3 vs models:/fraud/2"):
        promote(registry, "fraud", 3, "champion", gates)
    first.join()
    assert registry.aliases("fraud") == {"champion": 2}
    assert [c.to_version for c in registry.history("fraud", "champion")] == [1, 2]


def test_models_cli(tmp_path, demo_config_dict):
    demo_config_dict["registry"]["db_path"] = str(tmp_path / "reg" / "registry.db")
    demo_config_dict["registry"]["artifact_root"] = str(tmp_path / "reg" / "artifacts")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    registry = Registry(tmp_path / "reg" / "registry.db", tmp_path / "reg" / "artifacts")
    register_run(registry, "fraud", make_run(tmp_path, 0.40, 0.80))
    register_run(registry, "fraud", make_run(tmp_path, 0.38, 0.82))
    runner = CliRunner()
    ok = runner.invoke(app, ["models", "promote", "--config", str(config), "--version", "1"])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["models", "promote", "--config", str(config), "--version", "2"])
    assert ok.exit_code == 0 and "PASS log_loss" in ok.output and "@champion: 1 -> 2" in ok.output
    listed = runner.invoke(app, ["models", "list", "--config", str(config)]).output
    assert "models:/fraud/2" in listed and "@champion" in listed
    shown = json.loads(runner.invoke(app, ["models", "show", "--config", str(config), "models:/fraud@champion"]).output)
    assert shown["version"] == 2
    assert "@champion: 2 -> 1" in runner.invoke(app, ["models", "rollback", "--config", str(config)]).output
    history = runner.invoke(app, ["models", "history", "--config", str(config)]).output.strip().splitlines()
    assert len(history) == 3 and "rollback" in history[-1]
    bad = runner.invoke(app, ["models", "show", "--config", str(config), "models:/fraud/7"])
    assert bad.exit_code == 2 and "models:/fraud/7 does not exist" in bad.output


def test_a_run_directory_is_checked_before_registration(registry, tmp_path):
    run = make_run(tmp_path, 0.4, 0.8)
    assert read_run(run).kind == "logreg" and read_run(run).spec == SPEC
    (run / SPEC_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{run}: not a training run directory \(missing feature_spec.json\)"):
        register_run(registry, "fraud", run)
    run = make_run(tmp_path, 0.5, 0.8)
    (run / PARAMS_FILE).write_text('{"model": "svm"}')
    with pytest.raises(ValueError, match=r"params.json: model 'svm', expected one of"):
        register_run(registry, "fraud", run)
    assert registry.versions("fraud") == [], "nothing registered from a bad run directory"
