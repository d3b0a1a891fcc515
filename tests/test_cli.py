"""The `ray-pipeline` commands end to end, in-process on the session's Ray and as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app

runner = CliRunner()
BIN = Path(sys.executable).parent / "ray-pipeline"


def test_help_lists_every_command():
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("generate", "ingest", "demo"):
        assert command in out
    for command in ("generate", "ingest", "demo"):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0
        assert "--address" in sub.output


def test_generate_then_ingest(ray_session, tmp_path, demo_config_dict):
    raw = tmp_path / "raw"
    result = runner.invoke(
        app, ["generate", "--out", str(raw), "--rows", "6000", "--seed", "3", "--corruption-rate", "0.01"]
    )
    assert result.exit_code == 0, result.output
    assert "generated 6,000 rows" in result.output
    assert len(pd.read_parquet(raw)) == 6000

    demo_config_dict["data"]["source"]["path"] = str(raw)
    demo_config_dict["data"]["output"]["root"] = str(tmp_path / "out")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    result = runner.invoke(app, ["ingest", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "read                6,000" in result.output
    assert "quarantined" in result.output and "out_of_range" in result.output
    accepted = len(pd.read_parquet(tmp_path / "out" / "accepted"))
    quarantined = len(pd.read_parquet(tmp_path / "out" / "quarantine"))
    assert accepted + quarantined == 6000 and quarantined > 0


def test_generate_with_drift_options(ray_session, tmp_path):
    raw = tmp_path / "raw"
    result = runner.invoke(
        app,
        ["generate", "--out", str(raw), "--rows", "4000", "--start", "2024-01-01", "--days", "10",
         "--drift-start", "2024-01-06", "--shift", "amount=2:1", "--new-categories", "channel=1.0",
         "--format", "csv"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.concat(pd.read_csv(p) for p in raw.glob("*.csv"))
    after = pd.to_datetime(frame["event_ts"], utc=True) >= pd.Timestamp("2024-01-06", tz="UTC")
    assert frame.loc[after, "channel"].str.startswith("new_channel_").all()
    assert not frame.loc[~after, "channel"].str.startswith("new_").any()
    assert frame.loc[after, "amount"].median() > 4 * frame.loc[~after, "amount"].median()


def test_shift_without_drift_start_is_an_error(tmp_path):
    result = runner.invoke(app, ["generate", "--out", str(tmp_path), "--shift", "amount=1"])
    assert result.exit_code == 2
    assert "--drift-start is required" in result.output


def test_bad_config_exits_2_naming_file_and_key(tmp_path, demo_config_dict):
    demo_config_dict["data"]["source"]["formt"] = "csv"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    result = runner.invoke(app, ["ingest", "--config", str(config)])
    assert result.exit_code == 2
    assert str(config) in result.output and "data.source.formt: unknown key" in result.output


def test_missing_source_exits_2_naming_it(ray_session, tmp_path, demo_config_dict):
    demo_config_dict["data"]["source"]["path"] = str(tmp_path / "absent")
    demo_config_dict["data"]["output"]["root"] = str(tmp_path / "out")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    result = runner.invoke(app, ["ingest", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'absent'}: source not found" in result.output


def test_demo_runs_end_to_end(ray_session, project_copy):
    config = project_copy / "configs" / "demo.yaml"
    result = runner.invoke(app, ["demo", "--config", str(config), "--rows", "30000"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "generated 30,000 synthetic rows" in out
    assert "read               30,000" in out
    assert "Bayes-optimal log-loss" in out
    assert (project_copy / "data" / "demo" / "ingested" / "summary.json").exists()


def test_ingest_as_a_process_connects_to_a_running_cluster(ray_session, tmp_path, demo_config_dict):
    """`--address` reaches an existing cluster: here, this test session's Ray."""
    raw = tmp_path / "raw"
    assert runner.invoke(app, ["generate", "--out", str(raw), "--rows", "2000"]).exit_code == 0
    demo_config_dict["data"]["source"]["path"] = str(raw)
    demo_config_dict["data"]["output"]["root"] = str(tmp_path / "out")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    env = {**os.environ, "RAY_PIPELINE_PROGRESS": "0"}
    proc = subprocess.run(
        [str(BIN), "ingest", "--config", str(config), "--address", ray_session.address, "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = yaml.safe_load(proc.stdout[proc.stdout.index("{") :])
    assert summary["read"] == 2000 and summary["accepted"] == 2000
