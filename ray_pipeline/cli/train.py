"""Commands that train: `train` one model, `run` the whole pipeline, `predict` in batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ray_pipeline.cli.context import (
    AddressOpt,
    ConfigOpt,
    VerboseOpt,
    connect,
    friendly_errors,
    heading,
    start_ray,
)
from ray_pipeline.config import load_config
from ray_pipeline.errors import UserError

app = typer.Typer()


@app.command()
@friendly_errors
def train(
    config: ConfigOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="logreg or xgboost.")] = "logreg",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (default: training.workers).")] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Register the run and offer it to the served alias through the gates.")
    ] = False,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train a model on the feature store's training set with Ray Train; print the evaluation."""
    from ray_pipeline.workflow.pipeline import check_models, train_models
    from ray_pipeline.workflow.promotion import register_and_promote

    cfg = connect(config, address, verbose).cfg
    [run] = train_models(cfg, check_models([model]), workers=workers, echo=typer.echo)
    if register:
        typer.echo("\n".join(register_and_promote(cfg, [run], cfg.serving.alias).lines))


@app.command()
@friendly_errors
def tune(
    config: ConfigOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="logreg or xgboost.")] = "xgboost",
    trials: Annotated[int | None, typer.Option(help="Trials in all (default: training.search.trials).")] = None,
    resume: Annotated[
        str | None, typer.Option(help="Finish the search with this id whose driver stopped (finished trials are kept).")
    ] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Search hyperparameters on Ray Tune (training.search); register the best trial and offer it to the gates."""
    from ray_pipeline.workflow.pipeline import check_models
    from ray_pipeline.workflow.search import search_and_register

    cfg = connect(config, address, verbose).cfg
    [kind] = check_models([model])
    if trials is not None and trials < 1:
        raise UserError(f"--trials {trials}: give at least 1")
    if resume is not None and trials is not None:
        raise UserError("--resume finishes a search with the trials it was started with; leave out --trials")
    search_and_register(cfg, kind, trials, echo=typer.echo, resume=resume)


@app.command()
@friendly_errors
def run(
    config: ConfigOpt,
    models: Annotated[str, typer.Option(help="Comma-separated model kinds to train.")] = "logreg,xgboost",
    serve: Annotated[bool, typer.Option("--serve", help="Deploy the champion on Ray Serve.")] = False,
    search: Annotated[
        bool, typer.Option("--search", help="Search each model's hyperparameters on Ray Tune (training.search).")
    ] = False,
    wait: Annotated[
        bool | None, typer.Option(help="With --serve: keep serving until Ctrl-C (default: yes on an embedded Ray).")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="Seconds of training for every model kind together: "
                                   "a search within them (training.time_budget_s).", min=1)
    ] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest, features, train each model, register, promote through the gates, optionally serve."""
    from ray_pipeline.runtime import logs_dir
    from ray_pipeline.workflow.pipeline import Stages, check_models, run_pipeline

    cfg = load_config(config)
    if time_budget is not None:
        cfg.training.time_budget_s = time_budget
    kinds = check_models([m.strip() for m in models.split(",") if m.strip()])
    runtime = start_ray(address, verbose)
    stages = Stages(5 + serve, typer.echo, heading)
    done = run_pipeline(cfg, kinds, serve=serve, local=runtime.local, echo=typer.echo, stages=stages, search=search)
    typer.echo(done.timing_line())
    logs = logs_dir()
    run_root = cfg.training.run_root
    if runtime.local and logs and "://" not in run_root:
        # The embedded Ray's logs live in its temp dir (socket paths must stay short): link them
        # beside the runs they belong to.
        link = Path(run_root) / "ray-logs"
        link.unlink(missing_ok=True)
        link.symlink_to(logs, target_is_directory=True)
        typer.echo(f"Ray's own logs (workers' epoch lines, Ray Data): {link} -> {logs}")
    champion = done.promotion.champion
    if champion is not None:
        typer.echo(f"models:/{cfg.registry.model_name}@{cfg.serving.alias} = {champion.uri} ({champion.kind})")
    if serve:
        from ray_pipeline.workflow.serving import ServingSession

        ServingSession(cfg, runtime, typer.echo).start(url=done.url).hold(wait)


@app.command()
@friendly_errors
def predict(
    config: ConfigOpt,
    input_path: Annotated[str, typer.Option("--input", "-i", help="File, directory, glob or URI to score.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory (Parquet), replaced if it holds scores.")],
    model: Annotated[
        str | None, typer.Option(help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the served alias).")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv, parquet or json (default: from extensions).")] = None,
    explain: Annotated[
        int, typer.Option(help="Add an `explanation` column (JSON) with the top N columns by contribution; 0: none.")
    ] = 0,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score a file or directory in batch with Ray Data and a registered model (its own FeatureSpec)."""
    from ray_pipeline.registry.handoff import load, open_registry
    from ray_pipeline.workflow.scoring import score_files

    cfg = load_config(config)
    uri = model or f"models:/{cfg.registry.model_name}@{cfg.serving.alias}"
    loaded = load(open_registry(cfg), uri)
    start_ray(address, verbose, cfg)
    if explain < 0:
        raise UserError(f"--explain {explain}: give a number of columns (0 for none)")
    typer.echo(score_files(cfg, loaded, input_path, out, fmt, explain).render())
