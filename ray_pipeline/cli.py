"""`ray-pipeline`: one command per stage, plus `demo` (the end-to-end job on a local or remote Ray)."""

from __future__ import annotations

import functools
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import typer

from ray_pipeline.config import ConfigError, PipelineConfig, SyntheticConfig, load_config

app = typer.Typer(
    help="ray-pipeline: data, features, training, registry, serving and monitoring on one Ray cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of the pipeline.yaml to use.")]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to connect to (e.g. ray://head:10001 or auto); a local Ray starts if unset.",
    ),
]

F = TypeVar("F", bound=Callable[..., object])


def _friendly_errors(fn: F) -> F:
    """Turn the errors users cause (bad config, missing file, bad data) into one clear line."""
    from ray_pipeline.data.sources import IngestError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, IngestError, ValueError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _parse_pairs(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected NAME=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _synthetic_spec(
    cfg: PipelineConfig | None, overrides: dict[str, object], drift: dict[str, object]
) -> SyntheticConfig:
    base = cfg.synthetic.model_dump() if cfg is not None and cfg.synthetic is not None else {}
    base.update({k: val for k, val in overrides.items() if val is not None})
    if drift:
        base["drift"] = {**(base.get("drift") or {}), **drift}
    return SyntheticConfig.model_validate(base)


@app.command()
@_friendly_errors
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
) -> None:
    """Generate synthetic transactions with a known label probability (p_true) in parallel."""
    from ray_pipeline.data.synthetic import generate as run_generate
    from ray_pipeline.runtime import init_ray

    cfg = load_config(config) if config else None
    drift: dict[str, object] = {}
    if drift_start is not None:
        drift["start"] = drift_start
    if shift:
        drift["covariate_shift"] = {
            k: dict(zip(("loc", "scale"), map(float, val.split(":"))))
            for k, val in _parse_pairs(shift, "--shift").items()
        }
    if new_categories:
        drift["new_categories"] = {k: float(x) for k, x in _parse_pairs(new_categories, "--new-categories").items()}
    if concept:
        drift["concept_drift"] = {k: float(x) for k, x in _parse_pairs(concept, "--concept").items()}
    if drift and "start" not in drift and not (cfg and cfg.synthetic and cfg.synthetic.drift):
        raise ValueError("--drift-start is required with --shift, --new-categories or --concept")
    spec = _synthetic_spec(
        cfg,
        {"rows": rows, "seed": seed, "entities": entities, "start": start, "days": days,
         "format": fmt, "corruption_rate": corruption_rate},
        drift,
    )  # fmt: skip
    if out is None:
        if cfg is None:
            raise ValueError("--out is required unless --config gives data.source.path")
        out = cfg.resolve(cfg.data.source.path)
    init_ray(address)
    result = run_generate(spec, out)
    typer.echo(f"generated {result.rows:,} rows ({result.format}) in {result.seconds:.1f} s -> {result.path}")


