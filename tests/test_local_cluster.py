"""A real local multi-node cluster (cluster/local/up.sh: a head and two worker nodes, each its own
`ray start`, token authentication on): jobs submitted with `ray job submit` and JobSubmissionClient,
training spread across nodes and a training worker's node lost mid-run, a replica's node lost under
load, and a client without the token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from .helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
UP, DOWN = ROOT / "cluster" / "local" / "up.sh", ROOT / "cluster" / "local" / "down.sh"

pytestmark = pytest.mark.slow


@dataclass
class LocalCluster:
    """How to reach the cluster: the scripts' environment and a client's."""

    script_env: dict[str, str]
    client_env: dict[str, str]
    dashboard: str
    token: str

    def headers(self) -> dict[str, str]:
        """Job API headers carrying the token."""
        return {"Authorization": f"Bearer {self.token}"}


def _wait_for_job_api(dashboard: str, headers: dict[str, str], seconds: float = 120) -> None:
    """The job API answers once the head's agent has registered (a few seconds after `ray start`)."""
    from ray.job_submission import JobSubmissionClient

    def answers() -> bool:
        try:
            JobSubmissionClient(dashboard, headers=headers).list_jobs()
            return True
        except Exception:
            return False

    if not wait_until(answers, seconds, every=1):
        JobSubmissionClient(dashboard, headers=headers).list_jobs()  # raise its error


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    from ray_pipeline.runtime import free_port

    state = tmp_path_factory.mktemp("cluster-state")
    script_env = {**os.environ, "RP_CLUSTER_STATE": str(state), "RP_HEAD_PORT": str(free_port()),
                  "RP_DASHBOARD_PORT": str(free_port()), "RP_HEAD_CPUS": "0", "RP_WORKER_CPUS": "2",
                  "RAY": str(Path(sys.executable).with_name("ray"))}  # fmt: skip
    # The cluster's nodes get a clean Ray environment: this process may hold the settings the
    # embedded test instance exported (Serve's HAProxy files and ports), which are not theirs.
    for key in [k for k in script_env if k.startswith("RAY_SERVE_") or k == "RAY_ADDRESS"]:
        del script_env[key]
    subprocess.run([str(UP), "2"], env=script_env, check=True, timeout=300, capture_output=True)
    client = dict(script_env)
    for line in (state / "env").read_text().splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        client[key] = value
    cluster = LocalCluster(script_env, client, client["RAY_ADDRESS"], client["RAY_AUTH_TOKEN"])
    try:
        _wait_for_job_api(cluster.dashboard, cluster.headers())
        yield cluster
    finally:
        subprocess.run([str(DOWN)], env=script_env, timeout=120, capture_output=True)


def test_up_is_idempotent_and_nodes_have_their_own_resources(local_cluster):
    again = subprocess.run([str(UP), "2"], env=local_cluster.script_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "head already running" in again.stdout
    assert "worker 1 already running" in again.stdout and "worker 2 already running" in again.stdout
    probe = ("import json, ray; ray.init(); "
             "print('NODES', json.dumps(sorted(n['NodeName'] + ':' + ','.join(sorted(n['Resources'])) "
             "for n in ray.nodes() if n['Alive'])))")  # fmt: skip
    env = {**local_cluster.client_env, "RAY_ADDRESS": local_cluster.client_env["RP_GCS_ADDRESS"]}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    nodes = _tagged("NODES", out.stdout, out.stderr)
    assert len(nodes) == 3
    assert any(n.startswith("rp-worker-1:") and "worker_1" in n for n in nodes)
    assert any(n.startswith("rp-worker-2:") and "worker_2" in n for n in nodes)


def test_a_client_without_the_token_is_refused(local_cluster):
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(Exception, match="(?i)auth|token|401|403"):
        JobSubmissionClient(local_cluster.dashboard).list_jobs()
    with pytest.raises(Exception, match="(?i)auth|token|401|403"):
        JobSubmissionClient(local_cluster.dashboard, headers={"Authorization": "Bearer wrong"}).list_jobs()
    wrong = {**local_cluster.client_env, "RAY_AUTH_TOKEN": "wrong"}
    listed = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "list"], env=wrong,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert listed.returncode != 0 and "token" in (listed.stdout + listed.stderr).lower()


def _own_table_config(tmp_path: Path) -> Path:
    """A user's table and its inferred config, on storage every node of this machine sees."""
    from typer.testing import CliRunner

    from ray_pipeline.cli import app
    from tests.tables import churn_table

    csv = tmp_path / "churn.csv"
    churn_table(3000).to_csv(csv, index=False)
    config = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(app, ["init", "--data", str(csv), "--label", "Churn", "--positive", "Yes",
                                      "--out", str(config)])  # fmt: skip
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(config.read_text())
    body["training"]["workers"] = 2
    body["training"]["in_process_max_rows"] = 0  # train on Ray Train workers, as a large table would
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    return config


