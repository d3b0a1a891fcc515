"""`ray-pipeline cluster config`: KubeRay manifests and a cluster-launcher config from one pipeline.yaml,
validated against the schemas Ray ships (no Kubernetes needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app
from ray_pipeline.clusterconfig import ENV_FLAGS, ray_version

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _pyproject_ray_pin() -> str:
    """The Ray version range pyproject.toml pins, e.g. '>=2.60,<2.61'."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith("ray[")).split("]", 1)[1]


@pytest.fixture
def generated(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config must sit inside the image's build context
    out = {}
    for target in ("kuberay", "launcher"):
        result = runner.invoke(app, ["cluster", "config", "--config", "configs/demo.yaml", "--target", target,
                                     "--out", str(tmp_path / target), "--head-ip", "10.0.0.1",
                                     "--worker-ip", "10.0.0.2", "--worker-ip", "10.0.0.3"])  # fmt: skip
        assert result.exit_code == 0, result.output
        out[target] = tmp_path / target
    return out


def test_image_is_pinned_to_the_installed_and_declared_ray_version(generated):
    from packaging.specifiers import SpecifierSet

    version = ray_version()
    assert version in SpecifierSet(_pyproject_ray_pin())
    dockerfile = (generated["kuberay"] / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{version}-py3" in dockerfile
    for name in ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml"):
        text = (generated["kuberay"] / name).read_text()
        assert f"image: ray-pipeline:{version}" in text


def _cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"],
            "RayService": lambda d: d["spec"]["rayClusterConfig"]}[doc["kind"]](doc)  # fmt: skip


def test_kuberay_manifests_have_what_kuberay_requires(generated):
    docs = {p.name: yaml.safe_load(p.read_text()) for p in generated["kuberay"].glob("*.yaml")}
    assert {d["kind"] for d in docs.values()} == {"RayCluster", "RayJob", "RayService"}
    for doc in docs.values():
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
        spec = _cluster_spec(doc)
        assert spec["rayVersion"] == ray_version() and spec["enableInTreeAutoscaling"] is True
        head = spec["headGroupSpec"]
        workers = spec["workerGroupSpecs"]
        assert isinstance(head["rayStartParams"], dict) and len(workers) == 1
        group = workers[0]
        assert group["groupName"] and 0 < group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for pod in (head["template"], group["template"]):
            container = pod["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert {k: env[k] for k in ENV_FLAGS} == ENV_FLAGS  # the flags docs/operations.md names
            token = next(e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN")
            assert token["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
            assert "metrics" in {p["name"] for p in container["ports"]}
            shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]
    job = docs["rayjob.yaml"]["spec"]
    assert job["entrypoint"] == "python -m ray_pipeline.cli run --config /app/configs/demo.yaml"


def test_rayservice_serve_config_passes_serves_schema(generated):
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((generated["kuberay"] / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    app_config = serve_config["applications"][0]
    assert app_config["import_path"] == "ray_pipeline.serve.entry:build"
    assert app_config["args"]["config"] == "/app/configs/demo.yaml"


def test_launcher_config_passes_rays_schema(generated):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())
    body = yaml.safe_load((generated["launcher"] / "cluster.yaml").read_text())
    jsonschema.validate(body, schema)
    assert body["provider"] == {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    assert "RAY_AUTH_MODE=token" in body["head_start_ray_commands"][1]
    # a broken config does not pass: the check has teeth
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "max_workers": "many"}, schema)


def test_config_outside_the_build_context_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["cluster", "config", "--config", str(ROOT / "configs" / "demo.yaml"),
                                 "--target", "kuberay", "--out", str(tmp_path / "k")])  # fmt: skip
    assert result.exit_code == 2 and "build context" in result.output
