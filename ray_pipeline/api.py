"""The public Python API: the loop's entry points as the CLI runs them, one function each.

    >>> import ray_pipeline as rp
    >>> cfg = rp.init("churn.csv", label="Churn", positive=["Yes"], out="pipeline.yaml")
    >>> done = rp.run(cfg, models=["logreg"], echo=rp.silent)
    >>> rp.predict(cfg, [{"tenure": 3, "Contract": "Month-to-month"}]).probabilities.shape
    (1,)

Every function takes a loaded config or the path of a pipeline.yaml, and starts (or attaches to)
Ray where it needs it: without `RAY_ADDRESS` an embedded local instance. The examples run as
doctests (`tests/test_api.py`) in a folder holding `churn.csv`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray_pipeline
import pandas as pd
from ray import serve

from ray_pipeline.config import PipelineConfig
from ray_pipeline.config import load_config as _read_config
from ray_pipeline.config.synthetic import SyntheticConfig
from ray_pipeline.data import ingest as ingestion
from ray_pipeline.data.infer import write_config
from ray_pipeline.demo.showcase import LoopReport, run_loop
from ray_pipeline.features import build
from ray_pipeline.registry.handoff import LoadedModel, load, open_registry
from ray_pipeline.runtime import RayRuntime, init_ray
from ray_pipeline.serve import deploy as serving
from ray_pipeline.serve.predlog import read_log
from ray_pipeline.synthetic import transactions
from ray_pipeline.train.models import Prediction
from ray_pipeline.train.runner import TrainRun
from ray_pipeline.workflow import pipeline, promotion, retrain as feedback
from ray_pipeline.workflow.loop import Loop
from ray_pipeline.workflow.pipeline import PipelineRun
from ray_pipeline.workflow.promotion import Promotion


__all__ = ray_pipeline.__all__  # the package exports these names from here, on first use
Config = PipelineConfig | str | Path


def silent(line: str) -> None:
    """An `echo` that prints nothing (the functions below report progress through `echo`)."""


def load_config(config: Config) -> PipelineConfig:
    """A pipeline.yaml read and validated (a loaded config passes through).

    >>> rp.load_config("pipeline.yaml").data.schema_.label
    'Churn'
    """
    return config if isinstance(config, PipelineConfig) else _read_config(config)


def init(data: str, label: str, out: str | Path = "pipeline.yaml", positive: list[str] | None = None,
         threshold: float | None = None, task: str | None = None, exclude: list[str] | None = None,
         overwrite: bool = False) -> PipelineConfig:  # fmt: skip
    """Infer a commented pipeline.yaml from a sample of `data` (as `ray-pipeline init`), write it to `out`
    (an existing file only with `overwrite`) and return it loaded.

    >>> cfg = rp.init("churn.csv", label="Churn", positive=["Yes"], out="pipeline.yaml", overwrite=True)
    >>> cfg.data.schema_.label_mapping.task, cfg.data.schema_.entity_key
    ('binary', 'customerID')
    """
    write_config(data, label, out, overwrite, positive=positive, threshold=threshold, task=task, exclude=exclude)
    return _read_config(out)


def start_ray(address: str | None = None) -> RayRuntime:
    """Connect to the Ray at `address` (or `RAY_ADDRESS`), or start an embedded local one; every
    function below does this itself when it needs Ray.

    >>> rp.start_ray().local
    True
    """
    return init_ray(address, quiet=True)


def generate(config: Config, out: str | Path | None = None, rows: int | None = None) -> transactions.GenerateResult:
    """The config's `synthetic` events (the demo's, whose label probability is known) written with
    Ray Data to `out` (default: `data.source.path`, overwritten), `rows` of them if given (a config
    without a `synthetic` section: the generator's defaults).

    >>> rp.generate("pipeline.yaml", out="events", rows=2_000).rows
    2000
    """
    cfg = load_config(config)
    base = cfg.synthetic or SyntheticConfig()  # a config without the section: the generator's defaults
    spec = base if rows is None else base.model_copy(update={"rows": rows})
    init_ray(quiet=True)
    if out is None:
        return transactions.generate(spec, cfg.data.source.path)
    # A relative folder is this process's: Ray Data's writers run in workers with a cwd of their own.
    return transactions.generate(spec, str(out) if "://" in str(out) else str(Path(out).resolve()))


def ingest(config: Config) -> ingestion.IngestResult:
    """Read and validate the source (as the pipeline's first stage): good rows to the ingested
    table, every bad one to the quarantine with its reason, field, file and row.

    >>> done = rp.ingest("pipeline.yaml")
    >>> done.accepted + done.quarantined
    800
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    return ingestion.ingest(cfg)


def build_features(config: Config) -> build.FeatureBuild:
    """The feature store from the ingested table: views, the point-in-time training set, and the
    online store when views are configured.

    >>> built = rp.build_features("pipeline.yaml")
    >>> built.rows == rp.ingest("pipeline.yaml").accepted
    True
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    built = build.build_features(cfg)
    if cfg.features.views:
        build.materialize_online(cfg)
    return built


def run(config: Config, models: Sequence[str] = pipeline.MODEL_KINDS, time_budget: float | None = None,
        serve: bool = False, echo: Callable[[str], None] = print) -> PipelineRun:  # fmt: skip
    """The whole pipeline (as `ray-pipeline run`): ingest, features, train each model kind (a search
    within `time_budget` seconds when given), register, promote through the gates, optionally serve.

    >>> done = rp.run("pipeline.yaml", models=["logreg"], echo=rp.silent)
    >>> done.promotion.champion.name, sorted(done.seconds)[:2]
    ('churn', ['features', 'ingest'])
    """
    cfg = load_config(config)
    if time_budget is not None:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"time_budget_s": time_budget})})
    runtime = init_ray(quiet=True)
    return pipeline.run_pipeline(cfg, list(models), serve=serve, local=runtime.local, echo=echo)


def train_model(config: Config, kind: str = "xgboost", echo: Callable[[str], None] = print) -> TrainRun:
    """One model kind trained on the prepared split (as `ray-pipeline train`), not registered.

    >>> run = rp.train_model("pipeline.yaml", "logreg", echo=rp.silent)
    >>> run.kind, "log_loss" in run.metrics
    ('logreg', True)
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    (done,) = pipeline.train_models(cfg, pipeline.check_models([kind]), echo=echo, trigger="train")
    return done


def register_and_promote(config: Config, runs: Sequence[Any], alias: str = "champion") -> Promotion:
    """Register finished runs and offer them to `alias`, best first, through the gates.

    >>> trained = rp.train_model("pipeline.yaml", "logreg", echo=rp.silent)
    >>> promotion = rp.register_and_promote("pipeline.yaml", [trained])
    >>> promotion.champion is not None
    True
    """
    return promotion.register_and_promote(load_config(config), runs, alias)


def deploy(config: Config) -> str:
    """Deploy the served alias on Ray Serve (started if needed); returns the endpoint's base URL.

    >>> rp.deploy("pipeline.yaml").startswith("http://")
    True
    """
    cfg = load_config(config)
    runtime = init_ray(quiet=True)
    return serving.deploy(cfg, local=runtime.local)


def undeploy(config: Config) -> None:
    """Remove the served application; its replicas write what their prediction logs buffered first.

    >>> rp.undeploy("pipeline.yaml")
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    if cfg.serving.app_name in serve.status().applications:
        serve.delete(cfg.serving.app_name)


def read_predictions(config: Config) -> pd.DataFrame:
    """Every logged prediction (request id, time, inputs, score, version, variant, latency per stage).

    >>> rp.read_predictions("pipeline.yaml").columns[:2].tolist()
    ['request_id', 'row']
    """
    return read_log(load_config(config).serving.prediction_log).to_pandas()


def load_model(config: Config, uri: str | None = None) -> LoadedModel:
    """A registered version (default: the served alias) loaded as a Predictor, its files checked.

    >>> rp.load_model("pipeline.yaml").version.name
    'churn'
    """
    cfg = load_config(config)
    return load(open_registry(cfg), uri or f"models:/{cfg.registry.model_name}@{cfg.serving.alias}")


def predict(config: Config, rows: Any, model: str | None = None) -> Prediction:
    """Score raw rows (records, a DataFrame or an Arrow table) with a registered version (default: the
    served alias), through its own FeatureSpec; inputs left out are missing values.

    >>> p = rp.predict("pipeline.yaml", [{"tenure": 3, "Contract": "Month-to-month"}, {"tenure": 60}])
    >>> p.probabilities.shape, bool(((p.probabilities > 0) & (p.probabilities < 1)).all())
    ((2,), True)
    """
    return load_model(config, model).predict(rows)


def monitor_windows(config: Config, window_s: float | None = None) -> list[Any]:
    """Every complete window of the prediction log not yet processed (as `ray-pipeline monitor`):
    drift, quality, latency and alerts per window; returns each window's result.

    >>> rp.monitor_windows("pipeline.yaml", window_s=3600)  # nothing served yet: no window to process
    []
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    loop = Loop(cfg, window_s)
    try:
        return loop.run(None, None)
    finally:
        loop.close()


def demo_loop(config: Config, url: str, window_s: float = 10.0, per_window: int = 6000,
              echo: Callable[[str], None] = print) -> LoopReport:  # fmt: skip
    """The loop `make demo` ends with, on a config with `synthetic` events: traffic replayed to the
    endpoint at `url` before and after a drift, labels arriving, the monitor alerting, the feedback
    loop retraining and promoting through the gates (about a minute).

    >>> report = rp.demo_loop("demo.yaml", url, window_s=10)  # doctest: +SKIP
    >>> report.windows_to_alert  # doctest: +SKIP
    1
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    return run_loop(cfg, url, cfg.synthetic or SyntheticConfig(), echo=echo, window_s=window_s, per_window=per_window)


def retrain(config: Config, reason: str = "manual") -> dict[str, Any]:
    """One feedback run (as `ray-pipeline retrain`): labeled traffic back in, retrain, compare on the
    newest labeled windows, promote through the paired gates; returns its record.

    >>> rp.retrain("pipeline.yaml")  # the churn table has no event time to join labels by
    Traceback (most recent call last):
    ...
    ray_pipeline.errors.UserError: retrain needs data.schema.entity_key and data.schema.event_timestamp: ...
    """
    cfg = load_config(config)
    init_ray(quiet=True)
    return feedback.retrain(cfg, reason)
