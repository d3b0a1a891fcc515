"""Feature fit+transform: ray-pipeline on Ray Data vs single-process pandas (same math) vs the seed's
naive pandas processor; online lookup latency on SQLite and Redis.

All three read the same generated Parquet files and write their feature matrix as Parquet.
The pandas sides run in child processes so their peak memory is their own.

    python benchmarks/features.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results  # noqa: E402

from ray_pipeline.runtime import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _config():
    from ray_pipeline.config import load_config

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    features = cfg.features.model_copy(update={"views": {}, "numeric": {
        k: v for k, v in cfg.features.numeric.items() if k in cfg.data.schema_.features}})  # fmt: skip
    return cfg.data.schema_, features


# ---------------------------------------------------------------------------------------------
# baselines (run in a child process: `features.py --baseline pandas|naive DIR OUT`)
# ---------------------------------------------------------------------------------------------


def pandas_same_math(raw: Path, out: Path) -> None:
    """The FeatureSpec math in plain pandas: exact statistics, then the same transform."""
    schema, features = _config()
    from ray_pipeline.config import CategoricalFeatureConfig, NumericFeatureConfig

    frame = pd.read_parquet(raw)
    cols = {}
    for name, col in schema.features.items():
        if col.type == "category":
            cfg = features.categorical.get(name, CategoricalFeatureConfig())
            s = frame[name]
            missing = s.isna() | (s == "")
            counts = s[~missing].value_counts()
            kept = counts[counts >= cfg.min_count]
            rare = counts[counts < cfg.min_count].sum() / len(frame)
            miss_value = missing.sum() / len(frame) if cfg.missing == "own" else 0.0
            unseen = {"zero": 0.0, "rare": rare, "missing": miss_value}[cfg.unseen]
            if cfg.encoding == "onehot":
                for value in kept.sort_values(ascending=False).index[: cfg.max_onehot]:
                    cols[f"{name}={value}"] = (s == value).astype("float32")
            else:
                enc = s.map(kept / len(frame)).astype("float64").fillna(unseen)
                cols[f"{name}__freq"] = enc.where(~missing, miss_value).astype("float32")
            continue
        cfg = features.numeric.get(name, NumericFeatureConfig())
        x = frame[name].astype("float64")
        if cfg.log1p:
            x = np.log1p(x.clip(lower=0))
        mean, std = x.mean(), x.std(ddof=0)
        if cfg.clip_quantiles:
            x = x.clip(*x.quantile(list(cfg.clip_quantiles)))
        fill = x.median() if cfg.impute == "median" else mean
        miss = x.isna()
        x = x.fillna(fill)
        if cfg.standardize:
            x = (x - mean) / (std or 1.0)
        cols[name] = x.astype("float32")
        if cfg.missing_indicator:
            cols[f"{name}__missing"] = miss.astype("float32")
    pd.DataFrame(cols).to_parquet(out / "features.parquet", index=False)


def naive_seed_processor(raw: Path, out: Path) -> None:
    """The seed design: impute with the frame's own mean, frequency-encode with its own counts."""
    schema, _ = _config()
    frame = pd.read_parquet(raw)
    for name, col in schema.features.items():
        if col.type == "category":
            frame[name] = frame[name].map(frame[name].value_counts(normalize=True)).fillna(0.0)
        else:
            frame[name] = frame[name].fillna(frame[name].mean())
    frame[list(schema.features)].astype("float32").to_parquet(out / "features.parquet", index=False)


def _run_child(kind: str, raw: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of a baseline run in its own process."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline", kind, str(raw), str(out)])
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the max over children
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"baseline {kind} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# ray-pipeline side
# ---------------------------------------------------------------------------------------------


