"""The Ray Train trainers every distributed run uses: Ray's own, with two changes around `fit()`.

- The controller polls the workers every 0.25 s during a fit instead of every 2 s (unless the
  user set `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`). It notices that the workers finished only at its
  next poll, so the default interval adds up to two intervals to every run. The controller reads
  the variable from the environment the driver propagates to it.
- No per-run placement-group cleaner actor. Ray Train V2 starts a detached
  `PlacementGroupCleaner` with every run, to remove the run's placement group should the
  controller die without doing so itself. Its process starts and imports Ray Train while the
  worker processes start, and at the end the controller waits for it to stop: on a small machine
  a sizeable share of a short run's fixed cost (docs/benchmarks.md).

The case the cleaner covers, a controller that dies while the driver lives on, is handled in the
driver instead: `fit()` raising means the controller died, and the placement groups this job
created during the fit that are still there are removed. A driver that dies takes its job's
placement groups with it (Ray removes them when the job ends). This assumes one fit at a time
per driver, as everywhere in ray-pipeline: a fit failing beside another in the same job would
take the other's placement group too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.train.xgboost import XGBoostTrainer as _XGBoostTrainer

from ray_pipeline.raycompat import placement_group_cleaner_callback

log = logging.getLogger(__name__)
_HEALTH_CHECK = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextmanager
def _fast_polling() -> Iterator[None]:
    """Poll the worker group every 0.25 s for the duration of one fit (unless the user set it)."""
    if _HEALTH_CHECK in os.environ:
        yield
        return
    os.environ[_HEALTH_CHECK] = "0.25"
    try:
        yield
    finally:
        os.environ.pop(_HEALTH_CHECK, None)


@contextmanager
def placement_groups_removed_on_failure() -> Iterator[None]:
    """Remove the placement groups this job creates inside the block if the block raises."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    if not ray.is_initialized():  # Ray Train's local mode in a process without Ray
        yield
        return
    job = ray.get_runtime_context().get_job_id()  # a placement group's id ends with its job's
    before = set(placement_group_table())
    try:
        yield
    except BaseException:
        try:
            for pg_id, info in placement_group_table().items():
                if pg_id not in before and pg_id.endswith(job) and info.get("state") != "REMOVED":
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        except Exception as cleanup:  # an unreachable GCS must not hide why the fit failed
            log.warning("could not remove the failed run's placement groups: %s", cleanup)
        raise


class _NoCleanerActor:
    """Mixin for a DataParallelTrainer: fast polling during the fit, and no per-run cleaner actor
    (the driver cleans up instead), except in a Ray Tune trial (`in_tune_trial`)."""

    # A Tune trial keeps Ray's cleaner: trials fit side by side in one job, so the driver-side
    # cleanup would take the other trials' placement groups; and a trial its scheduler stops is
    # killed with its controller, leaving the run's placement group (scoped to the job) holding its
    # CPUs unless the cleaner removes it.
    in_tune_trial = False

    def _create_default_callbacks(self):  # a private hook of DataParallelTrainer: see raycompat.py
        callbacks = super()._create_default_callbacks()  # type: ignore[misc]
        cleaner = placement_group_cleaner_callback()
        if cleaner is None or self.in_tune_trial:
            return callbacks
        return [c for c in callbacks if not isinstance(c, cleaner)]

    def fit(self):
        with _fast_polling(), nullcontext() if self.in_tune_trial else placement_groups_removed_on_failure():
            return super().fit()  # type: ignore[misc]


class Trainer(_NoCleanerActor, DataParallelTrainer):
    """DataParallelTrainer (logistic regression: the loop brings its own allreduce)."""


class XGBoostTrainer(_NoCleanerActor, _XGBoostTrainer):
    """Ray Train's XGBoostTrainer (its backend starts XGBoost's collective)."""
