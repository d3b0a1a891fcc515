"""Serving latency and throughput on loopback: the same predictor behind plain FastAPI + uvicorn
(one process), Ray Serve unbatched and Ray Serve batched, at concurrency 1, 8 and 32.

A closed-loop aiohttp client (keep-alive) sends one-record requests; every level is bounded by
a request count and a time limit.

    python benchmarks/serve.py [--seconds 8] [--requests 4000] [--repeats 3] [--predictors ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results  # noqa: E402

from ray_pipeline.runtime import free_port  # noqa: E402

LEVELS = (1, 8, 32)
SMALL_RECORD = {"amount": 42.0, "distance_km": 3.5, "channel": "online"}


def _register(root: Path, spec, model) -> None:
    """Register `model` over `spec` as bench@champion in a registry under `root`."""
    from ray_pipeline.registry.handoff import register_run
    from ray_pipeline.registry.store import Registry
    from ray_pipeline.train.rundir import RunArtifacts, write_run

    run = write_run(root / "run", model, RunArtifacts(model.kind, spec, {"log_loss": 0.4, "roc_auc": 0.8}, {}, {}))
    registry = Registry(root / "reg.db", root / "art")
    register_run(registry, "bench", run)
    registry.set_alias("bench", "champion", 1)


def small_logreg(root: Path) -> dict:
    """A logistic model over 3 inputs: the cheapest predictor, so Serve's own costs dominate."""
    from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, NumericSpec
    from ray_pipeline.train.models import LogisticModel

    spec = FeatureSpec(
        rows=1000,
        numeric=[NumericSpec(name=n, log1p=True, clip=None, fill=1.0, missing_indicator=False, mean=2.0, std=1.0,
                             count=1000, missing=0) for n in ("amount", "distance_km")],
        categorical=[CategoricalSpec(name="channel", encoding="frequency", frequencies={"pos": 0.6, "online": 0.4},
                                     missing_value=0.0, unseen_value=0.0, rare_frequency=0.0)],
    )  # fmt: skip
    _register(root, spec, LogisticModel(np.array([0.5, -0.2, 1.0]), -1.0, spec.feature_names))
    return SMALL_RECORD


def demo_xgboost(root: Path) -> dict:
    """The demo champion's shape: XGBoost (demo params, 200 rounds) over the demo's 11 raw inputs,
    fitted on one chunk of the demo's synthetic data; returns one real row as the request record."""
    import xgboost

    from ray_pipeline.config import load_config
    from ray_pipeline.synthetic.transactions import generate_chunk
    from ray_pipeline.features.fit import feature_columns, merge_partials, partial_stats
    from ray_pipeline.features.transform import transform_table
    from ray_pipeline.train.models import XGBoostModel

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    table = generate_chunk(cfg.synthetic.model_copy(update={"corruption_rate": 0.0}), 0)
    features = cfg.features.model_copy(update={"views": {}})  # views need the feature store; raw inputs only
    numeric, categorical = feature_columns(cfg.data.schema_, features)
    log1p = {n: features.numeric[n].log1p if n in features.numeric else False for n in numeric}
    stats = partial_stats(table, log1p, categorical)
    spec = merge_partials([stats], numeric, categorical, features, [])
    X = transform_table(table, spec)
    params = {"objective": "binary:logistic", "tree_method": "hist", "nthread": 2, **cfg.training.xgboost.params}
    booster = xgboost.train(params, xgboost.DMatrix(X, label=table["label"].to_numpy()), num_boost_round=200)
    _register(root, spec, XGBoostModel(booster, spec.feature_names))
    row = table.slice(0, 1).to_pylist()[0]
    return {k: row[k] for k in spec.input_columns}


PREDICTORS = {"logreg_3_inputs": small_logreg, "xgboost_demo": demo_xgboost}


