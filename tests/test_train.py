"""Training: gradients, determinism across worker counts, correctness against known truth and
scikit-learn, resume after a killed worker, XGBoost, evaluation outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ray_pipeline.config import PipelineConfig, parse_config
from ray_pipeline.train import evaluate
from ray_pipeline.train.objective import shard_sums
from ray_pipeline.train.rundir import PLOTS_DIR, model_dir, read_run
from ray_pipeline.train.runner import placement_of, summary, train_model

from .helpers import TRUE_BIAS, TRUE_COEF, linear_cfg, linear_prepared


def test_gradient_and_hessian_match_finite_differences():
    rng = np.random.default_rng(0)
    X, params = rng.normal(size=(40_000, 4)), rng.normal(size=5)  # more rows than one chunk
    y = (rng.random(len(X)) < 0.4).astype(float)
    w = (0.7, 1.8)  # class weights
    d = X.shape[1]

    def unpack(sums):
        return sums[: d + 1], sums[d + 1 : -2].reshape(d + 1, d + 1), sums[-2]

    grad, hess, loss = unpack(shard_sums(X, y, w, params, hessian=True))
    eps = 1e-6
    for j in range(d + 1):
        step = np.zeros(d + 1)
        step[j] = eps
        plus, minus = (unpack(shard_sums(X, y, w, params + s, hessian=True)) for s in (step, -step))
        assert grad[j] == pytest.approx((plus[2] - minus[2]) / (2 * eps), rel=1e-5)
        np.testing.assert_allclose(hess[:, j], (plus[0] - minus[0]) / (2 * eps), rtol=1e-5, atol=1e-3)
    # float32 rows (as on Train workers) give the same sums to float32 precision.
    g32 = shard_sums(X.astype(np.float32), y, w, params)
    np.testing.assert_allclose(g32[: d + 1], grad, rtol=1e-4, atol=1e-2)
    # So does float32 arithmetic (the first-order optimizers), Hessian and loss included.
    grad32, hess32, loss32 = unpack(shard_sums(X.astype(np.float32), y.astype(np.float32), w, params, True, dtype=np.float32))
    np.testing.assert_allclose(grad32, grad, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(hess32, hess, rtol=1e-4, atol=1e-2)
    assert loss32 == pytest.approx(loss, rel=1e-6)
    # Extreme logits stay finite.
    assert np.isfinite(shard_sums(X * 1e4, y, w, params)[-2])


@pytest.fixture(scope="module")
def linear(ray_session):
    return linear_prepared()


@pytest.mark.slow
def test_recovers_linear_ground_truth_in_process(linear, tmp_path):
    cfg = linear_cfg(tmp_path, epochs=400, learning_rate=2.0, early_stopping_patience=400)
    run = train_model(cfg, "logreg", prepared=linear)  # a small table: in-process by default
    np.testing.assert_allclose(run.model.weights, TRUE_COEF, atol=0.12)
    assert run.model.bias == pytest.approx(TRUE_BIAS, abs=0.1)
    assert run.metrics["log_loss"] < 0.5
    for name in ("loss.png", "roc.png", "calibration.png"):
        assert (Path(run.run_dir) / PLOTS_DIR / name).stat().st_size > 1000
    assert (model_dir(run.run_dir) / "model.json").exists()
    written = read_run(run.run_dir)
    assert (written.kind, written.metrics, written.spec) == ("logreg", run.metrics, run.spec)
    assert written.params["workers"] == 0 and len(written.history) == len(run.history)
    assert "in-process" in summary(run) and "Ray Train's start alone costs" in summary(run)
    placed = written.lineage["placement"]  # why, kept with the run
    assert placed["workers"] == 0 and "Ray Train's start" in placed["why"] and placed["estimate_s"] >= 0
    cfg.training.in_process_max_rows = linear.rows["train"] - 1  # one row more than in-process allows
    assert placement_of(cfg, "logreg", linear).workers == cfg.training.workers == 2


@pytest.mark.slow
def test_xgboost_trains_in_process(linear, tmp_path):
    cfg = linear_cfg(tmp_path)
    cfg.training.xgboost.num_boost_round = 30
    run = train_model(cfg, "xgboost", prepared=linear)
    assert run.params["workers"] == 0 and 0 < len(run.history) <= 30
    assert run.params["nthread"] >= 1 and run.params["nthread"] == read_run(run.run_dir).lineage["placement"]["threads"]
    assert run.metrics["log_loss"] < 0.6 and (model_dir(run.run_dir) / "model.ubj").exists()


@pytest.mark.slow
def test_a_warm_start_keeps_the_champions_trees_and_weights_and_trains_on(linear, tmp_path):
    cfg = linear_cfg(tmp_path)
    cfg.training.xgboost.num_boost_round = 20
    champion = train_model(cfg, "xgboost", prepared=linear)
    kept = int(champion.model.booster.attr("best_iteration") or 19) + 1
    warm = train_model(cfg, "xgboost", prepared=linear, init=champion.model)
    booster = warm.model.booster
    assert booster.num_boosted_rounds() > kept and read_run(warm.run_dir).lineage["warm_start"] is True
    # its first trees are the champion's (those it scored with), boosting went on after them
    X = np.stack([b["x"] for b in linear.test.take(200)])
    import xgboost

    first = booster.predict(xgboost.DMatrix(X.astype(np.float32)), iteration_range=(0, kept))
    np.testing.assert_allclose(first, champion.model.task_output(X), rtol=1e-5)
    assert "init_model_ubj" not in warm.params
    # the linear model from converged weights: Newton has nothing left to do (a fresh fit iterates)
    cfg.training.logreg.optimizer = "newton"
    fresh = train_model(cfg, "logreg", prepared=linear)
    again = train_model(cfg, "logreg", prepared=linear, init=fresh.model)
    assert len(again.history) < len(fresh.history)
    np.testing.assert_allclose(again.model.weights, fresh.model.weights, atol=1e-4)
    with pytest.raises(Exception, match="warm start of xgboost needs a xgboost model"):
        train_model(cfg, "xgboost", prepared=linear, init=fresh.model)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_minibatch_optimizers_converge(linear, tmp_path, optimizer):
    cfg = linear_cfg(tmp_path, optimizer=optimizer, learning_rate=0.05, epochs=15, batch_size=512, lr_schedule="cosine")
    run = train_model(cfg, "logreg", workers=0, prepared=linear)
    np.testing.assert_allclose(run.model.weights, TRUE_COEF, atol=0.2)


FULL_BATCH = ["gd", "newton", "lbfgs"]


def _optimizer_cfg(tmp_path, optimizer: str) -> PipelineConfig:
    minibatch = {"learning_rate": 0.05, "batch_size": 2048} if optimizer in ("sgd", "adam") else {}
    return linear_cfg(tmp_path, optimizer=optimizer, **minibatch)


@pytest.fixture(scope="module")
def two_worker_run(linear, tmp_path_factory):
    """The uninterrupted 2-worker run of each optimizer, trained once per module."""
    runs: dict[str, object] = {}

    def run(optimizer: str):
        if optimizer not in runs:
            cfg = _optimizer_cfg(tmp_path_factory.mktemp(f"w2-{optimizer}"), optimizer)
            runs[optimizer] = train_model(cfg, "logreg", workers=2, prepared=linear)
        return runs[optimizer]

    return run


# One shard in-process (the same loop and allreduce with one rank, as one Ray Train worker runs
# them), 2 and 4 Ray Train workers. The reduction order is the collective's, not the optimizer's:
# the 4-worker run is checked once, with gd; Newton and L-BFGS compare one shard with two.
@pytest.mark.slow
@pytest.mark.parametrize("optimizer, counts", [("gd", (0, 4)), ("newton", (0,)), ("lbfgs", (0,))])
def test_full_batch_is_deterministic_across_worker_counts(linear, two_worker_run, tmp_path, optimizer, counts):
    two = two_worker_run(optimizer)
    assert len(two.worker_nodes) == 2
    for n in counts:
        other = train_model(linear_cfg(tmp_path / f"w{n}", optimizer=optimizer), "logreg", workers=n, prepared=linear)
        assert len(other.worker_nodes) == max(n, 1) and len(other.history) == len(two.history)  # in-process: 1
        np.testing.assert_allclose(other.model.weights, two.model.weights, atol=1e-6, rtol=0)
        assert other.model.bias == pytest.approx(two.model.bias, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["newton", "lbfgs"])
def test_second_order_converges_to_the_maximum_likelihood_in_few_passes(linear, two_worker_run, optimizer):
    """Unpenalised here, so the answer is the maximum-likelihood fit scikit-learn finds too."""
    from sklearn.linear_model import LogisticRegression

    run = two_worker_run(optimizer)
    assert len(run.history) <= 12  # full-batch gd needs hundreds of passes for this
    batch = linear.train.take_batch(10**7, batch_format="numpy")
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(np.asarray(batch["x"], np.float64), batch["y"])
    np.testing.assert_allclose(run.model.weights, sk.coef_[0], atol=1e-6, rtol=0)
    assert run.model.bias == pytest.approx(sk.intercept_[0], abs=1e-6)


def test_the_checkpointed_state_round_trips_every_field(tmp_path):
    """What every optimizer resumes from: parameters, momentum, Adam's moments and step, L-BFGS's
    pairs, early stopping's counters and the history, all as saved."""
    from dataclasses import fields

    from ray_pipeline.train.logreg import _State

    rng = np.random.default_rng(0)
    state = _State(epoch=7, params=rng.normal(size=4), velocity=rng.normal(size=4), m=rng.normal(size=4),
                   v=rng.random(4), step=21, best_loss=0.31, best_params=rng.normal(size=4), best_epoch=5, stale=2,
                   converged=True, history=[{"epoch": 1, "train_loss": 0.7}], mem_s=rng.normal(size=(3, 4)),
                   mem_y=rng.normal(size=(3, 4)))  # fmt: skip
    state.save(str(tmp_path))
    loaded = _State.load(str(tmp_path))
    for f in fields(_State):
        if f.name == "resumed_from":
            assert loaded.resumed_from == 7  # the epoch the restarted group goes on from
        elif isinstance(getattr(state, f.name), np.ndarray):
            np.testing.assert_array_equal(getattr(loaded, f.name), getattr(state, f.name), err_msg=f.name)
        else:
            assert getattr(loaded, f.name) == getattr(state, f.name), f.name


