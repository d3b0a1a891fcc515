"""The console's pages at size: 10,000 runs, 1,000 versions, 5,000 alias moves and 10,000
monitoring windows x 20 features. Every page is requested many times through the console's own
ASGI app (in this process, no HTTP client in between), and each page's server time (p50, p95) and
HTML size go to benchmarks/results/console.json. Baseline in the same process: the smallest
possible page (the login form), so the figures read as "page cost over the app's floor".

    python benchmarks/console.py [--runs 10000 --versions 1000 --moves 5000 --windows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_results  # noqa: E402

FEATURES = [f"f{i:02d}" for i in range(20)]
GOAL_P95_MS = 200.0


def config(tmp: Path):
    from ray_pipeline.config import parse_config

    return parse_config({
        "data": {"source": {"path": str(tmp / "raw")}, "schema": {"label": "y", "features": {f: {"type": "float"} for f in FEATURES}},
                 "output": {"root": str(tmp / "ingested")}},
        "features": {"store_root": str(tmp / "features")},
        "training": {"run_root": str(tmp / "runs")},
        "registry": {"db_path": str(tmp / "registry.db"), "artifact_root": str(tmp / "artifacts"), "model_name": "big"},
        "serving": {"prediction_log": str(tmp / "predlog")},
        "monitoring": {"root": str(tmp / "monitoring"), "window_s": 60,
                       "rules": [{"name": "input_drift", "metric": "psi", "op": ">", "threshold": 0.25}]},
    })  # fmt: skip


def fill(cfg, tmp: Path, runs: int, versions: int, moves: int, windows: int) -> dict[str, float]:
    """Write the stores; returns seconds per part."""
    from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, NumericSpec
    from ray_pipeline.monitor.job import TABLE_SCHEMA
    from ray_pipeline.registry.handoff import open_registry, register_run
    from ray_pipeline.registry.runs import RunRecord, index_runs
    from ray_pipeline.storage import write_parquet, write_text
    from ray_pipeline.train.models import LogisticModel
    from ray_pipeline.train.rundir import RunArtifacts, write_run

    seconds = {}
    rng = np.random.default_rng(0)
    spec = FeatureSpec(rows=100, numeric=[NumericSpec(name=f, log1p=False, clip=None, fill=0.0, missing_indicator=False, mean=0.0,
                                            std=1.0, count=100, missing=0) for f in FEATURES],
                       categorical=[CategoricalSpec(name="channel", encoding="frequency", frequencies={"pos": 0.6},
                                                    missing_value=0.0, unseen_value=0.0, rare_frequency=0.0)])  # fmt: skip
    run_dir = Path(cfg.training.run_root) / "real-run"
    write_run(run_dir, LogisticModel(rng.normal(size=len(spec.feature_names)), 0.0, spec.feature_names),
              RunArtifacts("logreg", spec, {"log_loss": 0.4, "roc_auc": 0.8}, {"l2": 1e-4}, {"trigger": "run"}))  # fmt: skip
    registry = open_registry(cfg)
    t0 = time.perf_counter()
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    records = [RunRecord(f"run-{i:05d}", str(run_dir), "xgboost" if i % 2 else "logreg", ("run", "train", "feedback")[i % 3],
                         (start + timedelta(minutes=i)).isoformat(), float(rng.uniform(1, 60)),
                         {"l2": float(rng.uniform()), "epochs": int(rng.integers(10, 300))},
                         {"log_loss": float(rng.uniform(0.3, 0.5)), "roc_auc": float(rng.uniform(0.7, 0.9))},
                         {"training_set_sha256": f"{i:064x}", "event_time_range": ["2024-01-01T00:00:00", "2024-02-01T00:00:00"]},
                         2, 1) for i in range(runs)]  # fmt: skip
    for i in range(0, runs, 1000):
        index_runs(registry, records[i:i + 1000])
    seconds["runs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(versions):
        register_run(registry, "big", run_dir, code_version="bench")
    seconds["versions_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(moves):
        registry.set_alias("big", ("champion", "challenger")[i % 2], int(rng.integers(1, versions + 1)), f"move {i}", "bench")
    seconds["moves_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for w in range(windows):
        s, e = start + timedelta(minutes=w), start + timedelta(minutes=w + 1)
        values = rng.gamma(1.0, 0.05, size=len(FEATURES))
        table = pa.table({"window_start": [s] * len(FEATURES), "window_end": [e] * len(FEATURES), "metric": ["psi"] * len(FEATURES),
                          "feature": FEATURES, "model_version": [versions] * len(FEATURES), "value": values,
                          "verdict": ["drift" if v > 0.25 else "ok" for v in values]}, schema=TABLE_SCHEMA)  # fmt: skip
        write_parquet(table, f"{cfg.monitoring.table}/window={s:%Y%m%dT%H%M%S}.parquet")
    seconds["windows_s"] = time.perf_counter() - t0
    write_text(f"{cfg.data.output.root}/runs/20240101T000000000000.json", json.dumps(
        {"source": "raw", "read": 1000, "accepted": 990, "quarantined": 10, "by_reason": {"range": 10},
         "finished_at": start.isoformat()}))  # fmt: skip
    return seconds


async def _get(app, path: str) -> tuple[int, bytes]:
    path, _, query = path.partition("?")
    scope = {"type": "http", "method": "GET", "path": "/ui" + path, "root_path": "/ui", "raw_path": path.encode(),
             "query_string": query.encode(), "headers": [(b"accept", b"text/html")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 8000), "scheme": "http", "http_version": "1.1"}  # fmt: skip
    body, status = [], [0]

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return status[0], b"".join(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=1_000)
    parser.add_argument("--moves", type=int, default=5_000)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    from ray_pipeline.console import app as console
    from ray_pipeline.console.access import Access
    from ray_pipeline.console.state import ConsoleState

    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    cfg = config(tmp)
    filled = fill(cfg, tmp, args.runs, args.versions, args.moves, args.windows)
    print("filled: " + ", ".join(f"{k} {v:.1f}" for k, v in filled.items()), flush=True)
    t0 = time.perf_counter()
    state = ConsoleState(cfg, Access(None))  # reads the monitoring table once, then follows it in the background
    first_read = time.perf_counter() - t0
    console._console["state"] = state
    mid = args.versions // 2
    paths = ["/login", "/", "/runs", "/runs?sort=log_loss&desc=0", f"/runs?kind=xgboost&page={args.runs // 100}",
             "/runs/run-00042", "/compare?ids=run-00001&ids=run-00002&ids=run-00003", "/models",
             f"/models?page={args.versions // 100}&history={args.moves // 100}", f"/models/big/{mid}", "/serving",
             "/monitoring", "/monitoring?metric=psi&last=2000", "/data"]  # fmt: skip
    pages = {}
    for path in paths:
        times, size = [], 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            status, body = asyncio.run(_get(console.api, path))
            times.append((time.perf_counter() - started) * 1e3)
            assert status == 200, (path, status, body[:300])
            size = len(body)
        pages[path] = {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
                       "html_kb": round(size / 1024, 1)}  # fmt: skip
        print(f"{path:<60} p50 {pages[path]['p50_ms']:>7.1f} ms  p95 {pages[path]['p95_ms']:>7.1f} ms  "
              f"{pages[path]['html_kb']:>7.1f} KB", flush=True)
    floor = pages["/login"]["p50_ms"]
    worst = max(pages, key=lambda p: pages[p]["p95_ms"])
    figures = {"size": vars(args), "fill_s": filled, "monitoring_first_read_s": round(first_read, 2), "pages": pages,
               "goal_p95_ms": GOAL_P95_MS, "worst_page": worst}  # fmt: skip
    ratios = {"worst_p95_over_goal": round(pages[worst]["p95_ms"] / GOAL_P95_MS, 3),
              "baseline_login_p50_ms": floor}  # fmt: skip
    path = write_results("console", figures, ratios)
    print(f"worst p95: {worst} {pages[worst]['p95_ms']:.1f} ms (goal {GOAL_P95_MS:.0f} ms); first monitoring read "
          f"{first_read:.1f} s -> {path}")


if __name__ == "__main__":
    main()
