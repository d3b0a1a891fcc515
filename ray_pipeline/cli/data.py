"""Commands of the data stage: `generate` synthetic rows, `init` a config from a table, `ingest`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ray_pipeline.cli.context import (
    AddressOpt,
    ConfigOpt,
    VerboseOpt,
    connect,
    friendly_errors,
    parse_pairs,
    start_ray,
    synthetic_spec,
)
from ray_pipeline.config import load_config
from ray_pipeline.errors import UserError

app = typer.Typer()


@app.command()
@friendly_errors
def generate(
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Output directory or URI; defaults to data.source.path of --config."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="pipeline.yaml whose `synthetic` section sets defaults.")
    ] = None,
    rows: Annotated[int | None, typer.Option(help="Number of rows to generate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; the same seed gives the same rows.")] = None,
    entities: Annotated[int | None, typer.Option(help="Distinct customers (default rows/20).")] = None,
    start: Annotated[datetime | None, typer.Option(help="First event time (UTC).")] = None,
    days: Annotated[float | None, typer.Option(help="Length of the event period in days.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="parquet or csv.")] = None,
    task: Annotated[
        str | None,
        typer.Option(help="binary (fraud 0/1), multiclass (ok/fraud/dispute) or regression (a risk score)."),
    ] = None,
    corruption_rate: Annotated[
        float | None, typer.Option(help="Share of rows turned into bad rows of known kinds (0-0.5).")
    ] = None,
    drift_start: Annotated[
        datetime | None, typer.Option(help="Drift applies to events at or after this time (UTC).")
    ] = None,
    shift: Annotated[
        list[str], typer.Option(help="Covariate shift FEATURE=LOC[:SCALE] in latent std units; repeatable.")
    ] = [],
    new_categories: Annotated[
        list[str], typer.Option(help="COLUMN=RATE: share of drifted rows with unseen categories; repeatable.")
    ] = [],
    concept: Annotated[
        list[str], typer.Option(help="COEFFICIENT=VALUE of the true model after drift start; repeatable.")
    ] = [],
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Generate synthetic transactions with a known ground truth (p_true, or y_true) in parallel."""
    from ray_pipeline.synthetic.transactions import generate as run_generate

    cfg = load_config(config) if config else None
    drift: dict[str, object] = {}
    if drift_start is not None:
        drift["start"] = drift_start
    if shift:
        drift["covariate_shift"] = {
            k: dict(zip(("loc", "scale"), map(float, val.split(":"))))
            for k, val in parse_pairs(shift, "--shift").items()
        }
    if new_categories:
        drift["new_categories"] = {k: float(x) for k, x in parse_pairs(new_categories, "--new-categories").items()}
    if concept:
        drift["concept_drift"] = {k: float(x) for k, x in parse_pairs(concept, "--concept").items()}
    if drift and "start" not in drift and not (cfg and cfg.synthetic and cfg.synthetic.drift):
        raise UserError("--drift-start is required with --shift, --new-categories or --concept")
    spec = synthetic_spec(
        cfg,
        {"rows": rows, "seed": seed, "entities": entities, "start": start, "days": days,
         "format": fmt, "task": task, "corruption_rate": corruption_rate},
        drift,
    )  # fmt: skip
    if out is None:
        if cfg is None:
            raise UserError("--out is required unless --config gives data.source.path")
        out = cfg.data.source.path
    start_ray(address, verbose)
    result = run_generate(spec, out)
    typer.echo(f"generated {result.rows:,} rows ({result.format}) in {result.seconds:.1f} s -> {result.path}")


@app.command()
@friendly_errors
def init(
    data: Annotated[str, typer.Option("--data", "-d", help="CSV, Parquet or JSON-lines file, directory or URI.")],
    label: Annotated[str, typer.Option("--label", "-l", help="The column to predict.")],
    positive: Annotated[
        list[str], typer.Option("--positive", "-p", help="A label value meaning the positive class; repeatable.")
    ] = [],
    threshold: Annotated[
        float | None, typer.Option(help="Numeric label: positive when greater than this.")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="binary, multiclass or regression; unset: inferred from the label column.")
    ] = None,
    exclude: Annotated[
        list[str], typer.Option("--exclude", "-x", help="A column to leave out (a leak, an audit column); repeatable.")
    ] = [],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the pipeline config.")] = Path("pipeline.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Infer a pipeline.yaml from a sample of your table: types, nullability, categories, key, time, label and task."""
    from ray_pipeline.data.infer import write_config

    inferred = write_config(data, label, out, force, positive=positive or None, threshold=threshold, task=task,
                            exclude=exclude or None)  # fmt: skip
    typer.echo(inferred.render())
    typer.echo(f"wrote {out}; next: ray-pipeline run --config {out} --serve")


@app.command()
@friendly_errors
def ingest(
    config: ConfigOpt,
    address: AddressOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Read and validate the configured source; write accepted rows and a quarantine of bad rows."""
    from ray_pipeline.data.ingest import ingest as run_ingest

    cfg = connect(config, address, verbose).cfg
    result = run_ingest(cfg)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_output else result.render())
