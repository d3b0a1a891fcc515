"""The whole run at scale: `ray-pipeline run` against a single-process pandas + scikit-learn +
xgboost script doing the same steps, on generated rows from Parquet and from CSV.

Both sides read the demo's synthetic transactions (`ray-pipeline generate`'s generator: 11 inputs,
an entity key, an event time, a binary label, 0.2% corrupted rows) and do:
ingest with validation (types, ranges, category lists, required values, duplicates; bad rows set
aside), write the accepted rows as Parquet, split by event time (70/15/15), fit the features on
the train split (log1p, median fill, missing indicators, standardizing, frequency and one-hot
codes), train the logistic model (lbfgs) and XGBoost (hist, early stopping on valid), evaluate on
test, and save the models. Ours runs as a user runs it (`ray-pipeline run --models
logreg,xgboost`, an embedded Ray, placement by cost), so it also profiles inputs, explains and
registers through the gates.

Each side runs in its own process; a sampler adds up the proportional set size (PSS, shared pages
split between the processes sharing them) of that process and every process under it (Ray's
raylet, GCS, workers, object store) every 0.25 s: `peak_mb` is the largest sum.

    .venv/bin/python benchmarks/e2e.py [--rows 1000000 10000000] [--formats parquet csv]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, demo_config_body, table, write_results  # noqa: E402

STAGES = ("ingest", "features", "prepare", "train", "registry")


def _children(pid: int) -> list[int]:
    """`pid` and every process under it (from /proc's parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def measured(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd`; its wall time, exit code and the peak PSS of its process tree."""
    peak, done = [0.0], threading.Event()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def sample() -> None:
            while not done.wait(0.25):
                peak[0] = max(peak[0], sum(_pss_mb(p) for p in _children(proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_mb": round(peak[0]), "exit": code}


def generate(rows: int, fmt: str, out: Path) -> float:
    """The demo's synthetic transactions, `rows` of them, as `fmt` files under `out`; seconds taken."""
    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.synthetic.transactions import generate as write

    init_ray(None, quiet=True)
    return write(SyntheticConfig(rows=rows, seed=7, days=90, format=fmt, corruption_rate=0.002,
                                 chunk_rows=min(rows, 250_000)), str(out)).seconds  # fmt: skip


def ours(data: Path, fmt: str, work: Path) -> dict:
    """`ray-pipeline run` on the rows, as its own process with an embedded Ray."""
    import yaml

    body = demo_config_body(work)
    body.pop("synthetic", None)
    body["data"]["source"] = {"path": str(data), "format": fmt}
    body["data"]["output"]["root"] = str(work / "ingested")
    body["features"]["store_root"] = str(work / "features")
    body["registry"]["db_path"] = str(work / "registry.db")
    body["registry"]["artifact_root"] = str(work / "artifacts")
    body["monitoring"]["root"] = str(work / "monitoring")
    body["serving"]["prediction_log"] = str(work / "predictions")
    config = work / "pipeline.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_PIPELINE_PROGRESS="0")
    cli = str(Path(sys.executable).with_name("ray-pipeline"))
    run = measured([cli, "run", "--config", str(config), "--models", "logreg,xgboost"], env, work / "ours.log")
    text = (work / "ours.log").read_text()
    if run["exit"] != 0:
        raise RuntimeError(f"ours failed ({run['exit']}):\n{text[-3000:]}")
    line = next(line for line in text.splitlines() if line.startswith("total "))
    run["stages_s"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", line.split(":", 1)[1])}
    found = re.findall(r"registered models:/\S+ \((\w+)\): test log_loss ([\d.]+)", text)
    run["test"] = {kind: float(loss) for kind, loss in found}
    return run


def baseline(data: Path, fmt: str, work: Path) -> dict:
    """This file's `--baseline` mode as its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    run = measured([sys.executable, __file__, "--baseline", str(data), fmt, str(work)], env, work / "baseline.log")
    text = (work / "baseline.log").read_text()
    if run["exit"] != 0:
        raise RuntimeError(f"baseline failed ({run['exit']}):\n{text[-3000:]}")
    run.update(json.loads(text.strip().splitlines()[-1]))
    return run


def single_process(data: Path, fmt: str, work: Path) -> dict:
    """The steps in one process with pandas, scikit-learn and xgboost (what a user would write)."""
    import numpy as np
    import pandas as pd
    import xgboost
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    from ray_pipeline.config import load_config

    schema = load_config(ROOT / "configs" / "demo.yaml").data.schema_
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    files = sorted(p for p in data.rglob(f"*.{fmt}") if not p.name.startswith("."))
    read = pd.read_parquet if fmt == "parquet" else lambda p: pd.read_csv(p, dtype=str, keep_default_na=False)
    frame = pd.concat([read(p) for p in files], ignore_index=True)
    bad = np.zeros(len(frame), dtype=bool)
    for name, col in schema.features.items():
        if col.type == "category":
            text = frame[name].astype("string").str.strip().replace("", pd.NA)
            if col.categories is not None:
                bad |= (text.notna() & ~text.isin(col.categories)).to_numpy()
            if not col.nullable:
                bad |= text.isna().to_numpy()
            frame[name] = text
            continue
        values = pd.to_numeric(frame[name].replace("", np.nan), errors="coerce")
        given = frame[name].notna() & (frame[name].astype("string").str.strip() != "")
        bad |= (given & values.isna()).to_numpy()
        if col.type == "int":
            bad |= (values.notna() & (values != values.round())).to_numpy()
        if col.min is not None:
            bad |= (values < col.min).to_numpy()
        if col.max is not None:
            bad |= (values > col.max).to_numpy()
        frame[name] = values.astype("float64")
    ts = pd.to_datetime(frame[schema.event_timestamp], utc=True, errors="coerce", format="ISO8601")
    label = pd.to_numeric(frame[schema.label], errors="coerce")
    key = pd.to_numeric(frame[schema.entity_key], errors="coerce")
    bad |= (ts.isna() | ~label.isin([0, 1]) | key.isna()).to_numpy()
    frame[schema.event_timestamp], frame[schema.label], frame[schema.entity_key] = ts, label, key
    bad |= frame.duplicated(subset=[c for c in frame.columns if c != "event_id"]).to_numpy()
    accepted = frame[~bad].reset_index(drop=True)
    frame[bad].astype(str).to_parquet(work / "quarantine.parquet")
    accepted.to_parquet(work / "accepted.parquet")
    seconds["ingest"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    order = accepted[schema.event_timestamp].rank(method="first") / len(accepted)
    splits = {"train": accepted[order <= 0.70], "valid": accepted[(order > 0.70) & (order <= 0.85)],
              "test": accepted[order > 0.85]}  # fmt: skip
    train = splits["train"]
    numeric = [n for n, c in schema.features.items() if c.type != "category"]
    log1p = {"amount", "distance_km", "account_age_days", "avg_amount_30d"}
    stats = {}
    for n in numeric:
        x = np.log1p(train[n].clip(lower=0)) if n in log1p else train[n]
        stats[n] = (float(x.median()), float(x.mean()), float(x.std() or 1.0))
    freqs = {n: train[n].value_counts(normalize=True) for n, c in schema.features.items()
             if c.type == "category" and n != "channel"}  # fmt: skip
    freqs = {n: f[f * len(train) >= 5] for n, f in freqs.items()}
    channels = schema.features["channel"].categories or []

    def matrix(part: pd.DataFrame) -> np.ndarray:
        cols = []
        for n in numeric:
            x = np.log1p(part[n].clip(lower=0)) if n in log1p else part[n]
            med, mean, std = stats[n]
            cols += [((x.fillna(med) - mean) / std).to_numpy(), x.isna().to_numpy(dtype=float)]
        cols += [part[n].map(f).astype("float64").fillna(0.0).to_numpy() for n, f in freqs.items()]
        cols += [(part["channel"] == c).to_numpy(dtype=float) for c in channels]
        return np.column_stack(cols).astype(np.float32)

    X = {name: matrix(part) for name, part in splits.items()}
    y = {name: part[schema.label].to_numpy(dtype=np.float32) for name, part in splits.items()}
    seconds["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    logreg = LogisticRegression(max_iter=100, C=1e4).fit(X["train"], y["train"])
    dtrain = xgboost.QuantileDMatrix(X["train"], y["train"])
    dvalid = xgboost.QuantileDMatrix(X["valid"], y["valid"], ref=dtrain)
    booster = xgboost.train({"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                             "eta": 0.1, "max_depth": 6, "nthread": os.cpu_count()},
                            dtrain, num_boost_round=200, evals=[(dvalid, "valid")], early_stopping_rounds=10,
                            verbose_eval=False)  # fmt: skip
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    p_lr = logreg.predict_proba(X["test"])[:, 1]
    p_xgb = booster.predict(xgboost.DMatrix(X["test"]), iteration_range=(0, booster.best_iteration + 1))
    test = {"logreg": log_loss(y["test"], p_lr), "xgboost": log_loss(y["test"], p_xgb),
            "auc_xgboost": roc_auc_score(y["test"], p_xgb)}  # fmt: skip
    import pickle

    (work / "logreg.pkl").write_bytes(pickle.dumps(logreg))
    booster.save_model(work / "xgboost.ubj")
    seconds["registry"] = time.perf_counter() - t0
    return {"stages_s": {k: round(v, 2) for k, v in seconds.items()}, "rows_accepted": int(len(accepted)),
            "rows_quarantined": int(bad.sum()), "test": {k: round(float(v), 5) for k, v in test.items()}}  # fmt: skip


def main() -> None:
    """Every size and format, both sides; results/e2e.json."""
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline":
        print(json.dumps(single_process(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--formats", nargs="+", default=["parquet", "csv"])
    parser.add_argument("--keep", action="store_true", help="keep the generated data and run folders")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
    earlier = RESULTS / "e2e.json"  # other sizes and formats measured before stay in the file
    results, rows = (json.loads(earlier.read_text()).get("runs", {}) if earlier.exists() else {}), []
    for n in args.rows:
        for fmt in args.formats:
            work = Path(tempfile.mkdtemp(prefix=f"bench-e2e-{n}-{fmt}-"))
            try:
                data = work / "raw"
                gen_s = _generate_apart(n, fmt, data)
                figures = {"generate_s": round(gen_s, 1)}
                for side, fn in (("baseline", baseline), ("ours", ours)):
                    side_dir = work / side
                    side_dir.mkdir()
                    figures[side] = fn(data, fmt, side_dir)
                    print(f"{n:,} rows {fmt} {side}: {figures[side]['wall_s']} s, peak {figures[side]['peak_mb']:,} MB",
                          flush=True)  # fmt: skip
                figures["speed_ratio"] = round(figures["baseline"]["wall_s"] / figures["ours"]["wall_s"], 3)
                figures["memory_ratio"] = round(figures["ours"]["peak_mb"] / max(figures["baseline"]["peak_mb"], 1), 3)
                results[f"{n}-{fmt}"] = figures
                b, o = figures["baseline"], figures["ours"]
                rows.append([n, fmt, b["wall_s"], o["wall_s"], figures["speed_ratio"], b["peak_mb"], o["peak_mb"],
                             figures["memory_ratio"]])  # fmt: skip
                write_results("e2e", {"runs": results}, {})
            finally:
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
    print(table(rows, ["rows", "format", "script s", "ours s", "script/ours speed", "script MB", "ours MB",
                       "ours/script MB"]))  # fmt: skip
    print(f"results: {write_results('e2e', {'runs': results}, {})}")


def _generate_apart(n: int, fmt: str, out: Path) -> float:
    """Generate in a child process, so this process holds no Ray while the sides are measured."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import e2e; "
            f"print(e2e.generate({n}, {fmt!r}, __import__('pathlib').Path({str(out)!r})))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
