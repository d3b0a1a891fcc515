"""Drift statistics over a large prediction log: ray-pipeline's monitor on Ray Data against a
single-process pandas + scipy implementation of the same statistics, side by side.

The log holds N predictions (default 10M) with 20 typed inputs (15 numeric, 5 categorical), in
Parquet files as serving writes them; the second half is drifted. Both sides compute, per input,
PSI / KS / Jensen-Shannon / Wasserstein (numeric) or chi-square / PSI / L-infinity / unseen rate
(categorical) against the same reference profile, plus null rates and score drift. Their values
must agree within 1e-9 or the run fails. Also measured: the delay from the last logged request of a
drifted window to its alert (window + grace + processing).

    python benchmarks/monitor.py [--rows 10000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, table, write_results  # noqa: E402

from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, NumericSpec  # noqa: E402
from ray_pipeline.monitor import stats  # noqa: E402

NUMERIC = [f"x{i}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FILE_ROWS = 500_000


def spec() -> FeatureSpec:
    """A FeatureSpec over the benchmark's inputs (only names and known categories matter here)."""
    num = [NumericSpec(name=n, log1p=False, clip=None, fill=0.0, missing_indicator=False, mean=0.0, std=1.0,
                       count=1, missing=0) for n in NUMERIC]  # fmt: skip
    cat = [CategoricalSpec(name=c, encoding="frequency", frequencies={f"k{j}": 0.01 for j in range(50)},
                           missing_value=0.0, unseen_value=0.0, rare_frequency=0.0) for c in CATEGORICAL]  # fmt: skip
    return FeatureSpec(rows=1, numeric=num, categorical=cat)


def rows(rng: np.random.Generator, n: int, drift: bool) -> dict[str, np.ndarray]:
    """Inputs and scores; drifted rows shift every numeric input by 1 std and bring 30% unseen categories."""
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(NUMERIC):
        x = rng.normal(1.0 if drift else 0.0, 1.0 + 0.1 * (i % 3), n)
        x[rng.random(n) < 0.03] = np.nan
        out[name] = x
    p = np.arange(1, 61) ** -1.1
    for name in CATEGORICAL:
        cats = np.array([f"k{j}" for j in range(60)], dtype=object)  # k50..k59 were never seen in training
        out[name] = cats[rng.choice(60, n, p=p / p.sum())]
        if drift:
            out[name][rng.random(n) < 0.3] = "k59"
    out["score"] = 1 / (1 + np.exp(-rng.normal(-1.0 + (0.3 if drift else 0.0), 1.0, n)))
    return out


def write_log(directory: Path, n: int, seed: int = 0) -> tuple[datetime, datetime]:
    """N logged predictions in hour partitions, half in a reference-like window, half drifted."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, FILE_ROWS):
        m = min(FILE_ROWS, n - start)
        drift = start >= n // 2
        at = T0 + timedelta(minutes=90 if drift else 30)
        cols = rows(rng, m, drift)
        t = pa.table({"request_id": pa.array([f"r{start}"] * m), "row": pa.array(np.arange(m, dtype=np.int32)),
                      "ts": pa.array([at] * m, pa.timestamp("us", tz="UTC")), "score": cols.pop("score"),
                      "model_name": pa.array(["bench"] * m), "model_version": pa.array(np.ones(m, dtype=np.int64)),
                      "variant": pa.array(["champion"] * m), "http_status": pa.array(np.full(m, 200, np.int16)),
                      **{k: pa.array(v, from_pandas=True) for k, v in cols.items()}})  # fmt: skip
        folder = directory / f"date={at:%Y-%m-%d}" / f"hour={at:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, folder / f"part-{start:09d}.parquet")
    return T0 + timedelta(hours=1), T0 + timedelta(hours=2)


def reference(rng: np.random.Generator) -> dict:
    """The reference profile, built by the platform's own code from 200k undrifted rows."""
    import ray.data

    from ray_pipeline.features.profile import build_profile

    cols = rows(rng, 200_000, False)
    scores = cols.pop("score")
    return build_profile(ray.data.from_pandas(pd.DataFrame(cols)), spec(), scores, bins=10, top_k=20)