UVICORN_APP = """
import sys
from fastapi import FastAPI
from ray_pipeline.registry.handoff import load
from ray_pipeline.registry.store import Registry
model = load(Registry(sys.argv[1], sys.argv[2]), "models:/bench@champion")
# Like the Serve app: model calls are CPU-bound, so run them on the event loop, not a thread pool.
app = FastAPI()

@app.post("/predict")
async def predict(body: dict) -> dict:
    return {"predictions": [{"probability": p} for p in model.predict(body["records"]).probabilities.tolist()]}

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


async def _load(url: str, record: dict, concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    import aiohttp

    body = json.dumps({"records": [record]})
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    sent = 0

    async def worker(session) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - t0) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm-up
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
        started = time.perf_counter()
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def _measure(urls: dict[str, str], record: dict, args) -> dict[str, dict[int, dict[str, float]]]:
    """Each setup at each level `repeats` times, setups interleaved so drifts in machine load hit
    all of them alike; per figure the median over repeats (requests and errors: totals)."""
    runs: dict[str, dict[int, list[dict[str, float]]]] = {label: {c: [] for c in LEVELS} for label in urls}
    for _ in range(args.repeats):
        for c in LEVELS:
            for label, url in urls.items():
                runs[label][c].append(asyncio.run(_load(url, record, c, args.requests, args.seconds)))
    return {
        label: {
            c: {
                "requests": sum(r["requests"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                **{k: float(np.median([r[k] for r in rs])) for k in ("rps", "p50_ms", "p99_ms")},
                "rps_each_repeat": [round(r["rps"], 1) for r in rs],
            }  # fmt: skip
            for c, rs in levels.items()
        }
        for label, levels in runs.items()
    }


def _serve_config(db: str, art: str, port: int, batch: int, work: Path):
    from ray_pipeline.config import parse_config

    return parse_config(
        {
            "data": {"source": {"path": "unused"}, "output": {"root": str(work / "out")},
                     "schema": {"entity_key": "e", "event_timestamp": "t", "label": "y",
                                "features": {"unused": {"type": "float"}}}},
            "registry": {"db_path": db, "artifact_root": art, "model_name": "bench"},
            "serving": {"port": port, "max_batch_size": batch, "app_name": f"bench-{batch}",
                        "route_prefix": f"/b{batch}", "prediction_log": str(work / f"log{batch}"),
                        "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
        }
    )  # fmt: skip


def main() -> None:
    """Run the three setups for each predictor in one process tree and print/save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setup and level (median reported).")
    parser.add_argument("--predictors", nargs="+", choices=list(PREDICTORS), default=list(PREDICTORS))
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    built = {name: PREDICTORS[name](work / name) for name in args.predictors}  # name -> request record

    results: dict[str, dict[str, dict[int, dict[str, float]]]] = {name: {} for name in built}
    # Plain uvicorn first, before Ray starts, so it has the machine to itself.
    for name, record in built.items():
        port = free_port()
        script = work / "plain_app.py"
        script.write_text(UVICORN_APP)
        proc = subprocess.Popen([sys.executable, str(script), str(work / name / "reg.db"), str(work / name / "art"),
                                 str(port)])  # fmt: skip
        try:
            time.sleep(4.0)
            results[name].update(_measure({"uvicorn": f"http://127.0.0.1:{port}/predict"}, record, args))
        finally:
            proc.terminate()
            proc.wait()

    from ray import serve

    from ray_pipeline.runtime import init_ray
    from ray_pipeline.serve.deploy import deploy

    init_ray()
    serve_port = free_port()
    for name, record in built.items():
        setups = {"serve_unbatched": 1, "serve_batched": 32}
        cfgs = {label: _serve_config(str(work / name / "reg.db"), str(work / name / "art"), serve_port, batch, work)
                for label, batch in setups.items()}  # fmt: skip
        urls = {label: f"{deploy(cfg)}/predict" for label, cfg in cfgs.items()}
        results[name].update(_measure(urls, record, args))
        for cfg in cfgs.values():
            serve.delete(cfg.serving.app_name)

    rows = [
        [
            name,
            setup,
            c,
            r["requests"],
            r["errors"],
            r["rps"],
            r["p50_ms"],
            r["p99_ms"],
            " ".join(f"{x:.0f}" for x in r["rps_each_repeat"]),
        ]  # fmt: skip
        for name, setups in results.items()
        for setup, levels in setups.items()
        for c, r in levels.items()
    ]
    header = ["predictor", "setup", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms", "req/s each run"]
    print(table(rows, header))
    ratios = {}
    for name, r in results.items():
        ratios[f"{name}: p50_overhead_ms_serve_unbatched_minus_uvicorn_c1 (lower is better)"] = round(
            r["serve_unbatched"][1]["p50_ms"] - r["uvicorn"][1]["p50_ms"], 3
        )
        ratios[f"{name}: throughput_batched_over_unbatched_c32 (higher is better)"] = round(
            r["serve_batched"][32]["rps"] / r["serve_unbatched"][32]["rps"], 3
        )
        ratios[f"{name}: throughput_serve_batched_over_uvicorn_c32 (higher is better)"] = round(
            r["serve_batched"][32]["rps"] / r["uvicorn"][32]["rps"], 3
        )
    for key, value in ratios.items():
        print(f"{key}: {value}")
    figures = {
        name: {setup: {str(c): r for c, r in levels.items()} for setup, levels in setups.items()}
        for name, setups in results.items()
    }
    path = write_results("serve", {"levels": figures, "serve_env": _serve_env()}, ratios)
    print(f"results -> {path}")


def _serve_env() -> dict[str, str]:
    """The Serve flags the embedded Ray ran with (runtime.init_ray sets the front-door ones)."""
    return {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_") and "HAPROXY_" not in k}


if __name__ == "__main__":
    main()
