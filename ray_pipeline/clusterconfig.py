"""Cluster manifests from the same pipeline.yaml: KubeRay (RayCluster, RayJob, RayService) and a
Ray cluster-launcher config, with the image pinned to the Ray version this package runs on.

The environment flags are the ones docs/operations.md names (Serve's HAProxy front door, direct
ingress and throughput profile; no doubled training prints; no usage stats), plus token
authentication with the token taken from a Kubernetes Secret (or the launcher's token file).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError

ENV_FLAGS = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
}
METRICS_PORT = 8080
IN_IMAGE = "/app"  # where the Dockerfile puts the project (and the pipeline config)


@dataclass
class ClusterSpec:
    """Sizes and names of the generated cluster."""

    name: str
    image: str
    max_workers: int = 4
    worker_cpus: int = 2
    worker_memory: str = "8Gi"
    head_memory: str = "8Gi"
    token_secret: str = "ray-pipeline-auth"


class _Block(str):
    """A multi-line string written as a YAML literal block (readable serveConfigV2)."""


yaml.SafeDumper.add_representer(_Block, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|"))


def ray_version() -> str:
    """The Ray version installed with this package (what pyproject.toml pins)."""
    return importlib.metadata.version("ray")


def default_image() -> str:
    """The project image built FROM rayproject/ray at the same Ray version."""
    return f"ray-pipeline:{ray_version()}"


def dockerfile() -> str:
    """A Dockerfile: the Ray image of the pinned version plus this project."""
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return (
        f"# Build from the project root: docker build -f <this file> -t {default_image()} .\n"
        f"FROM rayproject/ray:{ray_version()}-{py}\n"
        f"COPY --chown=ray:users . {IN_IMAGE}\n"
        f"RUN pip install --no-cache-dir -e {IN_IMAGE}\n"
        f"WORKDIR {IN_IMAGE}\n"
    )


def _env(spec: ClusterSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in ENV_FLAGS.items()]
    env.append({"name": "RAY_AUTH_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": spec.token_secret, "key": "auth_token"}}})  # fmt: skip
    return env


def _pod(spec: ClusterSpec, name: str, cpus: int, memory: str, ports: list[tuple[int, str]]) -> dict[str, Any]:
    resources = {"cpu": str(cpus), "memory": memory}
    return {
        "spec": {
            "containers": [
                {
                    "name": name,
                    "image": spec.image,
                    "env": _env(spec),
                    "ports": [{"containerPort": p, "name": n} for p, n in ports],
                    "resources": {"requests": resources, "limits": resources},
                    # Ray's object store lives in /dev/shm; the container default (64 MB) is far too small.
                    "volumeMounts": [{"mountPath": "/dev/shm", "name": "dshm"}],
                }
            ],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        }
    }


def raycluster_spec(cfg: PipelineConfig, spec: ClusterSpec) -> dict[str, Any]:
    """The RayCluster spec: a head (no tasks scheduled on it) and an autoscaling worker group."""
    head_ports = [(6379, "gcs-server"), (8265, "dashboard"), (10001, "client"),
                  (cfg.serving.port, "serve"), (METRICS_PORT, "metrics")]  # fmt: skip
    return {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": 120},
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": str(METRICS_PORT)},
            "template": _pod(spec, "ray-head", 2, spec.head_memory, head_ports),
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": 1,
                "minReplicas": 1,
                "maxReplicas": spec.max_workers,
                "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
                "template": _pod(spec, "ray-worker", spec.worker_cpus, spec.worker_memory, [(METRICS_PORT, "metrics")]),
            }
        ],
    }


def _meta(spec: ClusterSpec, suffix: str) -> dict[str, Any]:
    return {"name": f"{spec.name}-{suffix}", "labels": {"app.kubernetes.io/part-of": "ray-pipeline"}}


def kuberay_manifests(cfg: PipelineConfig, config_in_image: str, spec: ClusterSpec) -> dict[str, dict[str, Any]]:
    """RayCluster, RayJob (runs the pipeline) and RayService (serves the champion), by file name."""
    from ray_pipeline.serve.entry import deploy_config  # here: Ray Serve's import cost, for manifests only

    cluster = raycluster_spec(cfg, spec)
    serve_config = deploy_config(config_in_image, cfg)
    return {
        "raycluster.yaml": {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _meta(spec, "cluster"),
                            "spec": cluster},
        "rayjob.yaml": {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": _meta(spec, "run"),
            "spec": {
                "entrypoint": f"python -m ray_pipeline.cli run --config {config_in_image}",
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": 600,
                "rayClusterSpec": cluster,
            },
        },
        "rayservice.yaml": {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": _meta(spec, "serve"),
            "spec": {"serveConfigV2": _Block(yaml.safe_dump(serve_config, sort_keys=False)), "rayClusterConfig": cluster},
        },
    }  # fmt: skip


def launcher_config(cfg: PipelineConfig, config_in_image: str, spec: ClusterSpec, head_ip: str,
                    worker_ips: list[str]) -> dict[str, Any]:  # fmt: skip
    """A `ray up` config for machines you already have (provider: local), running the same image."""
    flags = " ".join(f"{k}={v}" for k, v in ENV_FLAGS.items())
    token = "RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token"
    return {
        "cluster_name": spec.name,
        "max_workers": len(worker_ips),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {
            "image": spec.image,
            "container_name": "ray_pipeline",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536", "--shm-size=8g"],
        },
        "provider": {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips)},
        "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa"},
        # The token file `ray get-auth-token --generate` writes, copied to every node.
        "file_mounts": {"/home/ray/.ray/auth_token": "~/.ray/auth_token"},
        "head_start_ray_commands": [
            "ray stop",
            f"{flags} {token} ray start --head --port=6379 --dashboard-host=0.0.0.0 "
            f"--metrics-export-port={METRICS_PORT} --autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"{flags} {token} ray start --address=$RAY_HEAD_IP:6379 --metrics-export-port={METRICS_PORT}",
        ],
    }


def write_configs(cfg: PipelineConfig, config_path: str, target: str, out: str, spec: ClusterSpec,
                  head_ip: str = "HEAD_IP", worker_ips: list[str] | None = None) -> list[str]:  # fmt: skip
    """Write the target's files (and the Dockerfile) under `out`; returns their paths."""
    relative = os.path.relpath(os.path.abspath(config_path), os.getcwd())
    if relative.startswith(".."):
        raise UserError(f"--config {config_path}: must be inside the current directory, the image's build context")
    config_in_image = f"{IN_IMAGE}/{relative}"
    os.makedirs(out, exist_ok=True)
    files: dict[str, str] = {"Dockerfile": dockerfile()}
    header = f"# Generated by `ray-pipeline cluster config` from {config_path}; Ray {ray_version()}.\n"
    if target == "kuberay":
        for name, body in kuberay_manifests(cfg, config_in_image, spec).items():
            files[name] = header + yaml.safe_dump(body, sort_keys=False)
    elif target == "launcher":
        body = launcher_config(cfg, config_in_image, spec, head_ip, worker_ips or ["WORKER_IP_1", "WORKER_IP_2"])
        files["cluster.yaml"] = header + yaml.safe_dump(body, sort_keys=False)
    else:
        raise UserError(f"--target {target!r}: expected kuberay or launcher")
    written = []
    for name, text in files.items():
        path = os.path.join(out, name)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written