# A real kill and resume once per family of optimizer (the state's every field round-trips above):
# second order here (L-BFGS with its memory pairs; Newton takes the same path); first order with
# minibatches (Adam: a seeded order per epoch, moments and step; sgd and gd take the same path) in
# tests/test_tasks.py, where squared error resumes under Adam - the same state, one run fewer.
@pytest.mark.slow
@pytest.mark.parametrize("optimizer, checkpoint_every, fail_at", [("lbfgs", 2, 6)])
def test_resumes_after_a_worker_is_killed(linear, two_worker_run, tmp_path, optimizer, checkpoint_every, fail_at):
    marker = tmp_path / "killed"
    fault = {"fail_at_epoch": fail_at, "fail_marker": str(marker)}
    cfg = _optimizer_cfg(tmp_path, optimizer)
    cfg.training.checkpoint_every = checkpoint_every
    run = train_model(cfg, "logreg", workers=2, prepared=linear, fault=fault)
    uninterrupted = two_worker_run(optimizer)
    assert marker.exists(), "the fault hook did not fire"
    # Resumed from a checkpoint taken before the kill, not from scratch: the controller registers
    # checkpoints asynchronously, so the newest one it knew of may be an interval or two older.
    assert 0 < run.resumed_from <= fail_at and run.resumed_from % checkpoint_every == 0
    assert [h["epoch"] for h in run.history] == list(range(1, len(uninterrupted.history) + 1))  # the counter continued
    np.testing.assert_allclose(run.model.weights, uninterrupted.model.weights, atol=1e-9, rtol=0)
    assert run.metrics["log_loss"] == pytest.approx(uninterrupted.metrics["log_loss"], abs=1e-9)