def baseline(directory: Path, start: datetime, end: datetime, ref: dict) -> dict[tuple[str, str], float]:
    """The same statistics the plain way: one process, every file into pandas, numpy + scipy."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chisquare, wasserstein_distance

    frame = pd.concat([pd.read_parquet(f, columns=["ts", "score", *NUMERIC, *CATEGORICAL])
                       for f in sorted(directory.rglob("*.parquet"))])  # fmt: skip
    frame = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
    out: dict[tuple[str, str], float] = {}
    for name, r in [*((n, ref["numeric"][n]) for n in NUMERIC), ("score", ref["score"])]:
        col = frame[name]
        x = col.dropna().to_numpy()
        q = np.bincount(np.searchsorted(r["edges"], x, side="right"), minlength=len(r["edges"]) + 1) / len(x)
        p = np.asarray(r["shares"])
        pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        out[("psi", name)] = float(np.sum((qf - pf) * np.log(qf / pf)))
        out[("ks", name)] = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
        out[("js", name)] = float(jensenshannon(p, q, base=2))
        mids = stats.bin_midpoints(r)
        out[("wasserstein", name)] = float(wasserstein_distance(mids, mids, p + 1e-300, q + 1e-300)) / r["std"]
        if name != "score":
            out[("null_rate", name)] = float(col.isna().mean())
    for name in CATEGORICAL:
        r = ref["categorical"][name]
        counts = frame[name].value_counts()
        present = counts.sum()
        top = list(r["top"])
        c = np.array([counts.get(k, 0) for k in top] + [present - sum(counts.get(k, 0) for k in top)], float)
        p = np.array([*r["top"].values(), r["other"]])
        q = c / present
        pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        out[("psi", name)] = float(np.sum((qf - pf) * np.log(qf / pf)))
        out[("linf", name)] = float(np.max(np.abs(q - p)))
        out[("chi2", name)] = float(chisquare(c, pf / pf.sum() * present).statistic)
        out[("unseen_rate", name)] = float(counts[~counts.index.isin(r["known"])].sum() / present)
    return out


def ours(directory: Path, start: datetime, end: datetime, ref: dict) -> dict[tuple[str, str], float]:
    """ray-pipeline's monitor: Ray Data tasks over the files, partials merged on the driver."""
    from ray_pipeline.config import MonitoringConfig
    from ray_pipeline.monitor.collect import collect_window
    from ray_pipeline.monitor.window import window_rows

    data = collect_window(str(directory), start, end, {"1": ref}, None)
    return {(m["metric"], m["feature"]): m["value"] for m in window_rows(data, {"1": ref}, {}, MonitoringConfig())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()

    from ray_pipeline.runtime import init_ray

    init_ray()
    ref = reference(np.random.default_rng(1))
    with tempfile.TemporaryDirectory(prefix="rp-monitor-bench-") as tmp:
        log = Path(tmp) / "predlog"
        t = time.perf_counter()
        start, end = write_log(log, args.rows)
        write_s = time.perf_counter() - t
        ours(log, start, start + timedelta(seconds=1), ref)  # warm the Ray Data path once
        t = time.perf_counter()
        mine = ours(log, start, end, ref)
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        theirs = baseline(log, start, end, ref)
        base_s = time.perf_counter() - t
        base_rss = peak_rss_mb()
        worst = max(abs(mine[k] - v) for k, v in theirs.items())
        if worst > 1e-9 or set(theirs) - set(mine):
            raise SystemExit(f"statistics disagree: max |diff| {worst:g}; missing {sorted(set(theirs) - set(mine))}")

        # Delay to alert: a drifted window is read once it is complete plus the grace period.
        from ray_pipeline.config import MonitoringConfig

        m = MonitoringConfig()
        small = Path(tmp) / "small"
        write_log(small, 200_000, seed=3)  # one file, all in the first hour
        t = time.perf_counter()
        ours(small, T0, T0 + timedelta(hours=1), ref)
        window_processing_s = time.perf_counter() - t
    drifted = sum(1 for (metric, name), v in mine.items() if metric == "psi" and v > 0.25)
    print(f"{args.rows:,} logged predictions, 20 inputs ({args.rows // 2:,} in the drifted window); "
          f"log written in {write_s:.1f} s; {len(theirs)} statistics agree within {worst:.1e}; "
          f"{drifted} with PSI > 0.25")  # fmt: skip
    print(table([["ray-pipeline monitor (Ray Data)", ours_s, 1.0],
                 ["pandas + scipy, one process", base_s, base_s / ours_s]],
                ["drift statistics of one window", "seconds", "baseline / ours"]))  # fmt: skip
    print(f"alert delay bound: window ({m.window_s:g} s) + grace ({m.grace_s:g} s) + processing "
          f"({window_processing_s:.1f} s for a 200k-row window); goal: window + 60 s")  # fmt: skip
    write_results("monitor", {
        "rows": args.rows, "inputs": 20, "window_rows": args.rows // 2, "statistics": len(theirs),
        "max_abs_difference": worst, "seconds": {"ours": ours_s, "pandas_scipy": base_s, "write_log": write_s},
        "baseline_peak_rss_mb": base_rss,
        "alert_delay": {"window_s": m.window_s, "grace_s": m.grace_s, "processing_s_200k_rows": window_processing_s,
                        "bound_s": m.window_s + m.grace_s + window_processing_s},
    }, {"pandas_scipy_over_ours": base_s / ours_s})  # fmt: skip


if __name__ == "__main__":
    main()
