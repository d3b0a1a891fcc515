"""Ingest + validation throughput: ray-pipeline on Ray Data against a single-process pandas baseline.

Both sides read the same generated Parquet files (with a small share of corrupted rows), run the
same checks (types, ranges, categories, nullability, null key/timestamp/label, duplicates) and
write accepted rows and a quarantine. Their counts by reason must agree, or the run fails.

    python benchmarks/ingest.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, table, write_results  # noqa: E402

from ray_pipeline.config import PipelineConfig, SyntheticConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def baseline_ingest(cfg: PipelineConfig, raw: Path, out: Path) -> dict[str, int]:
    """The same checks written the plain way: one process, whole dataset in pandas."""
    schema = cfg.data.schema_
    frame = pq.read_table(raw).to_pandas()
    n = len(frame)
    reason = pd.Series([None] * n, dtype=object)

    def flag(mask: pd.Series | np.ndarray, code: str, field: str) -> None:
        new = np.asarray(mask) & reason.isna().to_numpy()
        reason[new] = f"{code}:{field}"

    flag(frame[schema.entity_key].isna(), "missing_entity", schema.entity_key)
    flag(frame[schema.event_timestamp].isna(), "missing_timestamp", schema.event_timestamp)
    label = frame[schema.label]
    flag(label.isna(), "missing_label", schema.label)
    flag(label.notna() & ~label.isin([0, 1]), "invalid_label", schema.label)
    for name, col in schema.features.items():
        values = frame[name]
        if col.type == "category":
            if col.categories is not None:
                flag(values.notna() & ~values.isin(col.categories), "unknown_category", name)
        else:
            num = values.astype("float64")
            flag(num.notna() & ~np.isfinite(num), "out_of_range", name)
            if col.min is not None:
                flag(num < col.min, "out_of_range", name)
            if col.max is not None:
                flag(num > col.max, "out_of_range", name)
        if not col.nullable:
            flag(values.isna(), "null_value", name)
    dup_keys = cfg.data.validation.duplicates.keys or schema.columns
    valid = reason.isna()
    dups = frame[valid].duplicated(subset=dup_keys, keep="first")
    reason[dups[dups].index] = "duplicate:*"

    bad = reason.notna()
    out.mkdir(parents=True, exist_ok=True)
    frame[~bad].to_parquet(out / "accepted.parquet", index=False)
    quarantine = frame[bad].astype(str)
    quarantine["_reason"] = reason[bad]
    quarantine.to_parquet(out / "quarantine.parquet", index=False)
    counts = reason[bad].value_counts().to_dict()
    return {str(k): int(v) for k, v in counts.items()}


def main() -> None:
    """Generate, then time both implementations on the same files and compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None, help="Where to put data (default: a temp dir).")
    args = parser.parse_args()

    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
    from ray_pipeline.data.ingest import ingest
    from ray_pipeline.synthetic.transactions import generate
    from ray_pipeline.runtime import init_ray

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    base = load_config(ROOT / "configs" / "demo.yaml").model_dump(by_alias=True)
    base["data"]["source"]["path"] = str(work / "raw")
    base["data"]["output"]["root"] = str(work / "ray_out")
    cfg = PipelineConfig.model_validate(base)

    t0 = time.perf_counter()
    init_ray()
    init_s = time.perf_counter() - t0
    spec = SyntheticConfig(rows=args.rows, seed=1, corruption_rate=0.002)
    gen = generate(spec, str(work / "raw"))
    print(f"ray.init {init_s:.1f} s; generated {gen.rows:,} rows in {gen.seconds:.1f} s -> {work / 'raw'}")

    # First run pays for starting and warming Ray's worker processes; the second is steady state.
    t0 = time.perf_counter()
    result = ingest(cfg)
    ray_cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = ingest(cfg)
    ray_s = time.perf_counter() - t0
    ray_counts = dict(result.by_field)

    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    base_counts = baseline_ingest(cfg, work / "raw", work / "pandas_out")
    pandas_s = time.perf_counter() - t0
    pandas_rss = peak_rss_mb()

    if ray_counts != base_counts:
        raise SystemExit(f"count mismatch:\n ray-pipeline {ray_counts}\n pandas       {base_counts}")

    rows = args.rows
    ratio = pandas_s / ray_s
    ratio_cold = pandas_s / ray_cold_s
    print()
    print(
        table(
            [
                ["ray-pipeline, first run", rows, result.quarantined, ray_cold_s, rows / ray_cold_s],
                ["ray-pipeline, warm workers", rows, result.quarantined, ray_s, rows / ray_s],
                ["pandas, single process", rows, sum(base_counts.values()), pandas_s, rows / pandas_s],
            ],
            ["implementation", "rows", "quarantined", "seconds", "rows/s"],
        )
    )
    print(f"\nthroughput ratio ray-pipeline / pandas: {ratio:.2f} warm, {ratio_cold:.2f} first run (higher is better)")
    print(f"driver peak RSS: {rss_before:,.0f} MB before the pandas run, {pandas_rss:,.0f} MB after it")
    print("quarantined by reason (both agree):", ray_counts)
    path = write_results(
        "ingest",
        {
            "rows": rows,
            "ray_init_seconds": round(init_s, 2),
            "ray_pipeline_first_run": {"seconds": round(ray_cold_s, 3), "rows_per_s": round(rows / ray_cold_s)},
            "ray_pipeline_warm": {"seconds": round(ray_s, 3), "rows_per_s": round(rows / ray_s)},
            "pandas_single_process": {
                "seconds": round(pandas_s, 3),
                "rows_per_s": round(rows / pandas_s),
                "driver_peak_rss_mb": round(pandas_rss),
            },
            "quarantined_by_reason": ray_counts,
        },
        {
            "ingest_rows_per_s_ray_pipeline_warm_over_pandas (higher is better)": round(ratio, 3),
            "ingest_rows_per_s_ray_pipeline_first_run_over_pandas (higher is better)": round(ratio_cold, 3),
        },
    )
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