def _parent(pid: int) -> int:
    """The parent pid of `pid` (0 when it ended): the field after the command name in /proc/PID/stat."""
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _processes(prefix: str) -> list[int]:
    """Pids of this test session's processes whose command line starts with `prefix`.

    Only descendants of this process (its embedded Ray's raylet starts the workers): another Ray
    on the machine - a user's demo, or a second pytest worker - runs processes of the same names,
    and killing those is another run's failure (seen under pytest-xdist)."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        try:
            if not (entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(prefix.encode())):
                continue
        except OSError:  # the process ended while we looked
            continue
        pid = parent = int(entry.name)
        while parent > 1 and parent != me:
            parent = _parent(parent)
        if parent == me:
            pids.append(pid)
    return pids


@pytest.mark.slow
def test_a_controller_that_dies_leaves_no_placement_group(linear, tmp_path):
    """Ray Train's per-run cleaner actor is gone (train/trainer.py): when the controller dies
    mid-run, the driver removes the workers' placement group itself."""
    import os
    import signal
    import threading
    import time

    import ray
    from ray.util.placement_group import placement_group_table

    before = set(placement_group_table())
    killed: list[int] = []

    def kill_controller_once_workers_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            controllers = _processes("ray::TrainController")
            if controllers and len(_processes("ray::RayTrainWorker")) >= 2:
                time.sleep(1.0)  # the training function is running on the workers
                for pid in controllers:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(controllers)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_controller_once_workers_run, daemon=True)
    killer.start()
    cfg = _optimizer_cfg(tmp_path, "gd")
    with pytest.raises(ray.exceptions.RayActorError):
        train_model(cfg, "logreg", workers=2, prepared=linear, fault={"epoch_pause_s": 0.2})  # ~60 s unkilled
    killer.join()
    assert killed, "the controller was never seen"
    job = ray.get_runtime_context().get_job_id()
    left = {k: v["state"] for k, v in placement_group_table().items() if k not in before and k.endswith(job)}
    assert left and set(left.values()) == {"REMOVED"}, left


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, rel", [("gd", 0.005), ("newton", 0.001), ("lbfgs", 0.001)])
def test_close_to_sklearn_on_demo_features(ray_session, tmp_path, demo_config_dict, optimizer, rel):
    """Same features, same L2 (C = 1 / (l2 * n)), same split: test log-loss within 0.5% for gradient
    descent's 300 epochs, within 0.1% for the second-order optimizers."""
    import ray.data
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.synthetic.transactions import generate_chunk
    from ray_pipeline.train.data import prepare

    frame = generate_chunk(SyntheticConfig(rows=30_000, chunk_rows=30_000, seed=4), 0).to_pandas()
    demo_config_dict["training"]["run_root"] = str(tmp_path / "runs")
    demo_config_dict["features"]["views"] = {}
    demo_config_dict["features"]["numeric"] = {
        k: v
        for k, v in demo_config_dict["features"]["numeric"].items()
        if k in demo_config_dict["data"]["schema"]["features"]
    }
    demo_config_dict["training"]["logreg"]["optimizer"] = optimizer
    cfg = parse_config(demo_config_dict)
    prepared = prepare(ray.data.from_pandas(frame).repartition(4), cfg)
    run = train_model(cfg, "logreg", workers=0, prepared=prepared)

    def arrays(ds):
        batch = ds.take_batch(10**7, batch_format="numpy")
        return np.asarray(batch["x"], dtype=np.float64), np.asarray(batch["y"])

    X, y = arrays(prepared.train)
    Xt, yt = arrays(prepared.test)
    sk = LogisticRegression(C=1 / (cfg.training.logreg.l2 * len(y)), max_iter=5000, tol=1e-10).fit(X, y)
    reference = log_loss(yt, sk.predict_proba(Xt)[:, 1])
    assert run.metrics["log_loss"] == pytest.approx(reference, rel=rel)
    assert run.metrics["bayes_log_loss"] < run.metrics["log_loss"]