class WorkerMemory:
    """Samples the RSS of Ray worker processes (ray::...) while a run goes on."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if not f.read(5).startswith(b"ray::"):
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
                    self.peak_mb = max(self.peak_mb, rss / 1024)
                except (OSError, StopIteration, ValueError):
                    continue

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def ray_fit_transform(raw: Path, out: Path) -> None:
    """ray-pipeline: fit in one distributed pass, transform streaming, write Parquet."""
    from ray.data import SaveMode

    from ray_pipeline.data.sources import read_parquet
    from ray_pipeline.features import fit, transform

    schema, features = _config()
    ds = read_parquet(str(raw))
    spec = fit(ds, schema, features, passthrough=[])
    transform(ds, spec).write_parquet(str(out), mode=SaveMode.OVERWRITE)


# ---------------------------------------------------------------------------------------------
# online lookups
# ---------------------------------------------------------------------------------------------


def _percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def timed_lookups(store, view: str, ids: list[int], features: list[str], repeat: int) -> list[float]:
    """Latencies (ms) of `repeat` lookups of `ids`."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        store.get(view, ids, features)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def online_latencies(work: Path, entities: int = 10_000, repeat: int = 2_000) -> dict[str, dict[str, float]]:
    """p50/p99 of get() for 1 and 100 entities on SQLite and (if installed) Redis."""
    from ray_pipeline.features.online import RedisOnlineStore, SQLiteOnlineStore

    features = [f"f{i}" for i in range(4)]
    rows = [(str(e), 1_700_000_000_000_000, {f: float(e + i) for i, f in enumerate(features)}) for e in range(entities)]
    rng = np.random.default_rng(0)
    stores = {"sqlite": SQLiteOnlineStore(work / "online.db")}
    redis_proc = None
    if shutil.which("redis-server"):
        port = free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        stores["redis"] = RedisOnlineStore(f"redis://127.0.0.1:{port}/0")
    results = {}
    try:
        for name, store in stores.items():
            store.write("bench", rows)
            for n in (1, 100):
                ids = [int(i) for i in rng.integers(0, entities, n)]
                timed_lookups(store, "bench", ids, features, 50)  # warm up
                results[f"{name}_{n}_entities"] = _percentiles(timed_lookups(store, "bench", ids, features, repeat))
            store.close()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
    return results


def main() -> None:
    """Generate, run all three fit+transform implementations, then the lookups; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--baseline", nargs=3, metavar=("KIND", "RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        kind, raw, out = args.baseline
        {"pandas": pandas_same_math, "naive": naive_seed_processor}[kind](Path(raw), Path(out))
        return

    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.synthetic.transactions import generate
    from ray_pipeline.runtime import init_ray

    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    init_ray()
    gen = generate(SyntheticConfig(rows=args.rows, seed=2), str(work / "raw"))
    print(f"generated {gen.rows:,} rows in {gen.seconds:.1f} s -> {work / 'raw'}")

    ray_fit_transform(work / "raw", work / "warmup")  # start and warm worker processes once
    with WorkerMemory() as mem:
        t0 = time.perf_counter()
        ray_fit_transform(work / "raw", work / "ray_out")
        ray_s = time.perf_counter() - t0
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pandas_s, pandas_mb = _run_child("pandas", work / "raw", work / "pandas_out")
    naive_s, naive_mb = _run_child("naive", work / "raw", work / "naive_out")

    n = args.rows
    print()
    print(
        table(
            [
                [
                    "ray-pipeline (Ray Data)",
                    ray_s,
                    n / ray_s,
                    f"{mem.peak_mb:,.0f} per worker, driver {driver_mb:,.0f}",
                ],
                ["pandas, same math", pandas_s, n / pandas_s, f"{pandas_mb:,.0f}"],
                ["pandas, seed-style naive", naive_s, n / naive_s, f"{naive_mb:,.0f}"],
            ],
            ["fit+transform", "seconds", "rows/s", "peak RSS MB"],
        )
    )
    ratios = {
        "fit_transform_rows_per_s_ray_over_pandas (higher is better)": round(pandas_s / ray_s, 3),
        "fit_transform_rows_per_s_ray_over_naive (higher is better)": round(naive_s / ray_s, 3),
        "peak_rss_ray_worker_over_pandas (lower is better)": round(mem.peak_mb / pandas_mb, 3),
    }
    lookups = online_latencies(work)
    print()
    print(table([[k, v["p50_ms"], v["p99_ms"]] for k, v in lookups.items()], ["online lookup", "p50 ms", "p99 ms"]))
    if "redis_1_entities" in lookups:
        ratios["lookup_p99_1_entity_redis_over_sqlite (lower is better)"] = round(
            lookups["redis_1_entities"]["p99_ms"] / lookups["sqlite_1_entities"]["p99_ms"], 3
        )
    print("\nratios:", json.dumps(ratios, indent=2))
    path = write_results(
        "features",
        {
            "rows": n,
            "ray_pipeline": {
                "seconds": round(ray_s, 3),
                "peak_worker_rss_mb": round(mem.peak_mb),
                "driver_rss_mb": round(driver_mb),
            },
            "pandas_same_math": {"seconds": round(pandas_s, 3), "peak_rss_mb": round(pandas_mb)},
            "pandas_naive_seed": {"seconds": round(naive_s, 3), "peak_rss_mb": round(naive_mb)},
            "online_lookup_ms": lookups,
        },
        ratios,
    )
    print(f"results -> {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
