"""`ui`: the web console alone, on the embedded Ray or an existing cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from ray_pipeline.cli.context import AddressOpt, ConfigOpt, VerboseOpt, connect, friendly_errors, start_console

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
    import signal
    import time

    from ray import serve

    ctx = connect(config, address, verbose)
    cfg = ctx.cfg
    cfg.console.enabled = True  # asked for by name
    start_console(cfg)
    if not (wait if wait is not None else ctx.runtime.local):
        return
    typer.echo("Ctrl-C (or SIGTERM) stops the console")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    serve.delete(cfg.console.app_name)