@app.command()
@_friendly_errors
def ingest(
    config: ConfigOpt,
    address: AddressOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Read and validate the configured source; write accepted rows and a quarantine of bad rows."""
    from ray_pipeline.data.ingest import ingest as run_ingest
    from ray_pipeline.runtime import init_ray

    cfg = load_config(config)
    init_ray(address)
    result = run_ingest(cfg)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_output else result.render())


features_app = typer.Typer(help="Feature views, training set, FeatureSpec and the online store.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("fit")
@_friendly_errors
def features_fit(config: ConfigOpt, address: AddressOpt = None) -> None:
    """Build the feature views, join the training set point-in-time and fit the FeatureSpec."""
    from ray_pipeline.features.pipeline import build_features
    from ray_pipeline.runtime import init_ray

    cfg = load_config(config)
    init_ray(address)
    typer.echo(build_features(cfg).render())


@features_app.command("materialize")
@_friendly_errors
def features_materialize(
    config: ConfigOpt,
    start: Annotated[datetime | None, typer.Option(help="Only values from this time on (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Only values before this time (UTC).")] = None,
    view: Annotated[list[str], typer.Option(help="Views to materialize (default: all); repeatable.")] = [],
    address: AddressOpt = None,
) -> None:
    """Load the latest value per entity of each feature view into the online store."""
    from ray_pipeline.features.pipeline import materialize_online
    from ray_pipeline.runtime import init_ray

    cfg = load_config(config)
    init_ray(address)
    for name, counts in materialize_online(cfg, start, end, view or None).items():
        typer.echo(f"{name}: {counts['candidates']:,} entity values considered, {counts['written']:,} written")


@features_app.command("get")
@_friendly_errors
def features_get(
    config: ConfigOpt,
    entity: Annotated[list[str], typer.Option("--entity", "-e", help="Entity id; repeatable.")],
    view: Annotated[str | None, typer.Option(help="Feature view (default: the only one configured).")] = None,
    now: Annotated[datetime | None, typer.Option(help="Evaluate the TTL at this time (UTC); default now.")] = None,
) -> None:
    """Read feature values for entities from the online store, with their status."""
    from datetime import timezone

    from ray_pipeline.features.pipeline import online_store

    cfg = load_config(config)
    views = cfg.features.views
    if view is None:
        if len(views) != 1:
            raise ValueError(f"--view is required: configured views are {sorted(views)}")
        view = next(iter(views))
    if view not in views:
        raise ValueError(f"--view {view!r}: not a configured view; expected one of {sorted(views)}")
    when = now.replace(tzinfo=timezone.utc) if now is not None and now.tzinfo is None else now
    store = online_store(cfg)
    try:
        rows = store.get(view, entity, views[view].feature_names, views[view].ttl_seconds, when)
    finally:
        store.close()
    for row in rows:
        stamp = row.feature_ts.isoformat() if row.feature_ts else "-"
        values = json.dumps(row.values) if row.status == "present" else ""
        typer.echo(f"{row.entity}\t{row.status}\t{stamp}\t{values}")


@app.command()
@_friendly_errors
def train(
    config: ConfigOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="logreg or xgboost.")] = "logreg",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (default: training.workers).")] = None,
    address: AddressOpt = None,
) -> None:
    """Train a model on the feature store's training set with Ray Train; print the evaluation."""
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.runner import summary, train_model

    cfg = load_config(config)
    init_ray(address)
    typer.echo(summary(train_model(cfg, model, workers)))


@app.command()
@_friendly_errors
def demo(
    config: ConfigOpt = Path("configs/demo.yaml"),
    rows: Annotated[int | None, typer.Option(help="Override the number of synthetic rows.")] = None,
    address: AddressOpt = None,
) -> None:
    """Run the end-to-end job: generate data, ingest it, build features, fill the online store."""
    from ray_pipeline.data.ingest import ingest as run_ingest
    from ray_pipeline.data.sources import read_parquet
    from ray_pipeline.data.summary import ground_truth_summary
    from ray_pipeline.data.synthetic import generate as run_generate
    from ray_pipeline.features.pipeline import build_features, materialize_online, online_store, training_set_path
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.data import prepare
    from ray_pipeline.train.runner import summary, train_model

    cfg = load_config(config)
    if cfg.synthetic is None:
        raise ConfigError(f"{config}: synthetic: the demo needs a `synthetic` section")
    spec = _synthetic_spec(cfg, {"rows": rows}, {})
    runtime = init_ray(address)
    where = "local Ray" if runtime.local else f"Ray cluster at {runtime.address}"
    typer.secho(f"[1/6] {where}, {runtime.num_cpus:g} CPUs", bold=True)

    raw = cfg.resolve(cfg.data.source.path)
    result = run_generate(spec, raw)
    typer.secho(f"[2/6] generated {result.rows:,} synthetic rows in {result.seconds:.1f} s -> {raw}", bold=True)

    ingested = run_ingest(cfg)
    typer.secho("[3/6] ingest and validation", bold=True)
    typer.echo(ingested.render())
    truth = ground_truth_summary(ingested.accepted_path, cfg.data.schema_.label)
    typer.echo(truth.render())

    typer.secho("[4/6] feature views, point-in-time training set, FeatureSpec", bold=True)
    built = build_features(cfg)
    typer.echo(built.render())

    typer.secho("[5/6] online store", bold=True)
    for name, counts in materialize_online(cfg).items():
        typer.echo(f"{name}: {counts['written']:,} of {counts['candidates']:,} entity values written")
        store = online_store(cfg)
        try:
            view = cfg.features.views[name]
            # Evaluate the TTL at the end of the data, as a replay of that day would.
            end = spec.start + timedelta(days=spec.days)
            for row in store.get(name, [1, 2, 10**9], view.feature_names, view.ttl_seconds, end):
                typer.echo(f"  {cfg.data.schema_.entity_key}={row.entity}: {row.status} {json.dumps(row.values)}")
        finally:
            store.close()

    typer.secho(f"[6/6] training on Ray Train ({cfg.training.workers} workers), test = latest events", bold=True)
    prepared = prepare(read_parquet(training_set_path(cfg)), cfg)
    typer.echo(f"split by time at {prepared.cutoffs[0]} / {prepared.cutoffs[1]}: {prepared.rows}")
    for kind in ("logreg", "xgboost"):
        typer.echo(summary(train_model(cfg, kind, prepared=prepared)))


def main() -> None:
    """Entry point for `python -m ray_pipeline.cli`."""
    app(prog_name="ray-pipeline")


if __name__ == "__main__":
    sys.exit(main())
