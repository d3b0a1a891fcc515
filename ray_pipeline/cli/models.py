"""`models`: the registry's versions, aliases, promotion and rollback."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ray_pipeline.cli.context import ConfigOpt, NameOpt, VerboseOpt, friendly_errors
from ray_pipeline.config import load_config

app = typer.Typer(help="Model registry: versions, aliases, promotion, rollback.", no_args_is_help=True)


@app.command("list")
@friendly_errors
def models_list(config: ConfigOpt, name: NameOpt = None, verbose: VerboseOpt = False) -> None:
    """List versions with their key metrics and aliases."""
    from ray_pipeline.registry.gates import metrics_text
    from ray_pipeline.registry.handoff import open_registry, registry_db

    cfg = load_config(config)
    registry = open_registry(cfg)
    name = name or cfg.registry.model_name
    versions = registry.versions(name)
    if not versions:
        typer.echo(f"no versions of model {name!r} in {registry_db(cfg)} "
                   "(`ray-pipeline models register --run DIR` or `train --register` adds one)")  # fmt: skip
        return
    by_version: dict[int, list[str]] = {}
    for alias, version in registry.aliases(name).items():
        by_version.setdefault(version, []).append("@" + alias)
    for v in versions:
        aliases = " ".join(by_version.get(v.version, []))
        typer.echo(f"{v.uri:<22} {v.kind:<8} {v.created_at}  {metrics_text(v, '  ')}  {aliases}")


@app.command("register")
@friendly_errors
def models_register(
    config: ConfigOpt,
    run_dir: Annotated[str, typer.Option("--run", help="A training run directory or URI (printed by `train`).")],
    name: NameOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Register a training run as a new version (promote it with `models promote`)."""
    from ray_pipeline.registry.gates import headline
    from ray_pipeline.registry.handoff import open_registry, register_run

    cfg = load_config(config)
    v = register_run(open_registry(cfg), name or cfg.registry.model_name, run_dir)
    typer.echo(headline(v))


@app.command("show")
@friendly_errors
def models_show(
    config: ConfigOpt, uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS")],
    verbose: VerboseOpt = False,
) -> None:
    """Show one version: metrics, params, signature, lineage, files, and what drives its scores."""
    from dataclasses import asdict

    from ray_pipeline.feedback.records import version_race
    from ray_pipeline.registry.handoff import importance, open_registry

    cfg = load_config(config)
    registry = open_registry(cfg)
    version = registry.resolve(uri)
    race = version_race(cfg, version.uri)  # a challenger that raced the champion in shadow
    typer.echo(json.dumps({**asdict(version), "importance": importance(registry, version),
                           **({"race": race} if race else {})}, indent=2))  # fmt: skip


@app.command("promote")
@friendly_errors
def models_promote(
    config: ConfigOpt,
    version: Annotated[int, typer.Option(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
    name: NameOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even if a gate fails (recorded).")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Move an alias to a version if it passes the configured gates against the current holder."""
    from ray_pipeline.registry.gates import promote
    from ray_pipeline.registry.handoff import open_registry

    cfg = load_config(config)
    change, report = promote(
        open_registry(cfg), name or cfg.registry.model_name, version, alias, cfg.registry.gates, force
    )
    typer.echo(report)
    typer.echo(f"@{alias}: {change.from_version} -> {change.to_version} ({change.reason})")


@app.command("rollback")
@friendly_errors
def models_rollback(
    config: ConfigOpt,
    alias: Annotated[str, typer.Option(help="Alias to roll back.")] = "champion",
    name: NameOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Move an alias back to the version it held before its last change."""
    from ray_pipeline.registry.handoff import open_registry

    cfg = load_config(config)
    change = open_registry(cfg).rollback(name or cfg.registry.model_name, alias)
    typer.echo(f"@{alias}: {change.from_version} -> {change.to_version} ({change.reason})")


@app.command("history")
@friendly_errors
def models_history(
    config: ConfigOpt, alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None, name: NameOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Every alias change: time, alias, from -> to, reason, actor."""
    from ray_pipeline.registry.handoff import open_registry

    cfg = load_config(config)
    for c in open_registry(cfg).history(name or cfg.registry.model_name, alias):
        typer.echo(f"{c.at}  @{c.alias:<10} {c.from_version!s:>4} -> {c.to_version!s:<4}  {c.actor:<8} {c.reason}")
