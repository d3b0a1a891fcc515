"""The `ray-pipeline` commands end to end, in-process on the session's Ray and as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app

from .helpers import ray_lines

runner = CliRunner()
BIN = Path(sys.executable).parent / "ray-pipeline"


def test_help_lists_every_command():
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("generate", "ingest", "demo", "features"):
        assert command in out
    for command in (["generate"], ["ingest"], ["demo"], ["features", "fit"], ["features", "materialize"]):
        sub = runner.invoke(app, [*command, "--help"])
        assert sub.exit_code == 0
        assert "--address" in sub.output


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
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


@pytest.mark.slow
def test_demo_runs_end_to_end(ray_session, project_copy):
    """The demo as a newcomer's terminal shows it (a process of its own, on the session's Ray):
    every stage's report, and no line of Ray's or Tune's own."""
    from ray_pipeline.runtime import free_port

    config = project_copy / "configs" / "demo.yaml"
    body = yaml.safe_load(config.read_text())
    body["serving"]["port"] = free_port()  # the suite must not depend on 8000 being free on the machine
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    # A short loop (3 s windows of 1,000 records) on a small table: the notebook test runs the
    # same loop; the demo's default (10 s windows of 6,000) is what `make demo` shows.
    proc = subprocess.run([str(BIN), "demo", "--config", str(config), "--rows", "15000", "--loop-window", "3",
                           "--per-window", "1000", "--address", ray_session.address], capture_output=True, text=True,
                          env={**os.environ, "RAY_PIPELINE_PROGRESS": "0"}, cwd=project_copy, timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    noise = ray_lines(out)
    assert not noise, "\n".join(noise)
    assert "generated 15,000 synthetic rows" in out
    assert "read               15,000" in out
    assert "Bayes-optimal log-loss" in out
    assert (project_copy / "data" / "demo" / "ingested" / "summary.json").exists()
    assert "FeatureSpec" in out and "point-in-time" in out
    assert "customer_id=1: present" in out
    assert (project_copy / "data" / "demo" / "features" / "online.db").exists()
    # Training: both models evaluated against the Bayes-optimal floor on the latest events.
    assert "logreg   log_loss" in out and "xgboost  log_loss" in out and "Bayes-optimal" in out
    # Registry: both registered, a champion chosen through the gates, loaded and used.
    assert "registered models:/fraud/1 (logreg)" in out and "registered models:/fraud/2 (xgboost)" in out
    assert "models:/fraud@champion = models:/fraud/" in out and "sample predictions" in out
    # The loop: drifted traffic raises the drift alert, the feedback loop retrains and decides.
    assert "[9/9] closing the loop" in out and "ALERT firing: input_drift" in out
    assert "feedback feedback-" in out and "loop: alert" in out
    # The retrain's feature step refreshed the online store, as `run` does: lookups see fed-back rows.
    assert re.search(r"online store refreshed: customer_daily [1-9][\d,]* entity values", out), out[-3000:]


# A process that starts the embedded local Ray as every command does, says its address, holds it
# until its stdin closes, then stops it (its exit is checked too).
HOLD_RAY = """import sys
from ray_pipeline.runtime import init_ray, shutdown_ray
print("ADDRESS", init_ray(quiet=True).address, flush=True)
sys.stdin.read()
shutdown_ray()
"""


@pytest.mark.slow  # starts a Ray of its own (seconds): `make test-fast` leaves it out
def test_an_embedded_ray_with_token_auth_is_quiet_and_other_commands_attach_to_it(tmp_path, demo_config_dict):
    """As a newcomer runs them (no RAY_AUTH_MODE: Ray turns token auth on for a local instance and
    says so): the instance's token is the owner's only, a second process reaches the running Ray
    with `--address` and its token (`run --serve` and the commands beside it), and neither terminal
    shows a line Ray printed."""
    raw = tmp_path / "raw"
    assert runner.invoke(app, ["generate", "--out", str(raw), "--rows", "2000"]).exit_code == 0
    demo_config_dict["data"]["source"]["path"] = str(raw)
    demo_config_dict["data"]["output"]["root"] = str(tmp_path / "out")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(demo_config_dict))
    # HOME: Ray saves the token it generates under ~/.ray, here the test's own directory
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(tmp_path), RAY_PIPELINE_PROGRESS="0")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)  # fmt: skip
    try:
        first = holder.stdout.readline()
        assert first.startswith("ADDRESS "), first + holder.stderr.read()
        proc = subprocess.run([str(BIN), "ingest", "--config", str(config), "--address", first.split()[1], "--json"],
                              capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    finally:
        held_out, held_err = holder.communicate("", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = yaml.safe_load(proc.stdout[proc.stdout.index("{") :])
    assert summary["read"] == 2000 and summary["accepted"] == 2000
    assert holder.returncode == 0, held_err[-2000:]
    token = tmp_path / ".ray" / "auth_token"  # token auth was on: the notice was due, and kept off
    assert stat.S_IMODE(token.stat().st_mode) == 0o600  # Ray writes it with the umask's mode
    noise = ray_lines(first + held_out + held_err + proc.stdout + proc.stderr)
    assert not noise, "\n".join(noise)


@pytest.mark.slow  # starts a Ray of its own and serves: `make test-fast` leaves it out
def _newcomers_run_serve(tmp_path: Path, body: dict) -> tuple[Path, dict[str, str]]:
    """A config serving 2,000 generated rows under `tmp_path` (`body`: the demo config, whose paths,
    ../data/demo/..., land under tmp_path from configs/) and a newcomer's environment for it."""
    from ray_pipeline.runtime import free_port

    raw = tmp_path / "raw"
    assert runner.invoke(app, ["generate", "--out", str(raw), "--rows", "2000"]).exit_code == 0
    body["data"]["source"]["path"] = str(raw)
    body["serving"]["port"] = free_port()
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "pipeline.yaml"
    config.write_text(yaml.safe_dump(body))
    # A newcomer's shell: no address, nor the session Ray's own Serve ports and files (runtime.py
    # scopes them per instance through the environment, which a child would inherit)
    return config, {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")}


def _serving(config: Path, env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """`run --serve` started as a process, once it says it serves (its lines so far)."""
    proc = subprocess.Popen([str(BIN), "run", "--config", str(config), "--models", "logreg", "--serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            return proc, lines
    raise AssertionError("".join(lines)[-3000:])


def test_run_serve_on_a_newcomers_terminal_is_quiet_and_stops_on_ctrl_c(tmp_path, demo_config_dict):
    """`run --serve` as a newcomer runs it (its own embedded Ray, waiting to be stopped): the
    terminal shows the run and where it serves, no line of Ray's; Ctrl-C stops it cleanly and the
    note that let other commands attach is gone."""
    config, env = _newcomers_run_serve(tmp_path, demo_config_dict)
    proc, lines = _serving(config, env, tmp_path)
    try:
        assert (tmp_path / "configs" / ".ray-pipeline" / "ray.json").exists(), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out[-3000:]
    assert "endpoint: http://" in out and "(local, started by this command)" in out, out[-3000:]
    assert not ray_lines(out), out
    assert not (tmp_path / "configs" / ".ray-pipeline" / "ray.json").exists()


@pytest.mark.slow
def test_a_sigkilled_run_serve_leaves_no_process_behind_and_starts_again(tmp_path, demo_config_dict):
    """SIGKILL gives a command no chance to clean up: every process of its embedded Ray (Ray's
    head, agents and workers, Serve's HAProxy) is still gone within seconds (ray_pipeline/reaper.py),
    and the same command then starts again over what is left (its stale attach note)."""
    from ray_pipeline.reaper import GRACE_S, TERM_S, marked

    from .helpers import wait_until

    config, env = _newcomers_run_serve(tmp_path, demo_config_dict)
    proc, lines = _serving(config, env, tmp_path)
    try:
        instance = re.search(r"(/tmp/rp-\w+)/session_", "".join(lines)).group(1)  # from the Ray-logs line
        assert len(marked(instance)) >= 5, "".join(lines)  # Ray's head, agents, workers, the proxy
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        left = wait_until(lambda: not marked(instance), GRACE_S + TERM_S + 20, every=0.5)
        assert left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in marked(instance)]
        assert (tmp_path / "configs" / ".ray-pipeline" / "ray.json").exists()  # the note a SIGKILL leaves
        again, more = _serving(config, env, tmp_path)
        again.send_signal(signal.SIGINT)
        rest, _ = again.communicate(timeout=120)
        assert again.returncode == 0, ("".join(more) + rest)[-3000:]
    finally:
        proc.kill()


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_features_fit_materialize_get(ray_session, project_copy):
    config = project_copy / "configs" / "demo.yaml"
    assert runner.invoke(app, ["generate", "--config", str(config), "--rows", "8000"]).exit_code == 0
    assert runner.invoke(app, ["ingest", "--config", str(config)]).exit_code == 0

    result = runner.invoke(app, ["features", "fit", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "training set 7,9" in result.output and "view customer_daily v1" in result.output
    store = project_copy / "data" / "demo" / "features"
    training = pd.read_parquet(store / "training_set")
    assert "amount_mean_1d" in training.columns
    # one FeatureSpec per model version, fitted on its train split; none from all rows here
    assert not (store / "feature_spec.json").exists()
    accepted = pd.read_parquet(project_copy / "data" / "demo" / "ingested" / "accepted")
    assert len(training) == len(accepted)
    # The distributed join agrees with a single-process merge_asof over the stored view.
    view = pd.read_parquet(store / "views" / "customer_daily" / "data").sort_values("feature_ts")
    expected = pd.merge_asof(
        training[["event_id", "customer_id", "event_ts"]].sort_values("event_ts"),
        view[["customer_id", "feature_ts", "amount_mean_1d"]],
        left_on="event_ts",
        right_on="feature_ts",
        by="customer_id",
        tolerance=pd.Timedelta(days=7),
    ).set_index("event_id")
    got = training.set_index("event_id")["amount_mean_1d"]
    pd.testing.assert_series_equal(got.sort_index(), expected["amount_mean_1d"].sort_index(), check_dtype=False)
    assert (expected["feature_ts"].dropna() <= expected.loc[expected["feature_ts"].notna(), "event_ts"]).all()

    result = runner.invoke(app, ["features", "materialize", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "customer_daily:" in result.output and "written" in result.output

    result = runner.invoke(
        app, ["features", "get", "--config", str(config), "-e", "1", "-e", "999999999", "--now", "2024-03-31T12:00:00"]
    )
    assert result.exit_code == 0, result.output
    first, second = result.output.strip().splitlines()
    assert first.startswith("1\tpresent\t2024-03-31") and '"amount_count_1d"' in first
    assert second.startswith("999999999\tmissing")
    much_later = runner.invoke(app, ["features", "get", "--config", str(config), "-e", "1", "--now", "2025-01-01"])
    assert "\texpired\t" in much_later.output


def test_features_get_unknown_view(project_copy):
    config = project_copy / "configs" / "demo.yaml"
    result = runner.invoke(app, ["features", "get", "--config", str(config), "-e", "1", "--view", "nope"])
    assert result.exit_code == 2 and "not a configured view" in result.output


def test_commands_attach_to_the_ray_that_run_serve_announced(tmp_path):
    """`run --serve` names its local Ray beside the config while it serves; a stale note is dropped."""
    from ray_pipeline.runtime import announce_ray, serving_ray

    note = tmp_path / ".ray-pipeline" / "ray.json"
    assert serving_ray(note) is None
    with announce_ray(note, "127.0.0.1:6379"):
        assert serving_ray(note) == "127.0.0.1:6379"
    assert not note.exists()  # gone when serving stops
    child = subprocess.Popen(["true"])  # a process that has exited: its pid is free
    child.wait()
    note.write_text(json.dumps({"address": "127.0.0.1:6379", "pid": child.pid}))
    assert serving_ray(note) is None and not note.exists()
    note.write_text("not json")
    assert serving_ray(note) is None and not note.exists()
