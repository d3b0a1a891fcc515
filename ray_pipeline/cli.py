"""`ray-pipeline`: one command per stage, plus `demo` (the end-to-end job on a local or remote Ray)."""

from __future__ import annotations

import functools
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import typer

from ray_pipeline.config import ConfigError, PipelineConfig, SyntheticConfig, load_config
from ray_pipeline.errors import UserError

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


VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Ray's own logs and per-worker lines instead of progress bars; tracebacks."),
]


def _friendly_errors(fn: F) -> F:
    """Turn errors into one clear line (exit 2 for what the user can fix, 1 otherwise); the
    traceback only with --verbose (or RAY_PIPELINE_TRACEBACK=1)."""
    import click

    from ray_pipeline.data.sources import IngestError
    from ray_pipeline.registry.store import RegistryError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (UserError, IngestError, RegistryError, FileNotFoundError) as exc:  # ConfigError is a UserError
            if kwargs.get("verbose") or os.environ.get("RAY_PIPELINE_TRACEBACK") == "1":
                raise
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except Exception as exc:
            if kwargs.get("verbose") or os.environ.get("RAY_PIPELINE_TRACEBACK") == "1":
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            typer.secho(f"error: {type(exc).__name__}: {first} (--verbose shows the traceback)",
                        fg=typer.colors.RED, err=True)  # fmt: skip
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def _heading(text: str) -> None:
    typer.secho(text, bold=True)


def _start_ray(address: str | None, verbose: bool = False, cfg: PipelineConfig | None = None):
    """Connect to Ray; without --verbose Ray's per-worker output stays in its log files and our
    progress bars show instead. Without an address, a local Ray that `run --serve` started for the
    same config is attached to instead of starting a second one beside it."""
    from ray_pipeline.progress import set_enabled
    from ray_pipeline.runtime import init_ray, serving_ray

    set_enabled(not verbose)
    if not (address or os.environ.get("RAY_ADDRESS")) and cfg is not None:
        address = serving_ray(_attach_file(cfg))
        if address:
            typer.echo(f"attached to the local Ray that `run --serve` started: {address}")
    return init_ray(address, quiet=not verbose)


def _attach_file(cfg: PipelineConfig) -> Path:
    """Where `run --serve` says which local Ray it started for this config (beside the config)."""
    return cfg.base_dir / ".ray-pipeline" / "ray.json"


