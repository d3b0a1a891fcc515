"""`demo`: the end-to-end job on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ray_pipeline.cli.context import (
    AddressOpt,
    ConfigOpt,
    VerboseOpt,
    friendly_errors,
    heading,
    start_ray,
    synthetic_spec,
)
from ray_pipeline.config import ConfigError, load_config

app = typer.Typer()


@app.command()
@friendly_errors
def demo(
    config: ConfigOpt = Path("configs/demo.yaml"),
    rows: Annotated[int | None, typer.Option(help="Override the number of synthetic rows.")] = None,
    loop_window: Annotated[float, typer.Option(help="Seconds per monitoring window in the closed loop.")] = 5.0,
    per_window: Annotated[
        int, typer.Option(help="Replayed records per window (fewer: a faster loop, a noisier retrain decision).")
    ] = 6000,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the end-to-end job: synthetic data, then `run` (ingest, features, online store, training,
    registry, serving), then the closed loop (drift, monitoring, alert, retrain, promotion)."""
    from ray_pipeline.demo.run import STEPS, run_demo

    cfg = load_config(config)
    if cfg.synthetic is None:
        raise ConfigError(f"{config}: synthetic: the demo needs a `synthetic` section")
    spec = synthetic_spec(cfg, {"rows": rows}, {})
    runtime = start_ray(address, verbose)
    where = "local Ray" if runtime.local else f"Ray cluster at {runtime.address}"
    heading(f"[1/{STEPS}] {where}, {runtime.num_cpus:g} CPUs")
    run_demo(cfg, spec, runtime, typer.echo, heading, loop_window, per_window)
