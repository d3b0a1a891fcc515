"""`features`: views, the point-in-time training set and the online store."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer

from ray_pipeline.cli.context import AddressOpt, ConfigOpt, VerboseOpt, connect, friendly_errors
from ray_pipeline.config import load_config
from ray_pipeline.errors import UserError

app = typer.Typer(help="Feature views, training set, FeatureSpec and the online store.", no_args_is_help=True)


@app.command("fit")
@friendly_errors
def features_fit(config: ConfigOpt, address: AddressOpt = None, verbose: VerboseOpt = False) -> None:
    """Build the feature views, join the training set point-in-time and fit the FeatureSpec."""
    from ray_pipeline.features.build import build_features

    cfg = connect(config, address, verbose).cfg
    typer.echo(build_features(cfg).render())


@app.command("materialize")
@friendly_errors
def features_materialize(
    config: ConfigOpt,
    start: Annotated[datetime | None, typer.Option(help="Only values from this time on (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Only values before this time (UTC).")] = None,
    view: Annotated[list[str], typer.Option(help="Views to materialize (default: all); repeatable.")] = [],
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Load the latest value per entity of each feature view into the online store."""
    from ray_pipeline.features.build import materialize_online

    cfg = connect(config, address, verbose).cfg
    for name, counts in materialize_online(cfg, start, end, view or None).items():
        typer.echo(f"{name}: {counts['candidates']:,} entity values considered, {counts['written']:,} written")


@app.command("get")
@friendly_errors
def features_get(
    config: ConfigOpt,
    entity: Annotated[list[str], typer.Option("--entity", "-e", help="Entity id; repeatable.")],
    view: Annotated[str | None, typer.Option(help="Feature view (default: the only one configured).")] = None,
    now: Annotated[datetime | None, typer.Option(help="Evaluate the TTL at this time (UTC); default now.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Read feature values for entities from the online store, with their status."""
    from ray_pipeline.config import as_utc
    from ray_pipeline.features.build import online_store

    cfg = load_config(config)
    views = cfg.features.views
    if view is None:
        if len(views) != 1:
            raise UserError(f"--view is required: configured views are {sorted(views)}")
        view = next(iter(views))
    if view not in views:
        raise UserError(f"--view {view!r}: not a configured view; expected one of {sorted(views)}")
    when = as_utc(now) if now is not None else None
    store = online_store(cfg)
    try:
        rows = store.get(view, entity, views[view].feature_names, views[view].ttl_seconds, when)
    finally:
        store.close()
    for row in rows:
        stamp = row.feature_ts.isoformat() if row.feature_ts else "-"
        values = json.dumps(row.values) if row.status == "present" else ""
        typer.echo(f"{row.entity}\t{row.status}\t{stamp}\t{values}")