def _stop_on_signals(echo: Callable[[str], object]):
    """An event SIGTERM and SIGINT set instead of interrupting: a long-lived job stops between two
    units of work (a window, a retrain) with its state saved, never in the middle of one."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not stop.is_set():
            echo(f"{signal.Signals(signum).name}: stopping after the current step")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _parse_pairs(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option}: expected NAME=VALUE, got {item!r}")
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
    verbose: VerboseOpt = False,
) -> None:
    """Generate synthetic transactions with a known label probability (p_true) in parallel."""
    from ray_pipeline.data.synthetic import generate as run_generate

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
        raise UserError("--drift-start is required with --shift, --new-categories or --concept")
    spec = _synthetic_spec(
        cfg,
        {"rows": rows, "seed": seed, "entities": entities, "start": start, "days": days,
         "format": fmt, "corruption_rate": corruption_rate},
        drift,
    )  # fmt: skip
    if out is None:
        if cfg is None:
            raise UserError("--out is required unless --config gives data.source.path")
        out = cfg.resolve(cfg.data.source.path)
    _start_ray(address, verbose)
    result = run_generate(spec, out)
    typer.echo(f"generated {result.rows:,} rows ({result.format}) in {result.seconds:.1f} s -> {result.path}")


@app.command()
@_friendly_errors
def init(
    data: Annotated[str, typer.Option("--data", "-d", help="CSV, Parquet or JSON-lines file, directory or URI.")],
    label: Annotated[str, typer.Option("--label", "-l", help="The column to predict.")],
    positive: Annotated[
        list[str], typer.Option("--positive", "-p", help="A label value meaning the positive class; repeatable.")
    ] = [],
    threshold: Annotated[
        float | None, typer.Option(help="Numeric label: positive when greater than this.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the pipeline config.")] = Path("pipeline.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Infer a pipeline.yaml from a sample of your table: types, nullability, categories, key, time, label."""
    from ray_pipeline.data.infer import infer_config

    if out.exists() and not force:
        raise UserError(f"--out {out}: exists; pass --force to overwrite it")
    inferred = infer_config(data, label, positive or None, threshold, str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(inferred.yaml_text)
    typer.echo(inferred.render())
    typer.echo(f"wrote {out}; next: ray-pipeline run --config {out} --serve")


@app.command()
@_friendly_errors
def ingest(
    config: ConfigOpt,
    address: AddressOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Read and validate the configured source; write accepted rows and a quarantine of bad rows."""
    from ray_pipeline.data.ingest import ingest as run_ingest

    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    result = run_ingest(cfg)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_output else result.render())


features_app = typer.Typer(help="Feature views, training set, FeatureSpec and the online store.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("fit")
@_friendly_errors
def features_fit(config: ConfigOpt, address: AddressOpt = None, verbose: VerboseOpt = False) -> None:
    """Build the feature views, join the training set point-in-time and fit the FeatureSpec."""
    from ray_pipeline.features.build import build_features

    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    typer.echo(build_features(cfg).render())


@features_app.command("materialize")
@_friendly_errors
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

    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    for name, counts in materialize_online(cfg, start, end, view or None).items():
        typer.echo(f"{name}: {counts['candidates']:,} entity values considered, {counts['written']:,} written")


@features_app.command("get")
@_friendly_errors
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


@app.command()
@_friendly_errors
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
    from ray_pipeline.train.runner import summary, train_model
    from ray_pipeline.workflow.pipeline import register_and_promote

    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    run = train_model(cfg, model, workers)
    typer.echo(summary(run))
    if register:
        typer.echo("\n".join(register_and_promote(cfg, [run], cfg.serving.alias).lines))


@app.command()
@_friendly_errors
def run(
    config: ConfigOpt,
    models: Annotated[str, typer.Option(help="Comma-separated model kinds to train.")] = "logreg,xgboost",
    serve: Annotated[bool, typer.Option("--serve", help="Deploy the champion on Ray Serve.")] = False,
    wait: Annotated[
        bool | None, typer.Option(help="With --serve: keep serving until Ctrl-C (default: yes on an embedded Ray).")
    ] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest, features, train each model, register, promote through the gates, optionally serve."""
    from ray_pipeline.runtime import logs_dir
    from ray_pipeline.workflow.pipeline import Stages, check_models, run_pipeline

    cfg = load_config(config)
    kinds = check_models([m.strip() for m in models.split(",") if m.strip()])
    runtime = _start_ray(address, verbose)
    stages = Stages(5 + serve, typer.echo, _heading)
    done = run_pipeline(cfg, kinds, serve=serve, local=runtime.local, echo=typer.echo, stages=stages)
    typer.echo(done.timing_line())
    logs = logs_dir()
    run_root = cfg.resolve(cfg.training.run_root)
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
        wait = wait if wait is not None else runtime.local
        if runtime.local and wait:
            from ray_pipeline.runtime import announce_ray

            with announce_ray(_attach_file(cfg), runtime.address):
                typer.echo(f"Ray: {runtime.address} (local, started by this command); `monitor`, `retrain`, "
                           f"`predict` and `serve` with this config attach to it while it serves "
                           f"(or pass --address {runtime.address})")  # fmt: skip
                _serve_until_stopped(cfg, wait)
        else:
            typer.echo(f"Ray: {runtime.address}")
            _serve_until_stopped(cfg, wait)


@app.command()
@_friendly_errors
def predict(
    config: ConfigOpt,
    input_path: Annotated[str, typer.Option("--input", "-i", help="File, directory, glob or URI to score.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory (Parquet), replaced if it holds scores.")],
    model: Annotated[
        str | None, typer.Option(help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the served alias).")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv, parquet or json (default: from extensions).")] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score a file or directory in batch with Ray Data and a registered model (its own FeatureSpec)."""
    from ray_pipeline.registry.versions import load, open_registry
    from ray_pipeline.serve.batch import score_files

    cfg = load_config(config)
    uri = model or f"models:/{cfg.registry.model_name}@{cfg.serving.alias}"
    loaded = load(open_registry(cfg), uri)
    _start_ray(address, verbose, cfg)
    typer.echo(score_files(cfg, loaded, input_path, out, fmt).render())


models_app = typer.Typer(help="Model registry: versions, aliases, promotion, rollback.", no_args_is_help=True)
app.add_typer(models_app, name="models")
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registered model (default: registry.model_name).")]


@models_app.command("list")
@_friendly_errors
def models_list(config: ConfigOpt, name: NameOpt = None, verbose: VerboseOpt = False) -> None:
    """List versions with their key metrics and aliases."""
    from ray_pipeline.registry.versions import open_registry, registry_db

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
        m = v.metrics
        typer.echo(
            f"{v.uri:<22} {v.kind:<8} {v.created_at}  log_loss {m.get('log_loss', float('nan')):.4f}  "
            f"roc_auc {m.get('roc_auc', float('nan')):.4f}  {' '.join(by_version.get(v.version, []))}"
        )


@models_app.command("register")
@_friendly_errors
def models_register(
    config: ConfigOpt,
    run_dir: Annotated[str, typer.Option("--run", help="A training run directory or URI (printed by `train`).")],
    name: NameOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Register a training run as a new version (promote it with `models promote`)."""
    from ray_pipeline.registry.versions import open_registry, register_run

    cfg = load_config(config)
    v = register_run(open_registry(cfg), name or cfg.registry.model_name, run_dir)
    typer.echo(f"registered {v.uri} ({v.kind}): test log_loss {v.metrics.get('log_loss', float('nan')):.4f}, "
               f"roc_auc {v.metrics.get('roc_auc', float('nan')):.4f}")  # fmt: skip


@models_app.command("show")
@_friendly_errors
def models_show(
    config: ConfigOpt, uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS")],
    verbose: VerboseOpt = False,
) -> None:
    """Show one version: metrics, params, signature, lineage, files."""
    from dataclasses import asdict

    from ray_pipeline.registry.versions import open_registry

    typer.echo(json.dumps(asdict(open_registry(load_config(config)).resolve(uri)), indent=2))


@models_app.command("promote")
@_friendly_errors
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
    from ray_pipeline.registry.versions import open_registry

    cfg = load_config(config)
    change, report = promote(
        open_registry(cfg), name or cfg.registry.model_name, version, alias, cfg.registry.gates, force
    )
    typer.echo(report)
    typer.echo(f"@{alias}: {change.from_version} -> {change.to_version} ({change.reason})")


@models_app.command("rollback")
@_friendly_errors
def models_rollback(
    config: ConfigOpt,
    alias: Annotated[str, typer.Option(help="Alias to roll back.")] = "champion",
    name: NameOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Move an alias back to the version it held before its last change."""
    from ray_pipeline.registry.versions import open_registry

    cfg = load_config(config)
    change = open_registry(cfg).rollback(name or cfg.registry.model_name, alias)
    typer.echo(f"@{alias}: {change.from_version} -> {change.to_version} ({change.reason})")


@models_app.command("history")
@_friendly_errors
def models_history(
    config: ConfigOpt, alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None, name: NameOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Every alias change: time, alias, from -> to, reason, actor."""
    from ray_pipeline.registry.versions import open_registry

    cfg = load_config(config)
    for c in open_registry(cfg).history(name or cfg.registry.model_name, alias):
        typer.echo(f"{c.at}  @{c.alias:<10} {c.from_version!s:>4} -> {c.to_version!s:<4}  {c.actor:<8} {c.reason}")


serve_app = typer.Typer(help="Ray Serve application: deploy, status, shutdown, config.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("deploy")
@_friendly_errors
def serve_deploy(
    config: ConfigOpt,
    address: AddressOpt = None,
    wait: Annotated[
        bool | None, typer.Option(help="Keep serving until Ctrl-C (default: yes on an embedded local Ray).")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Deploy models:/NAME@ALIAS behind the HTTP API (POST /predict, GET /healthz, /model, /docs)."""
    from ray_pipeline.serve.app import deploy

    cfg = load_config(config)
    runtime = _start_ray(address, verbose, cfg)
    url = deploy(cfg, local=runtime.local)
    typer.echo(f"serving models:/{cfg.registry.model_name}@{cfg.serving.alias} at {url}/predict (docs: {url}/docs)")
    _serve_until_stopped(cfg, wait if wait is not None else runtime.local)


def _serve_until_stopped(cfg: PipelineConfig, wait: bool) -> None:
    """Keep the process (and an embedded Ray with it) alive until Ctrl-C or SIGTERM, then remove the app."""
    import signal
    import time

    from ray import serve

    if not wait:
        return
    typer.echo("Ctrl-C (or SIGTERM) stops the endpoint")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop == Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    # Graceful: replicas flush their prediction logs before the embedded Ray goes away.
    serve.delete(cfg.serving.app_name)
    typer.echo(f"deleted {cfg.serving.app_name}")


@serve_app.command("status")
@_friendly_errors
def serve_status(address: AddressOpt = None, verbose: VerboseOpt = False) -> None:
    """Applications and deployments on the cluster, with their status."""
    from ray import serve


    _start_ray(address, verbose)
    for name, application in serve.status().applications.items():
        typer.echo(f"{name}: {application.status}")
        for dep_name, dep in application.deployments.items():
            typer.echo(f"  {dep_name}: {dep.status} {dict(dep.replica_states)}")


@serve_app.command("shutdown")
@_friendly_errors
def serve_shutdown(config: ConfigOpt, address: AddressOpt = None, verbose: VerboseOpt = False) -> None:
    """Delete the application (replicas flush their prediction logs)."""
    from ray import serve


    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    serve.delete(cfg.serving.app_name)
    typer.echo(f"deleted {cfg.serving.app_name}")


@serve_app.command("config")
@_friendly_errors
def serve_config(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the serve deploy config.")],
    verbose: VerboseOpt = False,
) -> None:
    """Write a `serve deploy`-compatible config for this pipeline (validated against Serve's schema)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from ray_pipeline.serve.entry import deploy_config

    body = deploy_config(str(config))
    ServeDeploySchema.model_validate(body)
    header = "# Generated by `ray-pipeline serve config`; deploy with `serve deploy FILE`.\n"
    out.write_text(header + yaml.safe_dump(body, sort_keys=False))
    typer.echo(f"wrote {out}")


cluster_app = typer.Typer(help="Cluster manifests generated from the pipeline config.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("config")
@_friendly_errors
def cluster_config(
    config: ConfigOpt,
    target: Annotated[str, typer.Option(help="kuberay (RayCluster, RayJob, RayService) or launcher (ray up).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the manifests and the Dockerfile.")],
    image: Annotated[str | None, typer.Option(help="Container image (default: ray-pipeline:RAY_VERSION).")] = None,
    max_workers: Annotated[int, typer.Option(help="Most worker nodes the autoscaler may start.")] = 4,
    worker_cpus: Annotated[int, typer.Option(help="CPUs per worker node.")] = 2,
    worker_memory: Annotated[str, typer.Option(help="Memory per worker pod (Kubernetes quantity).")] = "8Gi",
    head_ip: Annotated[str, typer.Option(help="launcher: the head machine's address.")] = "HEAD_IP",
    worker_ip: Annotated[list[str], typer.Option(help="launcher: a worker machine's address; repeatable.")] = [],
    verbose: VerboseOpt = False,
) -> None:
    """Write KubeRay manifests or a cluster-launcher config (validated) for this pipeline."""
    from ray_pipeline.clusterconfig import ClusterSpec, default_image, write_configs

    cfg = load_config(config)
    spec = ClusterSpec(cfg.registry.model_name.lower().replace("_", "-").replace(".", "-"), image or default_image(),
                       max_workers, worker_cpus, worker_memory)  # fmt: skip
    for path in write_configs(cfg, str(config), target, str(out), spec, head_ip, worker_ip or None):
        typer.echo(f"wrote {path}")


monitor_app = typer.Typer(
    help="Monitoring: drift, data quality, latency and live quality per window of the prediction log; alerts.",
    invoke_without_command=True,
)
app.add_typer(monitor_app, name="monitor")


@monitor_app.callback()
@_friendly_errors
def monitor(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of the pipeline.yaml to use.")] = None,
    window: Annotated[str | None, typer.Option(help="Window length, e.g. 30s, 5m, 1h (default monitoring.window_s).")] = None,
    since: Annotated[datetime | None, typer.Option(help="First window (UTC) when the monitor has no saved position.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Stop at windows ending after this time (UTC); default now.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep processing windows as they complete (a long-lived job).")] = False,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Process every complete window of the prediction log (monitoring table, gauges, report, alerts)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise UserError("--config is required")
    from ray_pipeline.config import as_utc
    from ray_pipeline.monitor.job import Monitor, parse_duration

    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    from ray_pipeline.workflow.retrain import retrain

    mon = Monitor(cfg, parse_duration(window) if window else None, retrain=retrain)
    start = as_utc(since) if since else None
    try:
        if watch:
            typer.echo(f"watching {cfg.resolve(cfg.serving.prediction_log)} every {mon.window_s:g} s "
                       "(Ctrl-C or SIGTERM stops after the window in hand)")  # fmt: skip
            mon.watch(start, echo=typer.echo, stop=_stop_on_signals(typer.echo))
            typer.echo(f"stopped; state saved, next window starts {mon.state['next']}")
        else:
            results = mon.run(start, as_utc(until) if until else None)
            for r in results:
                typer.echo(r.render())
            typer.echo(f"{len(results)} window(s) processed; next starts {mon.state['next']}")
    finally:
        mon.close()


@monitor_app.command("rules")
@_friendly_errors
def monitor_rules(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the Prometheus alerting-rule file.")],
    verbose: VerboseOpt = False,
) -> None:
    """Export monitoring.rules as a Prometheus alerting-rule file (check it with `promtool check rules`)."""
    import yaml

    from ray_pipeline.monitor.prom import alerting_rules

    cfg = load_config(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by `ray-pipeline monitor rules` from monitoring.rules; do not edit by hand.\n"
    out.write_text(header + yaml.safe_dump(alerting_rules(cfg.monitoring), sort_keys=False))
    typer.echo(f"wrote {len(cfg.monitoring.rules)} rule(s) to {out}")


labels_app = typer.Typer(help="Delayed ground truth for logged predictions.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("ingest")
@_friendly_errors
def labels_ingest(
    config: ConfigOpt,
    path: Annotated[str, typer.Option("--path", "-p", help="CSV, Parquet or JSON-lines file of labels.")],
    verbose: VerboseOpt = False,
) -> None:
    """Validate labels keyed by request_id (and row) or by entity and event time; quarantine bad ones."""
    from ray_pipeline.monitor.labels import ingest_labels

    typer.echo(ingest_labels(load_config(config), path).render())


@app.command()
@_friendly_errors
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

    cfg = load_config(config)
    _start_ray(address, verbose, cfg)
    record = run_retrain(cfg, reason=reason)
    typer.echo(describe_feedback(record))
    typer.echo(f"record: {record_path(cfg, record['id'])}")
    if record.get("decision") == "failed":
        if verbose:
            typer.echo(record.get("traceback", ""), err=True)
        typer.secho(f"error: the retrain failed in stage {record.get('stage')}: {record.get('error')} "
                    "(--verbose prints the traceback the record keeps)", fg=typer.colors.RED, err=True)  # fmt: skip
        raise typer.Exit(code=1)


@app.command()
@_friendly_errors
def demo(
    config: ConfigOpt = Path("configs/demo.yaml"),
    rows: Annotated[int | None, typer.Option(help="Override the number of synthetic rows.")] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the end-to-end job: synthetic data, then `run` (ingest, features, online store, training,
    registry, serving), then the closed loop (drift, monitoring, alert, retrain, promotion)."""
    from ray_pipeline.demo.run import STEPS, run_demo

    cfg = load_config(config)
    if cfg.synthetic is None:
        raise ConfigError(f"{config}: synthetic: the demo needs a `synthetic` section")
    spec = _synthetic_spec(cfg, {"rows": rows}, {})
    runtime = _start_ray(address, verbose)
    where = "local Ray" if runtime.local else f"Ray cluster at {runtime.address}"
    _heading(f"[1/{STEPS}] {where}, {runtime.num_cpus:g} CPUs")
    run_demo(cfg, spec, runtime, typer.echo, _heading)


def main() -> None:
    """Entry point for `python -m ray_pipeline.cli`."""
    app(prog_name="ray-pipeline")


if __name__ == "__main__":
    sys.exit(main())
