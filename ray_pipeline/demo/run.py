"""The demo's steps after Ray is up: synthetic data, the pipeline run (workflow.pipeline), what only
synthetic data can show (ground truth, online lookups, sample predictions over HTTP), then the
closed loop (demo/showcase.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

from ray_pipeline.config import PipelineConfig, SyntheticConfig
from ray_pipeline.data.sources import read_parquet
from ray_pipeline.demo.showcase import run_loop
from ray_pipeline.features.build import online_store, training_set_path
from ray_pipeline.registry.handoff import load, open_registry
from ray_pipeline.runtime import RayRuntime
from ray_pipeline.serve.client import http_json
from ray_pipeline.synthetic.transactions import generate
from ray_pipeline.synthetic.truth import ground_truth_summary
from ray_pipeline.workflow.pipeline import Stages, run_pipeline
from ray_pipeline.workflow.serving import ServingSession

Echo = Callable[[str], None]
STEPS = 9


def run_demo(cfg: PipelineConfig, spec: SyntheticConfig, runtime: RayRuntime, echo: Echo, heading: Echo,
             window_s: float = 5.0, per_window: int = 6000) -> None:  # fmt: skip
    """Steps 2-9 of the demo; step 1 (Ray) is the caller's. `window_s`, `per_window`: the loop's
    monitoring windows and the records replayed in each."""
    raw = cfg.data.source.path
    result = generate(spec, raw)
    heading(f"[2/{STEPS}] generated {result.rows:,} synthetic rows in {result.seconds:.1f} s -> {raw}")
    stages = Stages(STEPS, echo, heading, first=3)
    done = run_pipeline(cfg, serve=True, local=runtime.local, echo=echo, stages=stages)
    session = ServingSession(cfg, runtime, echo).start(url=done.url)
    heading("what the demo can check that real data cannot: ground truth, online lookups")
    _show_ground_truth(cfg, spec, done.ingest.accepted_path, echo)
    _show_predictions(cfg, done.url, echo)

    heading(f"[{STEPS}/{STEPS}] closing the loop: drift, monitoring, alert, retrain, promotion, hot reload")

    loop = run_loop(cfg, done.url, spec, echo=echo, window_s=window_s, per_window=per_window)
    echo(
        f"loop: alert {loop.windows_to_alert} window(s) after the drift; decision {loop.decision} {loop.promoted or ''}; "
        f"live log-loss on drifted traffic {loop.log_loss_before:.4f} before -> {loop.log_loss_after or float('nan'):.4f} "
        f"after (Bayes-optimal {loop.bayes_after or float('nan'):.4f}); "
        f"last drifted request -> new version served in {loop.loop_s or float('nan'):.0f} s"
    )
    if loop.false_alarms:
        echo(f"alerts before the drift (false alarms): {', '.join(loop.false_alarms)}")
    echo(f"monitoring table, reports and alerts: {cfg.monitoring.root}")
    if session.console_url:
        echo(f"console: {session.console_url} (up while the endpoint is up)")
    echo("the demo stops the endpoint and the console on exit; `ray-pipeline serve deploy` keeps them up")
    session.stop(release=True)


def _show_ground_truth(cfg: PipelineConfig, spec: SyntheticConfig, accepted: str, echo: Echo) -> None:
    """The Bayes-optimal floor, and online-store lookups for two known entities and an unknown one."""
    echo(ground_truth_summary(accepted, cfg.data.schema_.label).render())
    store = online_store(cfg)
    end = spec.start + timedelta(days=spec.days)  # TTL evaluated at the end of the data, as a replay would
    key = cfg.data.schema_.entity_key
    try:
        for name, view in cfg.features.views.items():
            for row in store.get(name, [1, 2, 10**9], view.feature_names, view.ttl_seconds, end):
                echo(f"  {key}={row.entity}: {row.status} {json.dumps(row.values)}")
    finally:
        store.close()


def _show_predictions(cfg: PipelineConfig, url: str, echo: Echo) -> None:
    """The champion loaded from the registry, then the same rows (and entity lookups) over HTTP."""
    name, key, label = cfg.registry.model_name, cfg.data.schema_.entity_key, cfg.data.schema_.label
    champion = load(open_registry(cfg), f"models:/{name}@champion")
    sample = read_parquet(training_set_path(cfg)).take(3)
    echo(f"models:/{name}@champion = {champion.version.uri} ({champion.version.kind}); sample predictions:")
    for row, p in zip(sample, champion.predict(sample).probabilities):
        echo(f"  {key}={row[key]}  p={p:.4f}  label={row[label]}")
    inputs = champion.spec.input_columns
    records = [{k: v for k, v in row.items() if k in inputs} for row in sample]
    # Entity lookups: the demo's events are from 2024, so their online values are past the view's
    # TTL today and come back "expired"; live data would be "ok".
    for body in ({"records": records}, {"entity_ids": [1, 2, 10**9]}):
        status, answer = http_json(url + "/predict", body)
        echo(f"POST {url}/predict {json.dumps(body, default=str)[:100]}...\n  -> {status} {json.dumps(answer)}")