@pytest.mark.slow
def test_xgboost_on_two_workers_beats_linear_on_interactions(ray_session, tmp_path, demo_config_dict):
    import ray.data
    import xgboost
    from sklearn.metrics import roc_auc_score

    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.synthetic.transactions import generate_chunk
    from ray_pipeline.train.data import prepare

    frame = generate_chunk(SyntheticConfig(rows=40_000, chunk_rows=40_000, seed=6), 0).to_pandas()
    demo_config_dict["training"]["run_root"] = str(tmp_path / "runs")
    demo_config_dict["training"]["xgboost"] = {"num_boost_round": 60, "early_stopping_rounds": 10,
                                               "params": {"max_depth": 4, "eta": 0.2}}  # fmt: skip
    demo_config_dict["features"]["views"] = {}
    demo_config_dict["features"]["numeric"] = {}
    cfg = parse_config(demo_config_dict)
    prepared = prepare(ray.data.from_pandas(frame).repartition(4), cfg)
    xgb = train_model(cfg, "xgboost", workers=2, prepared=prepared)
    linear = train_model(cfg, "logreg", workers=0, prepared=prepared)
    assert xgb.metrics["log_loss"] < linear.metrics["log_loss"]
    assert (model_dir(xgb.run_dir) / "model.ubj").exists() and len(xgb.history) > 5
    # Ray Train's fixed cost in parts around rank 0's loop, kept with the run and in its summary
    parts = read_run(xgb.run_dir).lineage["fit_parts_s"]
    assert all(v >= 0 for v in parts.values()) and parts["start_s"] > 0, parts
    assert sum(parts.values()) <= xgb.timings["fit_s"] + 0.5, (parts, xgb.timings)
    assert "Ray Train start" in summary(xgb) and "Ray Train start" not in summary(linear)

    # Same parameters in one process on the same rows: the distributed model is as good.
    train = prepared.train.take_batch(10**7, batch_format="numpy")
    valid = prepared.valid.take_batch(10**7, batch_format="numpy")
    test = prepared.test.take_batch(10**7, batch_format="numpy")
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "eval_metric": "logloss",
        "max_depth": 4,
        "eta": 0.2,
    }
    single = xgboost.train(
        params, xgboost.DMatrix(train["x"], label=train["y"]), 60,
        evals=[(xgboost.DMatrix(valid["x"], label=valid["y"]), "valid")], early_stopping_rounds=10, verbose_eval=False,
    )  # fmt: skip
    auc_single = roc_auc_score(
        test["y"], single.predict(xgboost.DMatrix(test["x"]), iteration_range=(0, single.best_iteration + 1))
    )
    assert xgb.metrics["roc_auc"] == pytest.approx(auc_single, abs=0.01)


