"""`cluster`: manifests generated from the pipeline config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ray_pipeline.cli.context import ConfigOpt, VerboseOpt, friendly_errors
from ray_pipeline.config import load_config

app = typer.Typer(help="Cluster manifests generated from the pipeline config.", no_args_is_help=True)


@app.command("config")
@friendly_errors
def cluster_config(
    config: ConfigOpt,
    target: Annotated[str, typer.Option(help="kuberay (RayCluster, RayJob, RayService) or launcher (ray up).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the manifests and the Dockerfile.")],
    image: Annotated[str | None, typer.Option(help="Container image (default: ray-pipeline:RAY_VERSION).")] = None,
    max_workers: Annotated[int, typer.Option(help="Most worker nodes the autoscaler may start.")] = 4,
    worker_cpus: Annotated[int, typer.Option(help="CPUs per worker node.")] = 2,
    worker_memory: Annotated[str, typer.Option(help="Memory per worker pod (Kubernetes quantity).")] = "8Gi",
    head_ip: Annotated[str, typer.Option(help="launcher: the head machine's address.")] = "HEAD_IP",
    worker_ip: Annotated[list[str], typer.Option(help="launcher: a worker machine's address; repeatable.")] = [],
    verbose: VerboseOpt = False,
) -> None:
    """Write KubeRay manifests or a cluster-launcher config (validated) for this pipeline."""
    from ray_pipeline.clusterconfig import ClusterSpec, default_image, write_configs

    cfg = load_config(config)
    spec = ClusterSpec(cfg.registry.model_name.lower().replace("_", "-").replace(".", "-"), image or default_image(),
                       max_workers, worker_cpus, worker_memory)  # fmt: skip
    for path in write_configs(cfg, str(config), target, str(out), spec, head_ip, worker_ip or None):
        typer.echo(f"wrote {path}")
