"""`labels`: delayed ground truth for logged predictions."""

from __future__ import annotations

from typing import Annotated

import typer

from ray_pipeline.cli.context import ConfigOpt, VerboseOpt, friendly_errors
from ray_pipeline.config import load_config

app = typer.Typer(help="Delayed ground truth for logged predictions.", no_args_is_help=True)


@app.command("ingest")
@friendly_errors
def labels_ingest(
    config: ConfigOpt,
    path: Annotated[str, typer.Option("--path", "-p", help="CSV, Parquet or JSON-lines file of labels.")],
    verbose: VerboseOpt = False,
) -> None:
    """Validate labels keyed by request_id (and row) or by entity and event time; quarantine bad ones."""
    from ray_pipeline.monitor.labels import ingest_labels

    typer.echo(ingest_labels(load_config(config), path).render())
