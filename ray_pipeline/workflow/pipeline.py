"""The whole pipeline as one call: ingest, features, train each model, register, promote, serve.

`ray-pipeline run`, the demo and the notebook go through `run_pipeline`; `ray-pipeline train` and a
feedback retrain (workflow/retrain.py) through its steps (`train_models` here, `register_and_promote`
in workflow/promotion.py), so what a user runs on their own table is what the demo shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ray_pipeline.config import PipelineConfig
from ray_pipeline.data.ingest import IngestResult, check_quarantine_share, ingest
from ray_pipeline.errors import UserError
from ray_pipeline.features.build import FeatureBuild, build_features, materialize_online
from ray_pipeline.registry.handoff import open_registry, register_run
from ray_pipeline.registry.runs import index_run
from ray_pipeline.train import target
from ray_pipeline.train.blend import blend_runs
from ray_pipeline.train.data import Prepared, describe_split, for_model, prepare_training_set
from ray_pipeline.train.evaluate import render
from ray_pipeline.train.refit import refit
from ray_pipeline.train.runner import TrainRun, summary, train_model
from ray_pipeline.train.search import run_search
from ray_pipeline.workflow.promotion import Promotion, register_and_promote
from ray_pipeline.workflow.search import budget_share, budgeted, keep_best, not_registered, render_search

MODEL_KINDS = ("logreg", "xgboost")
Echo = Callable[[str], None]


@dataclass
class PipelineRun:
    """Everything one `run_pipeline` call produced, with the wall time of each stage."""

    ingest: IngestResult
    features: FeatureBuild
    online: dict[str, dict[str, int]]
    prepared: Prepared
    runs: Sequence[TrainRun]  # TrainRun objects, or a search's best trials (`run --search`)
    promotion: Promotion
    url: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def timing_line(self) -> str:
        """Stage wall times on one line."""
        parts = [f"{k} {v:.1f} s" for k, v in self.seconds.items()]
        return f"total {sum(self.seconds.values()):.1f} s: " + ", ".join(parts)


class Stages:
    """Numbered stage headings and their wall times."""

    def __init__(self, total: int, echo: Echo, heading: Echo | None = None, first: int = 1) -> None:
        self.total, self.echo, self.heading = total, echo, heading or echo
        self.index = first - 1
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[None]:
        """Print `[i/n] title`, run the block, record its time under `key`."""
        self.index += 1
        self.heading(f"[{self.index}/{self.total}] {title}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = time.perf_counter() - started


def check_models(models: list[str]) -> list[str]:
    """Model kinds from a --models list, checked."""
    bad = [m for m in models if m not in MODEL_KINDS]
    if bad or not models:
        raise UserError(f"--models: unknown model kind(s) {bad}; expected a comma-separated subset of {MODEL_KINDS}")
    return list(dict.fromkeys(models))


def train_models(cfg: PipelineConfig, kinds: list[str] | tuple[str, ...], prepared: Prepared | None = None,
                 workers: int | None = None, echo: Echo | None = None, trigger: str = "train",
                 init: Any = None) -> list[TrainRun]:  # fmt: skip
    """Train each model kind on one prepared split (`workers`: None = where each run's cost says)
    and add each run to the registry's run index (`trigger`: run, train or feedback; `init`: a model
    to warm-start from, see `train_model`)."""
    prepared = prepared if prepared is not None else prepare_training_set(cfg)
    runs = []
    for kind in kinds:
        tried = []
        for transform in target.candidates(cfg, prepared.spec) if init is None else [None]:
            on = prepared if transform is None else target.under_target(prepared, transform)
            tried.append(train_model(cfg, kind, workers, prepared=on, trigger=trigger, init=init))
            index_run(open_registry(cfg), tried[-1].run_dir)
        runs.append(_kept_target(cfg, kind, prepared, tried, echo))
        if echo is not None:
            echo(summary(runs[-1]))
    return runs


def _kept_target(cfg: PipelineConfig, kind: str, prepared: Prepared, tried: list[TrainRun],
                 echo: Echo | None) -> TrainRun:  # fmt: skip
    """Of one model kind fitted on each target transform, the run with the lowest validation error."""
    if len(tried) == 1:
        return tried[0]
    taken = for_model(prepared, kind, cfg.training)
    scored = sorted((target.valid_error(run.model, taken), i, run) for i, run in enumerate(tried))
    if echo is not None:
        figures = ", ".join(f"{run.model.transform} {error:.6g}" for error, _, run in scored)
        kept = scored[0][2].model.transform
        echo(f"{kind}: target fitted as {kept} (validation {taken.spec.loss.upper()} {figures})")
    return scored[0][2]


def _refit_champion(cfg: PipelineConfig, prepared: Prepared, promotion: Promotion, echo: Echo) -> None:
    """The champion, when this run made it, trained again on every row of the split and served in
    its place (`training.refit`; the gates judged its recipe on the held-out test split)."""
    held = promotion.champion
    if held is None or held.version not in {v.version for v in promotion.versions}:
        return
    started = time.perf_counter()
    run = refit(cfg, prepared, held.lineage["run_dir"])
    registry = open_registry(cfg)
    index_run(registry, run.run_dir)
    version = register_run(registry, cfg.registry.model_name, run.run_dir, lineage={"refit_of_version": held.uri})
    registry.set_alias(cfg.registry.model_name, cfg.serving.alias, version.version,
                       f"refit of v{held.version} on every row of its split (train + valid + test)", "refit")  # fmt: skip
    promotion.versions.append(version)
    promotion.champion = version
    line = (f"refit: {held.uri} ({held.kind}) trained again on all {sum(prepared.rows.values()):,} rows of the split "
            f"in {time.perf_counter() - started:.1f} s -> {version.uri} @{cfg.serving.alias} (metrics: {held.uri}'s, "
            "held out)")  # fmt: skip
    promotion.lines.append(line)
    echo(line)


def _blend(cfg: PipelineConfig, prepared: Prepared, runs: Sequence[TrainRun], echo: Echo) -> list[TrainRun]:
    """The ensemble of `runs` (`training.ensemble`), indexed, when a blend beats each alone on validation."""
    if not cfg.training.ensemble or len(runs) < 2:
        return []
    blended = blend_runs(cfg, prepared, [str(r.run_dir) for r in runs])
    if blended is None:
        echo("ensemble: one model alone is best on the validation split; no blend")
        return []
    index_run(open_registry(cfg), blended.run_dir)
    weights = ", ".join(f"{k} {w:g}" for k, w in zip(blended.params["members"], blended.params["weights"]))
    echo(render("ensemble", blended.metrics) + f"\n         weights {weights} (fitted on validation) -> {blended.run_dir}")
    return [blended]


def _search_models(cfg: PipelineConfig, models: list[str], prepared: Prepared,
                   echo: Echo) -> tuple[list[TrainRun], list[str]]:  # fmt: skip
    """A search per model kind on one prepared split: the best trials' runs to register, and a
    line for each best trial that is a registered model again."""
    runs: list[TrainRun] = []
    repeated = []
    budget = cfg.training.time_budget_s
    for kind in models:
        settings = budgeted(cfg, kind, budget * budget_share(kind, models)) if budget else cfg
        result = run_search(settings, kind, prepared)
        echo(render_search(result))
        if budget and result.best is None:  # not even the untuned trial fit in the share: train it plainly
            echo(f"{kind}: no trial finished within its {settings.training.search.time_budget_s:.0f} s; "
                 "trained once with the untuned settings instead")  # fmt: skip
            runs += train_models(cfg, [kind], prepared, echo=echo, trigger="run")
            continue
        kept = keep_best(cfg, result, prepared)
        if isinstance(kept, TrainRun):
            runs.append(kept)
        else:
            repeated.append(not_registered(kept))
    return runs, repeated


def run_pipeline(
    cfg: PipelineConfig,
    models: list[str] | tuple[str, ...] = MODEL_KINDS,
    serve: bool = False,
    local: bool = True,
    echo: Echo = print,
    stages: Stages | None = None,
    search: bool = False,
) -> PipelineRun:
    """Ingest, build features (and the online store when views exist), train each model kind on
    one prepared split (or search its hyperparameters on Ray Tune: `search`), register, promote
    through the gates, and optionally deploy on Ray Serve."""
    models = check_models(list(models))
    stages = stages or Stages(5 + bool(serve), echo)
    with stages.stage("ingest", "ingest and validation"):
        ingested = ingest(cfg)
        echo(ingested.render())
        if ingested.accepted == 0:
            raise UserError(f"{ingested.source}: no row passed validation; see {ingested.quarantine_path}")
        check_quarantine_share(cfg, ingested)

    online: dict[str, dict[str, int]] = {}
    title = "features: views, point-in-time training set" if cfg.features.views else "features: training set"
    with stages.stage("features", title):
        built = build_features(cfg)
        echo(built.render())
        if cfg.features.views:
            online = materialize_online(cfg)
            for name, counts in online.items():
                echo(f"online store {name}: {counts['written']:,} of {counts['candidates']:,} entity values written")

    with stages.stage("prepare", "split and FeatureSpec (fitted on the train split)"):
        prepared = prepare_training_set(cfg)
        echo(f"{describe_split(prepared.split)}: " + ", ".join(f"{k} {v:,}" for k, v in prepared.rows.items()))
        echo(f"FeatureSpec {prepared.spec.content_hash()[:12]}: {len(prepared.spec.feature_names)} model inputs "
             f"from {len(prepared.spec.input_columns)} columns")  # fmt: skip

    budget, names = cfg.training.time_budget_s, ", ".join(models)
    searching = bool(budget) or search
    title = (f"search within {budget:g} s on Ray Tune: {names}" if budget
             else f"hyperparameter search on Ray Tune: {names}" if search
             else f"training (each where its cost says): {names}")  # fmt: skip
    with stages.stage("train", title):
        if searching:
            runs, repeated = _search_models(cfg, models, prepared, echo)
        else:
            runs, repeated = train_models(cfg, models, prepared, None, echo, trigger="run"), []
        runs += _blend(cfg, prepared, runs, echo)

    with stages.stage("registry", "model registry: register, promote through the gates"):
        promotion = register_and_promote(cfg, runs, cfg.serving.alias)
        promotion.lines[:0] = repeated
        echo("\n".join(promotion.lines))
        if cfg.training.refit == "always" or (cfg.training.refit == "auto" and budget):
            _refit_champion(cfg, prepared, promotion, echo)

    url = None
    if serve:
        from ray_pipeline.serve.deploy import deploy  # here: Ray Serve's import cost, paid by `--serve` only

        with stages.stage("serve", f"serving models:/{cfg.registry.model_name}@{cfg.serving.alias} on Ray Serve"):
            if promotion.champion is None:
                raise UserError(f"nothing to serve: no version holds @{cfg.serving.alias}")
            url = deploy(cfg, local=local)
            echo(f"endpoint: {url}/predict  (OpenAPI: {url}/docs)")
    return PipelineRun(ingested, built, online, prepared, runs, promotion, url, dict(stages.seconds))
