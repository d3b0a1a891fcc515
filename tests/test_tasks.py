"""Multiclass and regression training: the softmax and squared-error sums against finite
differences, determinism across worker counts, parity with scikit-learn and the closed form,
init's task inference, and gates that refuse a change of task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ray_pipeline.train.objective import shard_sums_task
from ray_pipeline.train.runner import train_model

from .helpers import TRUE_LINEAR, linear_cfg, task_prepared


@pytest.mark.parametrize("task, k, w", [("multiclass", 3, (0.7, 1.8, 1.0)), ("regression", 1, (1.0,))])
def test_gradient_and_hessian_match_finite_differences(task, k, w):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3_000, 3))
    y = rng.integers(0, k, len(X)).astype(float) if task == "multiclass" else rng.normal(size=len(X))
    size = (X.shape[1] + 1) * k
    params = rng.normal(size=size) * 0.5

    def unpack(sums):
        return sums[:size], sums[size:-2].reshape(size, size), sums[-2]

    grad, hess, _ = unpack(shard_sums_task(task, X, y, w, params, hessian=True))
    eps = 1e-6
    for j in range(size):
        step = np.zeros(size)
        step[j] = eps
        plus, minus = (unpack(shard_sums_task(task, X, y, w, params + s, hessian=True)) for s in (step, -step))
        assert grad[j] == pytest.approx((plus[2] - minus[2]) / (2 * eps), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(hess[:, j], (plus[0] - minus[0]) / (2 * eps), rtol=1e-5, atol=1e-4)
    # float32 arithmetic (the first-order optimizers) agrees to float32 precision
    g32 = shard_sums_task(task, X.astype(np.float32), y, w, params, dtype=np.float32)
    np.testing.assert_allclose(g32[:size], grad, rtol=1e-4, atol=1e-2)


@pytest.fixture(scope="module")
def multiclass(ray_session):
    return task_prepared("multiclass")


@pytest.fixture(scope="module")
def regression(ray_session):
    return task_prepared("regression")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The uninterrupted 2-worker run per (task, optimizer), trained once per module."""
    runs: dict[tuple[str, str], object] = {}

    def run(prepared, task: str, optimizer: str, **logreg):
        if (task, optimizer) not in runs:
            cfg = linear_cfg(tmp_path_factory.mktemp(f"w2-{task}-{optimizer}"), optimizer=optimizer, **logreg)
            runs[task, optimizer] = train_model(cfg, "logreg", workers=2, prepared=prepared)
        return runs[task, optimizer]

    return run


def _xy(ds) -> tuple[np.ndarray, np.ndarray]:
    batch = ds.take_batch(10**7, batch_format="numpy")
    return np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["newton", "lbfgs"])
