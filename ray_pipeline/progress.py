"""One progress bar per stage (rich), fed by the driver or by Ray Train workers.

Workers cannot draw on the user's terminal, and `ray.train.report` costs a synchronisation of the
whole group, so rank 0 sends its epoch or round count to a small named actor
(no CPU, fire-and-forget calls) and a driver thread polls it into the bar.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BOARD = "ray-pipeline-progress"
_enabled = os.environ.get("RAY_PIPELINE_PROGRESS", "1") != "0"


def set_enabled(enabled: bool) -> None:
    """Turn the bars on or off for this process (off with --verbose: Ray's own output shows instead)."""
    global _enabled
    _enabled = enabled


def _bar(description: str, total: float | None, unit: str):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=False,
    )
    task = progress.add_task(description, total=total)
    return progress, task


@contextmanager
def bar(description: str, total: float | None = None, unit: str = "rows") -> Iterator[Callable[..., None]]:
    """A bar updated from the driver: yields `update(completed, total=None)`."""
    if not _enabled:
        yield lambda completed, total=None: None
        return
    progress, task = _bar(description, total, unit)

    def update(completed: float, total: float | None = None) -> None:
        progress.update(task, completed=completed, **({"total": total} if total is not None else {}))

    with progress:
        yield update


def _board():
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        """Latest (done, total) per key."""

        def __init__(self) -> None:
            self.state: dict[str, tuple[float, float]] = {}

        def set(self, key: str, done: float, total: float) -> None:
            self.state[key] = (done, total)

        def get(self, key: str) -> tuple[float, float] | None:
            return self.state.get(key)

    return Board.options(name=BOARD, get_if_exists=True, lifetime=None).remote()


@contextmanager
def remote_bar(key: str, description: str, total: float, unit: str) -> Iterator[None]:
    """A bar fed by workers calling `report(key, done, total)` while the block runs."""
    if not _enabled:
        yield
        return
    import ray

    board = _board()
    stop = threading.Event()
    with bar(description, total, unit) as update:

        def poll() -> None:
            while not stop.wait(0.3):
                try:
                    state = ray.get(board.get.remote(key), timeout=5)
                except Exception:  # a slow or restarting cluster only delays the bar
                    continue
                if state is not None:
                    update(state[0], state[1])

        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            state = ray.get(board.get.remote(key))
            if state is not None:
                update(state[0], state[0])  # early stopping ends before `total`: the bar ends full


class Reporter:
    """Worker side: send (done, total) for `key` to the driver's board, at most every 0.25 s."""

    def __init__(self, key: str | None) -> None:
        self.key, self.board, self.last = key, None, 0.0
        if key:
            import ray

            try:
                self.board = ray.get_actor(BOARD)
            except ValueError:  # no driver is watching (bars off, or a plain Ray Train run)
                self.board = None

    def __call__(self, done: float, total: float, force: bool = False) -> None:
        """Report progress; cheap to call every epoch or round."""
        now = time.monotonic()
        if self.board is None or (not force and now - self.last < 0.25):
            return
        self.last = now
        self.board.set.remote(self.key, done, total)