def test_metrics_on_known_inputs():
    y = np.array([0, 0, 1, 1], dtype=float)
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = evaluate.metrics(y, p, p_true=np.array([0.2, 0.2, 0.8, 0.8]))
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["bayes_log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.8, 0.8, 0.8])))
    assert evaluate.calibration_error(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(0.0)
    assert evaluate.calibration_error(np.array([1.0, 1.0]), np.array([0.25, 0.25])) == pytest.approx(0.75)


def test_a_refit_repeats_the_recipe_on_every_row_of_the_split(ray_session, tmp_path):
    """`train/refit.py`: XGBoost again for the rounds early stopping kept, on train + valid + test,
    its metrics the held-out run's; the linear model with the held-out run's penalty."""
    from ray_pipeline.train.refit import every_row, refit, settings
    from ray_pipeline.train.rundir import read_run

    prepared = linear_prepared(rows=3000)
    cfg = linear_cfg(tmp_path, optimizer="newton", l2=0.01)
    cfg.training.xgboost.num_boost_round, cfg.training.xgboost.early_stopping_rounds = 400, 5
    held = train_model(cfg, "xgboost", workers=0, prepared=prepared)
    best = int(held.model.booster.attr("best_iteration"))
    assert best + 1 < 400  # early stopping chose
    recipe = settings(cfg, read_run(held.run_dir), held.model)
    assert recipe.training.xgboost.num_boost_round == best + 1
    again = refit(cfg, prepared, str(held.run_dir))
    assert again.model.booster.num_boosted_rounds() == best + 1
    assert again.metrics == held.metrics and read_run(again.run_dir).lineage["refit_of"] == str(held.run_dir)
    assert read_run(again.run_dir).rows["train"] == sum(prepared.rows.values())
    assert every_row(prepared).train.count() == sum(prepared.rows.values())
    linear = train_model(cfg, "logreg", workers=0, prepared=prepared)
    assert settings(cfg, read_run(linear.run_dir), linear.model).training.logreg.l2 == 0.01
