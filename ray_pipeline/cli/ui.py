"""`ui`: the web console alone, on the embedded Ray or an existing cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from ray_pipeline.cli.context import AddressOpt, ConfigOpt, VerboseOpt, connect, friendly_errors

app = typer.Typer()


@app.command()
@friendly_errors
def ui(
    config: ConfigOpt,
    address: AddressOpt = None,
    wait: Annotated[
        bool | None, typer.Option(help="Keep the console up until Ctrl-C (default: yes on an embedded local Ray).")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Start the web console (pipeline map, runs, models, serving, monitoring, data) on Ray Serve."""
    from ray_pipeline.workflow.serving import ServingSession

    ctx = connect(config, address, verbose)
    ServingSession(ctx.cfg, ctx.runtime, typer.echo).start(model=False, console=True).hold(wait)  # asked for by name
