"""Hyperparameter search on Ray Tune: `tune` on a user's table runs trials that are runs like any
other, starts from the untuned settings so it can only match or beat them on the validation
split, and registers the best trial with its search, through the gates."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app

from .helpers import ray_lines
from .tables import churn_table

pytestmark = pytest.mark.slow  # Ray Tune trials: `make test-fast` skips these

runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def churn(ray_session, tmp_path_factory) -> Path:
    """The churn table from CSV through `init` and `run` (a champion to beat), a small search set up."""
    tmp = tmp_path_factory.mktemp("search")
    csv = tmp / "churn.csv"
    churn_table().to_csv(csv, index=False)
    config = tmp / "pipeline.yaml"
    _invoke("init", "--data", str(csv), "--label", "Churn", "--positive", "Yes", "--out", str(config))
    body = yaml.safe_load(config.read_text())
    body.setdefault("training", {})["xgboost"] = {"num_boost_round": 60, "early_stopping_rounds": 10}
    body["training"]["search"] = {"algorithm": "random", "scheduler": "asha", "grace": 5, "seed": 3,
                                  "xgboost": {"max_depth": {"kind": "int", "low": 2, "high": 8},
                                              "eta": {"kind": "loguniform", "low": 0.02, "high": 0.3},
                                              "min_child_weight": {"kind": "loguniform", "low": 0.5, "high": 30}}}  # fmt: skip
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    _invoke("run", "--config", str(config), "--models", "logreg")
    return config


def test_tune_registers_the_best_trial_with_its_search_through_the_gates(churn):
    from ray_pipeline.config import load_config
    from ray_pipeline.registry.handoff import importance, open_registry
    from ray_pipeline.registry.runs import get_runs

    out = _invoke("tune", "--config", str(churn), "--model", "xgboost", "--trials", "5")
    cfg = load_config(churn)
    registry = open_registry(cfg)
    name = cfg.registry.model_name
    version = registry.get(name, max(v.version for v in registry.versions(name)))
    assert version.kind == "xgboost" and "search" in version.lineage
    stored = json.loads((registry.checkout(version) / "search.json").read_text())
    assert importance(registry, version)["rows"] > 0  # computed for the best trial at registration
    trials = stored["trials"]
    assert len(trials) == 5 and stored["algorithm"] == "random" and set(stored["space"]) == {"max_depth", "eta",
                                                                                               "min_child_weight"}
    # the untuned settings are the first trial, so the search can only match or beat them
    first = next(t for t in trials if t["params"] == {"max_depth": 6, "eta": 0.1, "min_child_weight": 1.0})
    finished = [t for t in trials if t["status"] == "finished"]
    best = min(finished, key=lambda t: t["valid_metric"])
    assert stored["best_params"] == best["params"] == version.lineage["search"]["params"]
    # ASHA never stops the untuned trial, so the search can only match or beat it on validation
    assert first["status"] == "finished" and best["valid_metric"] <= first["valid_metric"]
    # every finished trial is a run like any other, with its search in its lineage
    runs = {r.run_id: r for r in get_runs(registry, [Path(t["run_dir"]).name for t in finished])}
    assert len(runs) == len(finished)
    assert all(r.trigger == "search" for r in runs.values())
    # the best trial went through the same gates as every promotion
    assert "gates do not apply" in out or "PASS" in out or "FAIL" in out, out
    assert version.uri in out and f"best: {best['trial_id']}" in out


def test_a_search_space_the_model_does_not_take_is_refused(churn):
    body = yaml.safe_load(churn.read_text())
    body["training"]["search"]["logreg"] = {"learning_rte": {"kind": "uniform", "low": 0.1, "high": 1.0}}
    bad = churn.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump(body, sort_keys=False))
    result = runner.invoke(app, ["tune", "--config", str(bad), "--model", "logreg", "--trials", "2"])
    assert result.exit_code != 0 and "learning_rte" in result.output


def _finished_runs(run_root: Path, search_id: str) -> dict[str, str]:
    """Trial id -> run directory of every trial run of `search_id` written so far."""
    found = {}
    for lineage in run_root.glob("*/lineage.json"):
        search = json.loads(lineage.read_text()).get("search") or {}
        if search.get("id") == search_id:
            found[search["trial"]] = str(lineage.parent)
    return found


def test_a_killed_driver_resumes_the_search_keeping_its_finished_trials(churn, ray_session):
    """The driver is killed (SIGKILL) after some trials finished; `tune --resume` finishes the search
    with the trials Tune had recorded as finished kept, not run again."""
    import os
    import subprocess
    import sys
    import time

    from ray_pipeline.config import load_config

    body = yaml.safe_load(churn.read_text())
    body["training"]["search"].update(scheduler="fifo", max_concurrent=1)  # one trial at a time: a clean cut
    config = churn.parent / "resume.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    run_root = Path(load_config(config).training.run_root)
    cli = Path(sys.executable).parent / "ray-pipeline"
    proc = subprocess.Popen([str(cli), "tune", "--config", str(config), "--model", "xgboost", "--trials", "4",
                             "--address", ray_session.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "RAY_PIPELINE_PROGRESS": "0"})  # fmt: skip
    try:
        first = proc.stdout.readline()
        assert first.startswith("starting search-xgboost-"), first
        search_id = first.split()[1]
        deadline = time.monotonic() + 180
        while len(_finished_runs(run_root, search_id)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(2.5)  # one more save of the experiment's state (TUNE_GLOBAL_CHECKPOINT_S)
    finally:
        proc.kill()
        printed = first + proc.stdout.read()
        proc.wait()
    assert not ray_lines(printed), printed  # `tune`'s terminal: the search's own lines only
    before = _finished_runs(run_root, search_id)
    assert len(before) >= 2, "the driver was killed before two trials finished"

    out = _invoke("tune", "--config", str(config), "--model", "xgboost", "--resume", search_id,
                  "--address", ray_session.address)  # fmt: skip
    assert f"resuming {search_id}" in out and f"{search_id}: 4 trials" in out
    after = _finished_runs(run_root, search_id)
    kept = [t for t, d in before.items() if after.get(t) == d]
    assert kept, (before, after)  # finished before the kill, not run again
    assert len(after) == 4 or "stopped" in out


def test_run_search_searches_each_model_and_registers_its_best_trial(churn):
    from ray_pipeline.config import load_config
    from ray_pipeline.registry.handoff import open_registry

    body = yaml.safe_load(churn.read_text())
    body["training"]["search"].update(trials=3, scheduler="fifo")
    config = churn.parent / "run-search.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    out = _invoke("run", "--config", str(config), "--models", "logreg", "--search")
    assert "hyperparameter search on Ray Tune: logreg" in out and "3 trials of logreg" in out, out
    cfg = load_config(config)
    registry = open_registry(cfg)
    searched = [v for v in registry.versions(cfg.registry.model_name) if "search" in v.lineage and v.kind == "logreg"]
    # the best logreg trial is registered with its search, or said to repeat a registered model
    assert searched or "again (same model files): not registered" in out, out
    if searched:
        assert searched[-1].uri in out and set(searched[-1].lineage["search"]["params"]) == {"l2", "class_weight"}


def test_trials_on_ray_train_workers_report_every_epoch_and_a_killed_worker_resumes_its_trial(churn):
    """A table past in_process_max_rows: each trial is a Ray Train run on 2 workers whose epochs
    reach Tune through TuneReportCallback (ASHA sees them); a worker killed mid-trial restarts the
    trial's worker group from its last checkpoint, and the trial finishes."""
    from ray_pipeline.config import load_config
    from ray_pipeline.train.data import prepare_training_set
    from ray_pipeline.train.search import run_search

    cfg = load_config(churn)
    cfg.training.in_process_max_rows = 0
    cfg.training.workers = 2
    cfg.training.checkpoint_every = 2
    cfg.training.logreg.optimizer = "adam"  # epochs enough to kill one in
    cfg.training.logreg.epochs = 12
    cfg.training.logreg.early_stopping_patience = 100
    cfg.training.search.scheduler = "fifo"
    marker = churn.parent / "killed-trial-worker"
    prepared = prepare_training_set(cfg)
    result = run_search(cfg, "logreg", prepared, trials=2, fault={"fail_at_epoch": 5, "fail_marker": str(marker)})

    assert marker.exists(), "the fault hook did not fire"
    assert [t.status for t in result.trials] == ["finished", "finished"], [t.error for t in result.trials]
    resumed = [t for t in result.trials if t.resumed_from is not None]
    assert resumed and all(0 < t.resumed_from <= 5 and t.resumed_from % 2 == 0 for t in resumed)
    for trial in result.trials:
        assert len(trial.nodes) == 1  # both workers on this one node
        # every epoch reached Tune from the workers (the restarted group repeats a few)
        reported = [json.loads(line) for line in _result_lines(Path(result.path), trial.trial_id)]
        epochs = {r["step"] for r in reported if "epoch" in r}
        assert epochs == set(range(1, 13)), sorted(epochs)
        history = json.loads((Path(trial.run_dir) / "history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, 13))


def _result_lines(experiment: Path, trial_id: str) -> list[str]:
    """The lines of one trial's result.json in a Tune experiment directory."""
    (found,) = [p for p in experiment.glob("*/result.json") if trial_id in p.parent.name]
    return found.read_text().splitlines()


def test_a_retrain_keeps_the_champions_searched_parameters(churn):
    """feedback.hyperparameters: champion (the default) retrains the champion's kind with the
    parameters its search found, and every other kind with the config's."""
    from ray_pipeline.config import load_config
    from ray_pipeline.workflow.retrain import retrain_config

    cfg = load_config(churn)
    lineage = {"search": {"id": "search-xgboost-x", "trial": "t1", "params": {"max_depth": 3, "eta": 0.05}}}
    tuned = retrain_config(cfg, "xgboost", "xgboost", lineage)
    assert tuned.training.xgboost.params["max_depth"] == 3 and tuned.training.xgboost.params["eta"] == 0.05
    assert cfg.training.xgboost.params.get("max_depth") != 3  # the loaded config is left as it was
    assert retrain_config(cfg, "logreg", "xgboost", lineage) is cfg
    assert retrain_config(cfg, "xgboost", "xgboost", {}) is cfg


def test_run_with_a_time_budget_searches_both_kinds_within_it_quietly(churn):
    """`run --time-budget`: each kind searches in its share (the untuned settings first, no trial
    stopped for its early rounds, XGBoost's rounds left to early stopping), the best of each goes to
    the gates, and nothing of Tune's own reporting reaches the terminal."""
    from ray_pipeline.config import load_config
    from ray_pipeline.workflow.search import budget_share, budgeted

    out = _invoke("run", "--config", str(churn), "--time-budget", "40")
    assert "search within 40 s on Ray Tune: logreg, xgboost" in out, out
    kinds = {m.group(2): (int(m.group(1)), float(m.group(3)))
             for m in re.finditer(r"search-\S+: (\d+) trials of (\w+) \(tpe, fifo\) in ([\d.]+) s", out)}
    assert set(kinds) == {"logreg", "xgboost"}, out
    for kind, (n, seconds) in kinds.items():  # Tune stops each search at its share (a loaded machine: fewer trials;
        # the trial running at the budget is stopped, and Tune's teardown took up to 5.1 s on a clean clone's CI run)
        assert n >= 1 and seconds <= 40 * budget_share(kind, ["logreg", "xgboost"]) + 8, (kind, n, seconds)
        assert "best: " in out or f"{kind}: no trial finished within" in out
    assert out.count("judged on 5-fold cross-validation over") == 2, out  # a small table: folds, not one split
    for noise in ("View detailed results", "TensorBoard", "tensorboardx", "A new study created", "Failed to fetch",
                  "NaN or Inf found"):
        assert noise not in out, noise
    cfg = load_config(churn)
    x = budgeted(cfg, "xgboost", 18.0).training
    assert (x.search.scheduler, x.search.time_budget_s, x.xgboost.num_boost_round) == ("fifo", 18.0, 2000)
    searched = [v for v in open_registry_versions(cfg) if v.lineage.get("search")]
    assert searched or "again (same model files)" in out
    # the champion this run made is trained again on every row and served; the gated run's metrics stay
    refitted = re.search(r"refit: models:/\w+/(\d+) \((\w+)\) trained again on all ([\d,]+) rows.*-> models:/\w+/(\d+)", out)
    if refitted is not None:  # (unless the champion from before kept the alias)
        held_v, kind, rows, new_v = refitted.groups()
        versions = {v.version: v for v in open_registry_versions(cfg)}
        held, new = versions[int(held_v)], versions[int(new_v)]
        assert new.kind == held.kind == kind and new.metrics == held.metrics
        assert new.lineage["refit_of_version"] == held.uri and new.lineage["trigger"] == "refit"
        from ray_pipeline.registry.handoff import open_registry
        from ray_pipeline.train.rundir import read_run

        assert open_registry(cfg).aliases(cfg.registry.model_name)["champion"] == new.version
        if kind != "ensemble":
            assert read_run(new.lineage["run_dir"]).rows["train"] == int(rows.replace(",", ""))


def test_a_small_table_judges_each_trial_on_k_folds_of_train_and_valid(churn):
    """Below `cv_max_rows` a search's trials are compared on their mean error over k stratified folds
    of train + valid (the trial's own settings fitted k times), not on the one validation split."""
    import numpy as np

    from ray_pipeline.config import load_config
    from ray_pipeline.train.crossval import cv_error, folds_of
    from ray_pipeline.train.data import prepare_training_set
    from ray_pipeline.train.runner import train_model

    cfg = load_config(churn)
    prepared = prepare_training_set(cfg)
    s = cfg.training.search
    folds = folds_of(prepared, s)
    n = prepared.rows["train"] + prepared.rows["valid"]
    assert folds is not None and folds.k == s.cv_folds == 5 and folds.rows.num_rows == n
    sizes = np.bincount(folds.fold)
    assert sizes.max() - sizes.min() <= 2, sizes  # one row per label group at most
    y = folds.rows["y"].to_numpy()
    for f in range(folds.k):  # stratified: each fold's churn rate is the table's
        assert abs(y[folds.fold == f].mean() - y.mean()) < 0.01
    shards = folds.shards(0)
    assert shards["train"][0][1] + shards["valid"][0][1] == n and shards["valid"][0][1] == sizes[0]

    good = train_model(cfg, "logreg", 0, prepared)
    cfg.training.logreg.l2 = 10.0  # a penalty that flattens the model: worse on every fold
    bad = train_model(cfg, "logreg", 0, prepared)
    good_cv, bad_cv = cv_error(good, prepared, folds), cv_error(bad, prepared, folds)
    assert abs(good_cv - good.metrics["log_loss"]) < 0.05, (good_cv, good.metrics)  # the same error, more rows
    assert bad_cv > good_cv + 0.02, (good_cv, bad_cv)
    assert cv_error(good, prepared, folds, deadline=time.time()) is None  # no time left: not comparable

    s.cv_max_rows = n - 1  # a larger table keeps its one validation split
    assert folds_of(prepared, s) is None


def open_registry_versions(cfg):
    from ray_pipeline.registry.handoff import open_registry

    return open_registry(cfg).versions(cfg.registry.model_name)


def test_a_target_fitted_raw_or_as_log1p_is_searched_like_a_parameter(tmp_path):
    """`label.transform: auto`: the target's scale is a dimension of each kind's space (log1p first,
    as the spec fits it), never a training setting of the model itself; other targets keep theirs."""
    from ray_pipeline.config import parse_config
    from ray_pipeline.train.search import defaults, space_of, with_params
    from ray_pipeline.train.target import TARGET_PARAM

    from .helpers import linear_cfg

    body = linear_cfg(tmp_path).model_dump(by_alias=True)
    body["data"]["schema"]["label"] = {"column": "y", "task": "regression", "transform": "auto"}
    cfg = parse_config(body)
    for kind in ("logreg", "xgboost"):
        space = space_of(cfg, kind, "regression")
        assert space[TARGET_PARAM].values == ["log1p", "none"]
        first = defaults(cfg, kind, space)
        assert first[TARGET_PARAM] == "log1p"
        tuned = with_params(cfg, kind, {**first, TARGET_PARAM: "none"}).training
        assert TARGET_PARAM not in tuned.xgboost.params and not hasattr(tuned.logreg, TARGET_PARAM)
    body["data"]["schema"]["label"]["transform"] = "log1p"
    assert TARGET_PARAM not in space_of(parse_config(body), "xgboost", "regression")