def test_softmax_matches_sklearn_and_is_the_same_on_one_or_two_workers(multiclass, two_workers, tmp_path, optimizer):
    """Unpenalised: the maximum-likelihood softmax fit, which scikit-learn's multinomial lbfgs finds too."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    one = train_model(linear_cfg(tmp_path / "w0", optimizer=optimizer, epochs=100), "logreg", workers=0,
                      prepared=multiclass)  # fmt: skip
    two = two_workers(multiclass, "multiclass", optimizer, epochs=100)
    assert len(two.worker_nodes) == 2 and one.model.weights.shape == (3, 3)
    np.testing.assert_allclose(one.model.weights, two.model.weights, atol=1e-6, rtol=0)
    np.testing.assert_allclose(one.model.bias, two.model.bias, atol=1e-6, rtol=0)
    X, y = _xy(multiclass.train)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=2000).fit(X, y)
    ours, theirs = log_loss(y, one.model.task_output(X)), log_loss(y, sk.predict_proba(X))
    assert ours <= theirs * 1.001, (ours, theirs)
    # the scores are probabilities over the classes; metrics are the task's
    assert np.allclose(one.model.task_output(X[:10]).sum(axis=1), 1.0)
    assert {"log_loss", "accuracy", "macro_f1", "auc_0", "auc_2", "roc_auc"} <= set(one.metrics)


@pytest.mark.slow
def test_squared_error_is_the_least_squares_fit_on_one_or_two_workers(regression, tmp_path):
    one, two = (train_model(linear_cfg(tmp_path / f"w{n}", optimizer="newton"), "logreg", workers=n,
                            prepared=regression) for n in (0, 2))  # fmt: skip
    X, y = _xy(regression.train)
    exact = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y, rcond=None)[0]
    for run in (one, two):
        np.testing.assert_allclose(np.ravel(run.model.weights), exact[:-1], atol=1e-6, rtol=0)
        assert float(np.ravel(run.model.bias)[0]) == pytest.approx(exact[-1], abs=1e-6)
    assert one.metrics["rmse"] == pytest.approx(0.5, rel=0.05)  # the noise floor the data was drawn with
    assert len(one.history) <= 3  # a quadratic: one Newton step


# A real kill and resume per task: softmax by L-BFGS (its memory pairs in the checkpoint) and
# squared error by minibatch Adam (its moments, step and seeded batch order).
@pytest.mark.slow
@pytest.mark.parametrize("task, optimizer, logreg", [("multiclass", "lbfgs", {"epochs": 100}),
                                                     ("regression", "adam", {"learning_rate": 0.05, "batch_size": 2048,
                                                                             "epochs": 10})])  # fmt: skip
def test_each_task_resumes_after_a_worker_is_killed(request, two_workers, tmp_path, task, optimizer, logreg):
    prepared = request.getfixturevalue(task)
    marker = tmp_path / "killed"
    cfg = linear_cfg(tmp_path, optimizer=optimizer, **logreg)
    cfg.training.checkpoint_every = 2
    run = train_model(cfg, "logreg", workers=2, prepared=prepared,
                      fault={"fail_at_epoch": 5, "fail_marker": str(marker)})  # fmt: skip
    uninterrupted = two_workers(prepared, task, optimizer, **logreg)
    assert marker.exists(), "the fault hook did not fire"
    assert 0 < run.resumed_from <= 5 and run.resumed_from % 2 == 0  # from a checkpoint, not from scratch
    assert [h["epoch"] for h in run.history] == list(range(1, len(uninterrupted.history) + 1))
    np.testing.assert_allclose(run.model.weights, uninterrupted.model.weights, atol=1e-9, rtol=0)
    np.testing.assert_allclose(run.model.bias, uninterrupted.model.bias, atol=1e-9, rtol=0)
    metric = "log_loss" if task == "multiclass" else "rmse"
    assert run.metrics[metric] == pytest.approx(uninterrupted.metrics[metric], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_xgboost_trains_each_task(request, tmp_path, task):
    prepared = request.getfixturevalue(task)
    cfg = linear_cfg(tmp_path)
    cfg.training.xgboost.num_boost_round = 20
    run = train_model(cfg, "xgboost", prepared=prepared)
    X, _ = _xy(prepared.test)
    scores = run.model.task_output(X[:5])
    if task == "multiclass":
        assert scores.shape == (5, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
        assert run.metrics["accuracy"] > 0.5
    else:
        assert scores.shape == (5,) and run.metrics["r2"] > 0.8


def _infer(tmp_path, frame: pd.DataFrame, label: str, **kw):
    from ray_pipeline.data.infer import infer_config

    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return infer_config(str(path), label, out=str(tmp_path / "p.yaml"), **kw)


def test_init_leaves_out_excluded_columns_and_names_a_bad_one(tmp_path):
    from ray_pipeline.errors import UserError

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "leak": rng.normal(size=300), "y": rng.integers(0, 2, 300)})
    inference = _infer(tmp_path, frame, "y", exclude=["leak"])
    assert "leak" not in inference.config.data.schema_.features and "x" in inference.config.data.schema_.features
    assert next(c for c in inference.columns if c.name == "leak").why == "excluded by --exclude"
    with pytest.raises(UserError, match="nope"):
        _infer(tmp_path, frame, "y", exclude=["nope"])
    with pytest.raises(UserError, match="--label"):
        _infer(tmp_path, frame, "y", exclude=["y"])


def test_init_infers_the_task_from_the_label(tmp_path):
    from ray_pipeline.errors import UserError

    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"x": rng.normal(size=n), "grade": rng.integers(1, 6, n), "price": rng.lognormal(10, 1, n),
                          "temp": rng.normal(20, 5, n), "city": rng.choice(["a", "b", "c"], n),
                          "word": [f"w{i}" for i in range(n)]})  # fmt: skip
    label = _infer(tmp_path, frame, "grade").config.data.schema_.label_mapping
    assert (label.task, label.classes) == ("multiclass", [1, 2, 3, 4, 5])  # few whole numbers
    label = _infer(tmp_path, frame, "price").config.data.schema_.label_mapping
    assert (label.task, label.transform) == ("regression", "auto")  # skewed, never negative: raw or log1p
    label = _infer(tmp_path, frame, "temp").config.data.schema_.label_mapping
    assert (label.task, label.transform) == ("regression", "none")  # symmetric, can be negative
    inference = _infer(tmp_path, frame, "city")
    assert inference.config.data.schema_.label_mapping.classes == ["a", "b", "c"]
    assert "multiclass: 3 classes" in inference.columns[0].why and "%" in inference.columns[0].why
    label = _infer(tmp_path, frame, "grade", task="regression").config.data.schema_.label_mapping
    assert label.task == "regression"  # --task overrides
    with pytest.raises(UserError, match="more than 50 classes"):
        _infer(tmp_path, frame, "word")
    with pytest.raises(UserError, match="not numeric"):
        _infer(tmp_path, frame, "city", task="regression")


def test_a_promotion_cannot_change_the_task_or_the_classes():
    from ray_pipeline.config import GateRule
    from ray_pipeline.registry.gates import gate_report
    from ray_pipeline.registry.versions import ModelVersion

    def version(n: int, label: dict, metrics: dict) -> ModelVersion:
        return ModelVersion(name="m", version=n, created_at="", kind="logreg", path="", manifest_sha256="",
                            metrics=metrics, params={}, signature={"task": label.get("task", "binary"), "label": label},
                            lineage={})  # fmt: skip

    gates = {"log_loss": GateRule(min_improvement=0.0), "roc_auc": GateRule(max_regression=0.01)}
    binary = version(1, {"column": "y"}, {"log_loss": 0.5, "roc_auc": 0.8})
    multi = version(2, {"column": "y", "task": "multiclass", "classes": ["a", "b"]}, {"log_loss": 0.1, "roc_auc": 0.99})
    ok, report = gate_report(multi, binary, gates)
    assert not ok and "a promotion cannot change the task" in report
    other = version(3, {"column": "y", "task": "multiclass", "classes": ["a", "c"]}, {"log_loss": 0.05, "roc_auc": 1})
    ok, report = gate_report(other, multi, gates)
    assert not ok and "cannot change the class list" in report
    reg_old = version(4, {"column": "y", "task": "regression"}, {"rmse": 2.0, "mae": 1.5, "r2": 0.70})
    reg_new = version(5, {"column": "y", "task": "regression"}, {"rmse": 1.8, "mae": 1.4, "r2": 0.75})
    ok, report = gate_report(reg_new, reg_old, gates)
    assert ok and "log_loss -> rmse" in report and "roc_auc -> r2" in report
    ok, _ = gate_report(reg_old, reg_new, gates)
    assert not ok  # a larger error does not pass


def test_holdout_gates_compare_each_task_by_paired_bootstrap():
    from ray_pipeline.config import GateRule, GateTestConfig
    from ray_pipeline.registry.significance import paired_gates

    rng = np.random.default_rng(2)
    gates = {"log_loss": GateRule(min_improvement=0.0), "roc_auc": GateRule(max_regression=0.01)}
    y = rng.normal(size=2000)
    better, worse = y + rng.normal(0, 0.3, 2000), y + rng.normal(0, 0.6, 2000)
    checks = paired_gates(y, better, worse, gates, GateTestConfig(resamples=200), task="regression")
    assert [c.metric for c in checks] == ["rmse", "r2"] and all(c.passed for c in checks)
    assert not paired_gates(y, worse, better, gates, GateTestConfig(resamples=200), task="regression")[0].passed
    classes = rng.integers(0, 3, 2000)
    sharp = np.full((2000, 3), 0.1)
    sharp[np.arange(2000), classes] = 0.8
    flat = np.full((2000, 3), 1 / 3)
    checks = paired_gates(classes, sharp, flat, gates, GateTestConfig(resamples=200), task="multiclass")
    assert all(c.passed for c in checks) and checks[0].candidate == pytest.approx(-np.log(0.8))
    assert not any(c.passed for c in paired_gates(classes, flat, flat, gates, GateTestConfig(resamples=200),
                                                  task="multiclass")[:1])  # a tie never passes  # fmt: skip


def test_live_quality_and_the_error_ratio_follow_the_task():
    from datetime import datetime, timezone

    from ray_pipeline.config import MonitoringConfig
    from ray_pipeline.monitor.collect import WindowData
    from ray_pipeline.monitor.window import window_rows

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    data = WindowData(t0, t0)
    # multiclass: the log holds the served class; 3 of 4 right
    data.labeled["v1/champion"] = {"y": [0.0, 1.0, 2.0, 2.0], "p": [0.0, 1.0, 2.0, 1.0]}
    # regression: served values against labels in the user's units
    data.labeled["v2/champion"] = {"y": [10.0, 20.0, 30.0], "p": [12.0, 18.0, 30.0]}
    tested = {"1": {"task": "multiclass", "accuracy": 0.9}, "2": {"task": "regression", "rmse": 1.0}}
    got = {(r["metric"], r["feature"]): r["value"] for r in window_rows(data, {}, tested, MonitoringConfig())}
    assert got[("accuracy", "v1/champion")] == 0.75
    assert got[("error_ratio", "v1/champion")] == pytest.approx(0.25 / 0.1)  # live error rate over the test's
    rmse = np.sqrt(8 / 3)
    assert got[("rmse", "v2/champion")] == pytest.approx(rmse) and got[("mae", "v2/champion")] == pytest.approx(4 / 3)
    assert got[("error_ratio", "v2/champion")] == pytest.approx(rmse)
    assert ("log_loss", "v1/champion") not in got and ("log_loss_ratio", "v2/champion") not in got


@pytest.mark.slow
def test_xgboost_class_weights_shift_the_probabilities_towards_the_weighted_class(multiclass, tmp_path):
    shares = []
    for weight in (None, {2: 5.0}):
        cfg = linear_cfg(tmp_path / str(bool(weight)))
        cfg.training.xgboost.num_boost_round, cfg.training.xgboost.class_weight = 20, weight
        run = train_model(cfg, "xgboost", prepared=multiclass)
        X, _ = _xy(multiclass.test)
        shares.append(float(run.model.task_output(X)[:, 2].mean()))
    assert shares[1] > shares[0] + 0.1, shares  # five times the weight on class 2's rows


@pytest.mark.slow
def test_a_linear_regression_on_few_rows_chooses_its_penalty_and_stays_in_range(ray_session, tmp_path):
    """300 rows, 120 inputs of which 4 matter: the least-squares fit chases noise and a far-out input
    sends it anywhere. The penalty is chosen on validation and the output stays near the target's range."""
    import ray.data

    from ray_pipeline.train.data import Prepared

    rng = np.random.default_rng(5)
    d = 120

    def split(n: int):
        X = rng.normal(size=(n, d)).astype(np.float32)
        y = (X[:, :4] @ TRUE_LINEAR + 3.0 + rng.normal(0, 0.5, n)).astype(np.float32)
        return ray.data.from_items([{"x": X[i], "y": y[i]} for i in range(n)]).materialize(), X, y

    (train, _, y_train), (valid, _, _), (test, X_test, _) = split(300), split(100), split(200)
    base = task_prepared("regression", rows=10)
    spec = base.spec.model_copy(update={"numeric": [base.spec.numeric[0].model_copy(update={"name": f"x{i}"})
                                                    for i in range(d)]})  # fmt: skip
    prepared = Prepared(spec, train, valid, test, {"by": "synthetic"}, {"train": 300, "valid": 100, "test": 200})
    cfg = linear_cfg(tmp_path, optimizer="newton", l2=0.0)
    run = train_model(cfg, "logreg", workers=0, prepared=prepared)
    plain = train_model(cfg, "logreg", workers=2, prepared=prepared)  # on workers: the configured l2 (0)
    assert run.params["l2"] > 0 and plain.params["l2"] == 0.0
    assert run.metrics["rmse"] < plain.metrics["rmse"], (run.metrics, plain.metrics)
    lo, hi = run.model.output.bounds
    span = float(y_train.max() - y_train.min())
    assert lo == pytest.approx(y_train.min() - 0.5 * span, rel=1e-5) and hi == pytest.approx(y_train.max() + 0.5 * span, rel=1e-5)
    far = X_test[:5] * 1e4  # inputs far outside anything seen: bounded, not exploded
    assert np.all((run.model.task_output(far) >= lo) & (run.model.task_output(far) <= hi))
    assert run.params["output"] == {"smearing": 1.0, "bounds": [lo, hi]}


def test_smearing_makes_a_log_target_estimate_the_mean():
    from ray_pipeline.train.models import LogisticModel, OutputMap

    # log(1 + y) = 2 + e, e ~ N(0, 0.8): exp of the log prediction is the median of 1 + y; the mean is
    # exp(2 + 0.8^2 / 2), which Duan's factor (the mean of exp(e)) recovers
    rng = np.random.default_rng(0)
    e = rng.normal(0, 0.8, 200_000)
    y = np.expm1(2 + e)
    model = LogisticModel(np.zeros(1), 2.0, ["x"], task="regression", transform="log1p")
    median = model.task_output(np.zeros((1, 1)))[0]
    model.output = OutputMap(float(np.mean(np.exp(e))), None)
    mean = model.task_output(np.zeros((1, 1)))[0]
    assert median == pytest.approx(np.median(y), rel=0.01) and mean == pytest.approx(np.mean(y), rel=0.01)
    assert OutputMap.from_json(model.output.to_json()) == model.output
