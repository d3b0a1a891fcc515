"""Explanations: per row, contributions by raw column that add up to the margin (both model kinds,
every task); per version, an importance that ranks the generator's true strong inputs above its
weak ones and an input it never uses last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ray_pipeline.config import parse_config
from ray_pipeline.train import explain
from ray_pipeline.train.runner import train_model

from .conftest import DEMO_CONFIG
from .helpers import linear_cfg, task_prepared

pytestmark = pytest.mark.slow  # Ray Data and in-process training on 30k rows

# The generator's inputs by the size of their true effect on the log-odds (coefficient x the
# latent spread): amount 0.8, credit_score 0.7, distance_km 0.6, account_age_days 0.54;
# avg_amount_30d 0.12 is weak; `noise` is not in the truth at all.
STRONG = ["amount", "credit_score", "distance_km", "account_age_days"]
WEAK = ["avg_amount_30d"]
# XGBoost predicts and explains in float32: its margin has ~7 significant digits, so the sum is
# checked to 1e-6 relative; the linear model's to 1e-6 absolute.
TOL = {"logreg": {"abs": 1e-6}, "xgboost": {"rel": 1e-6, "abs": 1e-6}}


@pytest.fixture(scope="module")
def generated(ray_session, tmp_path_factory):
    """30k generated rows plus an input the truth does not use, prepared as a run prepares them."""
    import ray.data

    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.synthetic.transactions import generate_chunk
    from ray_pipeline.train.data import prepare

    frame = generate_chunk(SyntheticConfig(rows=30_000, chunk_rows=30_000, seed=8), 0).to_pandas()
    frame["noise"] = np.random.default_rng(0).normal(size=len(frame))
    d = yaml.safe_load(DEMO_CONFIG.read_text())
    d["training"]["run_root"] = str(tmp_path_factory.mktemp("explain") / "runs")
    d["features"]["views"] = {}
    d["features"]["numeric"] = {k: v for k, v in d["features"]["numeric"].items() if k in d["data"]["schema"]["features"]}
    d["data"]["schema"]["features"]["noise"] = {"type": "float"}
    d["training"]["logreg"]["optimizer"] = "newton"
    d["training"]["xgboost"]["num_boost_round"] = 60
    cfg = parse_config(d)
    return cfg, prepare(ray.data.from_pandas(frame).repartition(4), cfg)


@pytest.fixture(scope="module")
def models(generated):
    cfg, prepared = generated
    return {kind: train_model(cfg, kind, workers=0, prepared=prepared) for kind in ("logreg", "xgboost")}


def _test_x(prepared, n: int = 500) -> np.ndarray:
    return np.asarray(prepared.test.take_batch(n, batch_format="numpy")["x"], dtype=np.float32)


@pytest.mark.parametrize("kind, method", [("logreg", "treeshap"), ("xgboost", "treeshap"), ("xgboost", "saabas")])
def test_contributions_by_column_add_up_to_the_margin(generated, models, kind, method):
    _, prepared = generated
    run = models[kind]
    prepared = prepared.under(run.spec)  # XGBoost's splits: native category codes
    X = _test_x(prepared)
    rows = explain.explain_rows(run.model, prepared.spec, X, top_k=3, method=method)
    margin = run.model.margin(X)
    for row, m in zip(rows, margin):
        total = row["bias"] + sum(c["value"] for c in row["contributions"]) + row["rest"]
        assert total == pytest.approx(float(m), **TOL[kind])
        assert row["margin"] == pytest.approx(float(m), **TOL[kind])
        assert len(row["contributions"]) == 3
        # raw column names: a one-hot channel or a missing indicator is its column, never an entry
        assert {c["column"] for c in row["contributions"]} <= set(prepared.spec.input_columns)
        values = [abs(c["value"]) for c in row["contributions"]]
        assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("kind", ["logreg", "xgboost"])
def test_each_task_explains_its_own_margin(ray_session, tmp_path, task, kind):
    prepared = task_prepared(task, rows=3000)
    cfg = linear_cfg(tmp_path, optimizer="newton")
    cfg.training.xgboost.num_boost_round = 20
    run = train_model(cfg, kind, workers=0, prepared=prepared)
    X = _test_x(prepared, 200)
    rows = explain.explain_rows(run.model, prepared.spec, X, top_k=2)
    margin = run.model.margin(X)
    if task == "multiclass":  # the predicted class's logit, and which class that is
        k = margin.argmax(axis=1)
        margin = margin[np.arange(len(k)), k]
        assert [r["class"] for r in rows] == [prepared.spec.label.classes[i] for i in k]
    for row, m in zip(rows, margin):
        assert row["bias"] + sum(c["value"] for c in row["contributions"]) + row["rest"] == pytest.approx(m, **TOL[kind])


@pytest.mark.parametrize("kind", ["logreg", "xgboost"])
def test_importance_ranks_the_true_strong_inputs_first_and_an_unused_input_last(generated, models, kind):
    run = models[kind]
    _, prepared = generated
    stored = explain.global_importance(run.model, run.spec, prepared.under(run.spec).test)  # every row, no budget
    ranked = [c["column"] for c in stored["importance"]]
    assert stored["rows"] > 1000 and stored["explained"] == "the log-odds"
    assert max(ranked.index(c) for c in STRONG) < min(ranked.index(c) for c in WEAK), ranked
    # Last, or above merchant_id only: the truth's per-merchant risk is invisible to that column's
    # frequency encoding, so to the model merchant_id is as unused as noise.
    assert set(ranked[ranked.index("noise") + 1 :]) <= {"merchant_id"}, ranked
    if kind == "xgboost":  # the truth's two interaction terms: night x online, big amount x far
        pairs = [set(i["columns"]) for i in stored["interactions"]]
        assert {"hour_of_day", "channel"} in pairs and {"amount", "distance_km"} in pairs, stored["interactions"]
    else:
        assert stored["interactions"] == []


def test_importance_on_no_budget_explains_only_the_probe_and_skips_interactions(generated, models):
    _, prepared = generated
    run = models["xgboost"]
    prepared = prepared.under(run.spec)
    tight = explain.global_importance(run.model, run.spec, prepared.test, budget_s=0.0)
    assert tight["rows"] == explain.PROBE_ROWS < tight["of_rows"] and tight["interactions"] == []
    assert {c["column"] for c in tight["importance"]} == {c["column"] for c in explain.global_importance(
        run.model, run.spec, prepared.test)["importance"]}  # fmt: skip
    # the run's own file: explained within its share of the fit, rows and time recorded, and said
    stored = json.loads((Path(run.run_dir) / explain.IMPORTANCE_FILE).read_text())
    assert 0 < stored["rows"] <= stored["of_rows"] and stored["seconds"] >= 0
    assert run.timings["importance_rows"] == stored["rows"]


def test_an_ensemble_blends_margins_explains_additively_and_round_trips(generated, models, tmp_path):
    """Each member reads its own entries of one combined vector (the linear model its encodings,
    XGBoost its category codes); the weighted margins blend, contributions add up to the blend, and
    the saved ensemble loads and scores the same."""
    from scipy.special import expit

    from ray_pipeline.features.transform import transform_records
    from ray_pipeline.train.ensemble import EnsembleModel, blend_weights, combined_spec, member_columns
    from ray_pipeline.train.models import load_model

    _, prepared = generated
    linear, trees = models["logreg"], models["xgboost"]
    spec = combined_spec([linear.spec, trees.spec])
    assert len(spec.input_columns) == len(linear.spec.input_columns)  # each raw column once
    columns = [member_columns(spec, s) for s in (linear.spec, trees.spec)]
    ensemble = EnsembleModel([linear.model, trees.model], columns, [0.3, 0.7], spec.feature_names)
    X = np.asarray(prepared.under(spec).test.take_batch(300, batch_format="numpy")["x"], dtype=np.float64)
    own = [np.asarray(prepared.under(s).test.take_batch(300, batch_format="numpy")["x"]) for s in (linear.spec, trees.spec)]
    expected = 0.3 * linear.model.margin(own[0]) + 0.7 * trees.model.margin(own[1])
    np.testing.assert_allclose(ensemble.margin(X), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ensemble.task_output(X), expit(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble.contributions(X).sum(axis=1), ensemble.margin(X), rtol=1e-5, atol=1e-5)
    rows = explain.explain_rows(ensemble, spec, X[:5], top_k=3)
    assert all(abs(r["bias"] + sum(c["value"] for c in r["contributions"]) + r["rest"] - r["margin"]) < 1e-5 for r in rows)
    ensemble.save(tmp_path / "model")
    again = load_model(tmp_path / "model")
    np.testing.assert_array_equal(again.task_output(X), ensemble.task_output(X))
    # a served record goes through the combined spec: the same as each member through its own
    frame = prepared.raw["test"].take(3)
    Xr, _ = transform_records(frame, spec)
    np.testing.assert_array_equal(Xr[:, columns[1]], transform_records(frame, trees.spec)[0])
    # the weights: the grid point with the lowest validation loss; a dominant member takes all
    y = np.array([0.0, 1.0, 1.0, 0.0])
    good, bad = np.array([-3.0, 3.0, 3.0, -3.0]), np.array([3.0, -3.0, -3.0, 3.0])
    loss = lambda y, z: float(np.mean(np.log1p(np.exp(-(2 * y - 1) * z))))  # noqa: E731
    assert blend_weights("binary", y, [good, bad], loss) == [1.0, 0.0]
