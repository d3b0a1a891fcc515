"""A search that ends at its deadline by itself: no trial starts in the budget's last moments, and
the trials running then stop at the deadline with their best so far and report. Ray Tune's own
`time_budget_s` stays as the backstop: the trials it has to interrupt are cleaned up after the
budget (its forced clean-up gives each stopping actor up to 10 s), which a loaded machine spends."""

from __future__ import annotations

import time
from typing import Any

from ray.tune.search import Searcher

# What a trial cut at the deadline needs to score its validation split and report (s), as a share
# of the budget and at least a second: trials stop this long before the search's deadline.
RESERVE_SHARE, RESERVE_MIN_S = 0.05, 1.0


def trial_reserve(budget_s: float) -> float:
    """How long before a search's deadline its trials stop (and new ones stop starting)."""
    return max(RESERVE_MIN_S, RESERVE_SHARE * budget_s)


class UntilDeadline(Searcher):
    """`searcher`'s suggestions until the wall-clock time `stop_at`; then the search is finished."""

    def __init__(self, searcher: Searcher, stop_at: float) -> None:
        self.searcher, self.stop_at = searcher, stop_at
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Pass Tune's metric, mode and space on to the wrapped searcher."""
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Let the wrapped searcher limit trials at once where it can."""
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | None:
        """The wrapped searcher's next configuration, or FINISHED past the deadline."""
        if time.time() >= self.stop_at:
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Pass an intermediate result on."""
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Pass a trial's final result on."""
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        """This wrapper's own state, saved with the experiment (the wrapped searcher saves its own)."""
        return {"stop_at": self.stop_at}

    def set_state(self, state: dict) -> None:
        """Restore the deadline saved with the experiment."""
        self.stop_at = state["stop_at"]

    def save(self, checkpoint_path: str) -> None:
        """Save the wrapped searcher's state (a resumed search continues it)."""
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the wrapped searcher's state."""
        self.searcher.restore(checkpoint_path)
