"""What an explanation costs a served 1-record request: p50 and p99 with `"explain": true` against
the same request without it, on one Ray Serve replica (unbatched), for the demo's XGBoost shape
and a small linear model, with each `serving.explain_method`; requests alternate between the two
bodies so machine drift hits both.

    python benchmarks/explain.py [--requests 1500]

Goal: explaining adds at most 20% to the p50 when asked (and nothing when not: the code path
without `explain` is the one benchmarks/serve.py measures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results  # noqa: E402
from serve import PREDICTORS, _serve_config  # noqa: E402

from ray_pipeline.runtime import free_port  # noqa: E402


def _post(url: str, body: bytes) -> float:
    """One request's latency in ms."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
    return (time.perf_counter() - t0) * 1e3


def _measure(url: str, record: dict, requests: int) -> dict[str, dict[str, float]]:
    """Alternate plain and explained requests; per body p50 / p99 in ms (explained: with the
    deployment's `serving.explain_method`)."""
    bodies = {"plain": json.dumps({"records": [record]}).encode(),
              "explain": json.dumps({"records": [record], "explain": True, "top_k": 5}).encode()}  # fmt: skip
    for body in bodies.values():  # warm-up
        for _ in range(30):
            _post(url, body)
    lat: dict[str, list[float]] = {k: [] for k in bodies}
    for _ in range(requests):
        for k, body in bodies.items():
            lat[k].append(_post(url, body))
    return {k: {"requests": len(v), "p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
            for k, v in lat.items()}  # fmt: skip


def main() -> None:
    """Deploy each predictor once, measure both bodies, print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="Requests per body.")
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    built = {name: make(work / name) for name, make in PREDICTORS.items()}

    from ray import serve

    from ray_pipeline.runtime import init_ray
    from ray_pipeline.serve.deploy import deploy

    init_ray()
    port = free_port()
    results = {}
    for name, record in built.items():
        for method in ("treeshap", "saabas"):  # the same requests; saabas changes XGBoost's only
            cfg = _serve_config(str(work / name / "reg.db"), str(work / name / "art"), port, 1, work)
            cfg.serving.explain_method = method
            results[f"{name} ({method})"] = _measure(f"{deploy(cfg)}/predict", record, args.requests)
            serve.delete(cfg.serving.app_name)

    rows = [[name, body, r["requests"], r["p50_ms"], r["p99_ms"]] for name, bodies in results.items()
            for body, r in bodies.items()]  # fmt: skip
    print(table(rows, ["predictor (explain_method)", "request", "requests", "p50 ms", "p99 ms"]))
    ratios = {f"{name}: p50_explain_over_plain (goal <= 1.20)": round(r["explain"]["p50_ms"] / r["plain"]["p50_ms"], 3)
              for name, r in results.items()}  # fmt: skip
    for key, value in ratios.items():
        print(f"{key}: {value}")
    print(f"results: {write_results('explain', results, ratios)}")


if __name__ == "__main__":
    main()
