"""A small pipeline for the console's tests: ingested data, runs of both model kinds, a served
weak champion (v1), a better version (v2) and a worse one offered to nobody yet, traffic before and
after an injected covariate shift, and the monitor's windows over it (the input-drift alert fires)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_pipeline.config import PipelineConfig, SyntheticConfig

from .loop_helpers import loop_config, next_window, send_windows, traffic

PER_WINDOW = 800
RULES = [{"name": "input_drift", "metric": "psi", "op": ">", "threshold": 0.25, "severity": "critical",
          "summary": "an input or the scores drifted"}]  # fmt: skip
SHIFT = {"start": "2024-02-04T00:00:00Z", "covariate_shift": {"amount": {"loc": 2.0}, "distance_km": {"loc": 1.5}}}
TOKEN_ENV = "RP_CONSOLE_TEST_TOKEN"
TOKEN = "console-test-token"


def site_config(tmp: Path, epochs: int) -> PipelineConfig:
    """The console pipeline's config (gradient descent for `epochs`), with an operator token."""
    cfg = loop_config(tmp, tmp, "shop", rules=RULES)
    cfg.training.logreg.epochs = epochs
    cfg.console.token_env = TOKEN_ENV
    return cfg


def build_site(tmp: Path) -> dict[str, Any]:
    """Everything the console pages show, on the session's Ray; returns the config and URLs."""
    from ray_pipeline.console.app import deploy_console
    from ray_pipeline.synthetic.transactions import generate
    from ray_pipeline.monitor.job import Monitor
    from ray_pipeline.registry.handoff import open_registry, register_run
    from ray_pipeline.workflow.pipeline import run_pipeline, train_models

    generate(SyntheticConfig(rows=8_000, seed=3, start="2024-01-01T00:00:00Z", days=31, entities=2000,
                             corruption_rate=0.01), str(tmp / "raw"))  # fmt: skip
    weak = site_config(tmp, epochs=2)  # v1: served, and beaten by v2
    done = run_pipeline(weak, ("logreg",), serve=True, echo=lambda _: None)
    registry = open_registry(weak)
    [better] = train_models(site_config(tmp, epochs=200), ["logreg"], trigger="train")
    v2 = register_run(registry, "shop", better.run_dir)
    [boosted] = train_models(weak, ["xgboost"], trigger="train")
    v3 = register_run(registry, "shop", boosted.run_dir)
    console = deploy_console(weak)
    before = traffic(31, PER_WINDOW, "2024-02-01T00:00:00Z", 3)
    after = traffic(32, PER_WINDOW, "2024-02-04T00:00:00Z", 3, SHIFT)
    send_windows(done.url, weak, before, PER_WINDOW)
    send_windows(done.url, weak, after, PER_WINDOW)
    next_window(offset=2.5)  # the last window closed, its grace passed, the log is flushed
    monitor = Monitor(weak)
    try:
        windows = monitor.run()
    finally:
        monitor.close()
    return {"cfg": weak, "url": done.url, "console": console, "ingest": done.ingest, "v1": done.promotion.champion.version,
            "v2": v2.version, "v3": v3.version, "windows": windows}  # fmt: skip
