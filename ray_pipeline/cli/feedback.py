"""`retrain`: one feedback run by hand."""

from __future__ import annotations

from typing import Annotated

import typer

from ray_pipeline.cli.context import AddressOpt, ConfigOpt, VerboseOpt, connect, friendly_errors

app = typer.Typer()


@app.command()
@friendly_errors
def retrain(
    config: ConfigOpt,
    reason: Annotated[str, typer.Option(help="Why (recorded with the run).")] = "manual",
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Feed labeled traffic back, retrain, compare with the champion on a holdout, promote through the gates."""
    from ray_pipeline.feedback.records import record_path
    from ray_pipeline.monitor.job import describe_feedback
    from ray_pipeline.workflow.retrain import retrain as run_retrain

    cfg = connect(config, address, verbose).cfg
    record = run_retrain(cfg, reason=reason)
    typer.echo(describe_feedback(record))
    typer.echo(f"record: {record_path(cfg, record['id'])}")
    if record.get("decision") == "failed":
        if verbose:
            typer.echo(record.get("traceback", ""), err=True)
        typer.secho(f"error: the retrain failed in stage {record.get('stage')}: {record.get('error')} "
                    "(--verbose prints the traceback the record keeps)", fg=typer.colors.RED, err=True)  # fmt: skip
        raise typer.Exit(code=1)
