"""XGBoost on Ray Train (V2 XGBoostTrainer): each worker builds a DMatrix from its shard and
xgboost.train runs distributed hist inside the collective Ray Train sets up."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ray_pipeline.progress import Reporter
from ray_pipeline.train import session
from ray_pipeline.train.worker import TUNE_VIA_TRAIN, iter_batches, past_deadline, tune_report


def _callback(frequency: int, every_round: bool = False):
    """Ray Train's XGBoost callback, reporting only with checkpoints: each ray.train.report is a
    synchronisation of the whole worker group, far slower than a boosting round. `every_round`: a
    search trial on workers, whose scheduler needs each round's validation loss (`valid_loss`, at
    `step` rounds) through Ray Train."""
    import ray.train
    from ray.train.xgboost import RayTrainReportCallback

    class CheckpointEveryN(RayTrainReportCallback):
        rounds = 0

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            self.rounds = model.num_boosted_rounds()  # counts the rounds a resumed run started from
            return super().after_iteration(model, epoch, evals_log)

        def _get_report_dict(self, evals_log) -> dict:
            report = super()._get_report_dict(evals_log)
            if "valid" in evals_log:
                report.update(valid_loss=float(next(iter(evals_log["valid"].values()))[-1]), step=self.rounds)
            return report

        def _report_metrics(self, report_dict: dict) -> None:
            if every_round:
                ray.train.report(report_dict)

    # Not at the end: the driver builds the model from the loop's return value (`model_ubj`),
    # and a finished run is never resumed.
    return CheckpointEveryN(frequency=frequency, checkpoint_at_end=False)


def _progress(key: str | None, total: int, config: dict[str, Any]):
    """Rounds done, sent to the driver's progress bar by rank 0 (and each round's validation loss
    to Ray Tune in a search trial)."""
    import xgboost

    class Progress(xgboost.callback.TrainingCallback):
        def __init__(self) -> None:
            self.report = Reporter(key)

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            self.report(model.num_boosted_rounds(), total)
            if "valid" in evals_log:
                tune_report(config, model.num_boosted_rounds(), next(iter(evals_log["valid"].values()))[-1])
            return past_deadline(config)  # True ends the boosting; early stopping's best round stays

        def after_training(self, model):
            self.report(model.num_boosted_rounds(), total, force=True)
            return model

    return Progress()


def _shard_iter(shard: tuple[list, int], n_features: int, weights: list[float] | None = None,
                feature_types: list[str] | None = None):  # fmt: skip
    """An xgboost.DataIter over a shard's record batches (`worker.iter_batches`); rows weigh
    `weights[class]` when given; `feature_types` marks native category codes ("c")."""
    import xgboost

    class ShardIter(xgboost.DataIter):
        def __init__(self) -> None:
            super().__init__(release_data=True)
            self._batches = None

        def reset(self) -> None:
            self._batches = None

        def next(self, input_data) -> bool:
            if self._batches is None:
                self._batches = iter_batches(shard, n_features)
            batch = next(self._batches, None)
            if batch is None:
                return False
            weight = None if weights is None else np.asarray(weights)[batch[1].astype(np.int64)]
            input_data(data=batch[0], label=batch[1], weight=weight, feature_types=feature_types)
            return True

    return ShardIter()


def task_params(task: str, n_outputs: int, metric: str = "rmse") -> dict[str, Any]:
    """XGBoost's objective and evaluation metric for the task and the regression's `metric` (the
    config's `params` may override the objective, e.g. reg:pseudohubererror)."""
    if task == "multiclass":
        return {"objective": "multi:softprob", "num_class": n_outputs, "eval_metric": "mlogloss"}
    if task == "regression" and metric == "mae":  # the median, which absolute error rewards
        return {"objective": "reg:absoluteerror", "eval_metric": "mae"}
    if task == "regression":
        return {"objective": "reg:squarederror", "eval_metric": "rmse"}
    return {"objective": "binary:logistic", "eval_metric": "logloss"}


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train worker loop: checkpoints every `checkpoint_every` rounds, resumes from the last."""
    import xgboost
    from ray.train.xgboost import RayTrainReportCallback

    d, rank = config["n_features"], session.get_context().get_world_rank()
    params = {
        **task_params(config.get("task", "binary"), config.get("n_outputs", 1), config.get("metric", "rmse")),
        "tree_method": "hist",
        "nthread": config["nthread"],
        "seed": config["seed"],
        **config["params"],
    }
    # A QuantileDMatrix keeps only the bins (a byte per entry); a DMatrix would add a CSR copy
    # (value + index per entry). Built from the shard's blocks in the object store, batch by
    # batch, so no float copy of the shard is ever made (XGBoost reads the batches twice: sketch,
    # then bins).
    shards = config["shards"]
    types = config.get("feature_types")
    dtrain = xgboost.QuantileDMatrix(
        _shard_iter(shards["train"][rank], d, config.get("class_weights"), types), max_bin=int(params.get("max_bin", 256)),
        nthread=config["nthread"], enable_categorical=types is not None,
    )  # fmt: skip
    dvalid = xgboost.QuantileDMatrix(_shard_iter(shards["valid"][rank], d, None, types), ref=dtrain,
                                     nthread=config["nthread"], enable_categorical=types is not None)  # fmt: skip

    booster = None
    checkpoint = session.get_checkpoint()
    if checkpoint is not None:
        booster = RayTrainReportCallback.get_model(checkpoint)
    done = booster.num_boosted_rounds() if booster is not None else 0
    if booster is None and config.get("init_model_ubj") is not None:
        # A warm start: boosting continues from the champion's trees (not a resume: `done` stays 0,
        # so the configured rounds are added on top of them).
        booster = xgboost.Booster()
        booster.load_model(bytearray(config["init_model_ubj"]))
    if rank == 0 and done:
        print(f"resuming from round {done}")
    history: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    final = xgboost.train(
        params,
        dtrain,
        num_boost_round=max(config["num_boost_round"] - done, 0),
        # Every eval set costs a metric pass and an allreduce per round: the train set's is opt-in
        # (about 10% of a round on 1M rows, 2 workers).
        evals=[(dtrain, "train"), (dvalid, "valid")] if config["eval_train"] else [(dvalid, "valid")],
        early_stopping_rounds=config["early_stopping_rounds"],
        verbose_eval=config["log_every"] or False,
        xgb_model=booster,
        evals_result=history,
        callbacks=[
            *([] if session.is_direct() else [_callback(config["checkpoint_every"],
                                                        config.get("tune_report") == TUNE_VIA_TRAIN)]),  # fmt: skip
            _progress(config.get("progress_key") if rank == 0 else None, config["num_boost_round"],
                      config if rank == 0 else {}),
        ],
    )
    if rank != 0:
        return None
    metric = next(iter(history["valid"]))  # the one eval_metric: logloss, mlogloss, rmse or mae
    valid = history["valid"][metric]
    train = history.get("train", {}).get(metric, [None] * len(valid))
    rounds = [{"round": done + i + 1, "train_loss": t, "valid_loss": v} for i, (t, v) in enumerate(zip(train, valid))]
    return {
        "history": rounds,
        # (unset when the deadline ended the boosting at its first round: the deadline's callback
        # runs before early stopping's, and a callback ending the round skips the ones after it)
        "best_iteration": int(final.attr("best_iteration")) if final.attr("best_iteration") is not None else None,
        "resumed_from": done or None,
        "loop_s": time.perf_counter() - started,
        "model_ubj": bytes(final.save_raw("ubj")),  # the driver's copy (checkpoints are for resuming)
    }
