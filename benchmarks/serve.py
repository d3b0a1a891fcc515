"""Serving latency and throughput on loopback: the same predictor behind plain FastAPI + uvicorn
(one process), Ray Serve unbatched and Ray Serve batched, at concurrency 1, 8 and 32.

A closed-loop aiohttp client (keep-alive) sends one-record requests; every level is bounded by
a request count and a time limit.

    python benchmarks/serve.py [--seconds 8] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results  # noqa: E402

RECORD = {"amount": 42.0, "distance_km": 3.5, "channel": "online"}
LEVELS = (1, 8, 32)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_registry(root: Path) -> tuple[str, str]:
    """A registry holding one logistic model over a small FeatureSpec, aliased champion."""
    from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, NumericSpec
    from ray_pipeline.registry.models import register_run
    from ray_pipeline.registry.store import Registry
    from ray_pipeline.train.models import LogisticModel

    spec = FeatureSpec(
        rows=1000,
        numeric=[NumericSpec(name=n, log1p=True, clip=None, fill=1.0, missing_indicator=False, mean=2.0, std=1.0,
                             count=1000, missing=0) for n in ("amount", "distance_km")],
        categorical=[CategoricalSpec(name="channel", encoding="frequency", frequencies={"pos": 0.6, "online": 0.4},
                                     missing_value=0.0, unseen_value=0.0, rare_frequency=0.0)],
    )  # fmt: skip
    run = root / "run"
    LogisticModel(np.array([0.5, -0.2, 1.0]), -1.0, spec.feature_names).save(run / "model")
    spec.save(run / "feature_spec.json")
    (run / "metrics.json").write_text(json.dumps({"test": {"log_loss": 0.4, "roc_auc": 0.8}}))
    (run / "params.json").write_text(json.dumps({"model": "logreg"}))
    (run / "lineage.json").write_text("{}")
    registry = Registry(root / "reg.db", root / "art")
    register_run(registry, "bench", run)
    registry.set_alias("bench", "champion", 1)
    return str(root / "reg.db"), str(root / "art")


UVICORN_APP = """
import sys
from fastapi import FastAPI
from ray_pipeline.registry.models import load
from ray_pipeline.registry.store import Registry
model = load(Registry(sys.argv[1], sys.argv[2]), "models:/bench@champion")
app = FastAPI()

@app.post("/predict")
def predict(body: dict) -> dict:
    return {"predictions": [{"probability": p} for p in model.predict_proba(body["records"]).tolist()]}

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


async def _load(url: str, concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    import aiohttp

    body = json.dumps({"records": [RECORD]})
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


def _measure(url: str, args) -> dict[int, dict[str, float]]:
    return {c: asyncio.run(_load(url, c, args.requests, args.seconds)) for c in LEVELS}


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
    """Run the three setups in one process tree and print/save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    db, art = make_registry(work)

    results: dict[str, dict[int, dict[str, float]]] = {}
    port = _port()
    script = work / "plain_app.py"
    script.write_text(UVICORN_APP)
    proc = subprocess.Popen([sys.executable, str(script), db, art, str(port)])
    try:
        time.sleep(3.0)
        results["uvicorn"] = _measure(f"http://127.0.0.1:{port}/predict", args)
    finally:
        proc.terminate()
        proc.wait()

    from ray import serve

    from ray_pipeline.runtime import init_ray
    from ray_pipeline.serve.app import deploy

    init_ray()
    serve_port = _port()
    for label, batch in (("serve_unbatched", 1), ("serve_batched", 32)):
        url = deploy(_serve_config(db, art, serve_port, batch, work))
        results[label] = _measure(f"{url}/predict", args)
        serve.delete(f"bench-{batch}")

    rows = [
        [name, c, r["requests"], r["errors"], r["rps"], r["p50_ms"], r["p99_ms"]]
        for name, levels in results.items()
        for c, r in levels.items()
    ]
    print(table(rows, ["setup", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms"]))
    ratios = {
        "p50_overhead_ms_serve_unbatched_minus_uvicorn_c1 (lower is better)": round(
            results["serve_unbatched"][1]["p50_ms"] - results["uvicorn"][1]["p50_ms"], 3
        ),
        "throughput_batched_over_unbatched_c32 (higher is better)": round(
            results["serve_batched"][32]["rps"] / results["serve_unbatched"][32]["rps"], 3
        ),
        "throughput_serve_batched_over_uvicorn_c32 (higher is better)": round(
            results["serve_batched"][32]["rps"] / results["uvicorn"][32]["rps"], 3
        ),
    }
    for key, value in ratios.items():
        print(f"{key}: {value}")
    path = write_results(
        "serve", {"levels": {k: {str(c): r for c, r in v.items()} for k, v in results.items()}}, ratios
    )
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