@pytest.fixture(scope="module")
def trained(local_cluster, tmp_path_factory) -> Path:
    """A user's table run through `ray job submit ... ray-pipeline run` (the CLI a user types), both
    model kinds on Ray Train workers."""
    config = _own_table_config(tmp_path_factory.mktemp("own-table"))
    submitted = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "job", "submit", "--working-dir", str(ROOT), "--",
         "ray-pipeline", "run", "--config", str(config), "--models", "logreg,xgboost"],
        env=local_cluster.client_env, capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout + submitted.stderr
    return config


def test_jobs_run_the_pipeline_on_the_cluster(local_cluster, trained, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from ray_pipeline.config import load_config
    from ray_pipeline.registry.handoff import open_registry

    # 1. `ray job submit` (the fixture): both kinds registered, one promoted, outputs on shared storage
    cfg = load_config(trained)
    registry = open_registry(cfg)
    kinds = [v.kind for v in registry.versions(cfg.registry.model_name)]
    # both kinds, and their blend when it beat each alone on validation
    assert sorted(kinds) in (["logreg", "xgboost"], ["ensemble", "logreg", "xgboost"]), kinds
    assert registry.aliases(cfg.registry.model_name).get("champion") in range(1, len(kinds) + 1)
    assert Path(cfg.data.output.accepted).is_dir()

    # 2. the Python SDK: status and logs, here of a job naming a path only the submitting machine has
    body = yaml.safe_load(trained.read_text())
    body["data"]["source"]["path"] = "/home/me/laptop-only/churn.csv"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    client = JobSubmissionClient(local_cluster.dashboard, headers=local_cluster.headers())
    job = client.submit_job(entrypoint=f"ray-pipeline run --config {config}", runtime_env={"working_dir": str(ROOT)})
    finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    assert wait_until(lambda: client.get_job_status(job) in finished, 300, every=2), "job did not finish in time"
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.FAILED
    assert "/home/me/laptop-only/churn.csv: source not found" in logs, logs[-2000:]
    assert "storage every node shares" in logs and "Traceback" not in logs  # one clear line, exit 2


def _driver(local_cluster, workdir: Path) -> subprocess.Popen:
    # a driver joins through the head's GCS port (the dashboard address is the job API's); no
    # worker output forwarded to it (quiet), so a pipe read only at the end never fills up
    env = {**local_cluster.client_env, "RAY_ADDRESS": local_cluster.client_env["RP_GCS_ADDRESS"],
           "RAY_PIPELINE_PROGRESS": "0"}  # fmt: skip
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "multinode_train.py"), str(workdir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _tagged(tag: str, stdout: str, stderr: str = ""):
    """The JSON after `tag` on its own line: Ray can print (raylet) lines to the same stdout."""
    line = next((x for x in stdout.splitlines() if x.startswith(tag + " ")), None)
    assert line is not None, stdout[-2000:] + stderr[-4000:]
    return json.loads(line[len(tag) + 1:])


def _result(stdout: str, stderr: str) -> dict:
    return _tagged("RESULT", stdout, stderr)


def _actor_nodes(local_cluster, class_prefix: str) -> list[str]:
    """Node names (one per actor, sorted) of the alive actors whose class starts with `class_prefix`.

    From the head's state API over HTTP: a probe process joining as a driver (as this did) makes
    every node start workers for its job, and the serving test polls it every 2 s."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(local_cluster.dashboard, headers=local_cluster.headers())
    nodes = client.list(StateResource.NODES, ListApiOptions(limit=10_000), raise_on_missing_output=False)
    names = {n.node_id: n.node_name for n in nodes}
    actors = client.list(StateResource.ACTORS, ListApiOptions(filters=[("state", "=", "ALIVE")], limit=10_000),
                         raise_on_missing_output=False)  # fmt: skip
    return sorted(names[a.node_id] for a in actors if a.class_name.startswith(class_prefix))


def test_training_across_nodes_resumes_when_a_worker_node_is_lost(local_cluster, tmp_path):
    """Workers spread over both worker nodes; one node is killed mid-run (after the controller
    holds a checkpoint): the worker group restarts on the node that is left, resumes from the
    checkpoint and ends with the weights of an uninterrupted run packed on one node."""
    # both worker nodes (2 CPUs each) up: after the loss, both workers fit on the one that is left
    subprocess.run([str(UP), "2"], env=local_cluster.script_env, check=True, timeout=300, capture_output=True)
    proc = _driver(local_cluster, tmp_path)
    lines = []
    while not (lines and lines[-1].startswith("TRAINING ")):  # the baseline has finished
        lines.append(proc.stdout.readline())
        assert lines[-1], "driver exited early:\n" + "".join(lines) + proc.stderr.read()[-4000:]
    runs = Path(lines[-1].split("TRAINING ", 1)[1].strip())

    def checkpoints() -> list[Path]:  # registered by the controller: the kill must come after two
        return sorted(runs.glob("*/checkpoint_*"))

    assert wait_until(lambda: len(checkpoints()) >= 2, 120, every=0.2), "no checkpoints before the kill"
    nodes = _actor_nodes(local_cluster, "RayTrainWorker")
    assert len(set(nodes)) == 2, f"workers should be spread over both worker nodes: {nodes}"
    victim = nodes[0]
    killed_at = time.time()
    subprocess.run([str(DOWN), "worker", victim.removeprefix("rp-worker-")], env=local_cluster.script_env,
                   check=True, timeout=60)  # fmt: skip
    stdout, stderr = proc.communicate(timeout=600)
    out = _result(stdout, stderr)
    baseline, resumed = out["baseline"], out["interrupted"]
    assert len(set(baseline["nodes"])) == 1  # STRICT_PACK: both workers on one node
    assert out["resumed_from"] is not None and out["resumed_from"] >= 2, "the restarted group did not resume"
    print(f"training under node loss: killed {victim} {killed_at - out['started']:.1f} s into the run; "
          f"resumed from epoch {out['resumed_from']} {out['resumed_at'] - killed_at:.1f} s after the kill "
          f"(recovery), finished {out['finished'] - killed_at:.1f} s after it ({out['epochs']} epochs)")  # fmt: skip
    assert victim not in resumed["nodes"] and len(resumed["nodes"]) == 2
    np.testing.assert_allclose(resumed["weights"], baseline["weights"], atol=1e-6, rtol=0)
    assert abs(resumed["bias"] - baseline["bias"]) < 1e-6
    # the lost node stays down: a test that needs both brings them up first (`up.sh` is idempotent)


def test_serving_keeps_answering_when_a_replica_node_is_lost(local_cluster, trained):
    import threading

    from ray_pipeline.runtime import free_port
    from ray_pipeline.serve.client import http_json

    # both worker nodes up (idempotent): a replica's node is lost below and one must be left
    subprocess.run([str(UP), "2"], env=local_cluster.script_env, check=True, timeout=300, capture_output=True)
    config = trained.parent / "serve.yaml"  # beside the original: its relative paths mean the same
    body = yaml.safe_load(trained.read_text())
    body["serving"] = {**body.get("serving", {}), "port": free_port(), "app_name": "churn-ha",
                       "autoscaling": {"min_replicas": 2, "max_replicas": 2}}  # fmt: skip
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    deployed = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "job", "submit", "--working-dir", str(ROOT), "--",
         "ray-pipeline", "serve", "deploy", "--config", str(config)],
        env=local_cluster.client_env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    url = re.search(r"at (http://\S+)/predict", deployed.stdout + deployed.stderr).group(1)
    record = {"gender": "Female", "tenure": 3.0, "Contract": "Month-to-month", "InternetService": "Fiber optic",
              "MonthlyCharges": 95.5, "TotalCharges": 280.1}  # fmt: skip
    status, answer = http_json(url + "/predict", {"records": [record]})
    assert status == 200, answer
    # the model app's replicas only: `serve deploy` also starts the console's application
    replicas = "ServeReplica:churn-ha:"
    before = _actor_nodes(local_cluster, replicas)
    assert len(before) == 2

    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def load() -> None:  # steady load: one request after another
        while not stop.is_set():
            try:
                code, _ = http_json(url + "/predict", {"records": [record]}, timeout=10)
            except OSError:
                code = 0
            results.append((time.monotonic(), code))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    assert wait_until(lambda: len(results) >= 20, 30, every=0.1), "no steady load before the kill"
    victim = before[0]
    killed_at = time.monotonic()
    subprocess.run([str(DOWN), "worker", victim.removeprefix("rp-worker-")], env=local_cluster.script_env,
                   check=True, timeout=60)  # fmt: skip

    def rescheduled() -> list:  # replicas on the nodes that are left
        after = _actor_nodes(local_cluster, replicas)
        return after if len(after) == 2 and victim not in after else []

    after = wait_until(rescheduled, 180, every=2)
    assert after, f"replicas not rescheduled: {_actor_nodes(local_cluster, replicas)}"
    rescheduled_s = time.monotonic() - killed_at
    served = len(results)  # load keeps being answered after the move
    assert wait_until(lambda: len(results) >= served + 20, 30, every=0.1)
    stop.set()
    thread.join(30)
    failed = [t for t, code in results if code != 200]
    late = [code for t, code in results if t > killed_at + rescheduled_s]
    print(f"serving under node loss: {len(results)} requests, {len(failed)} failed, replicas rescheduled "
          f"{rescheduled_s:.1f} s after the kill")  # fmt: skip
    assert len(results) > 20 and late and all(code == 200 for code in late)
    assert len(failed) <= len(results) // 4, f"{len(failed)} of {len(results)} requests failed"
    # no shutdown job: the module's teardown stops the whole cluster, the app with it
