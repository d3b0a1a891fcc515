"""What the training loops ask of Ray Train (rank, world size, checkpoint, report), answerable
without Ray Train for one case: a search trial on a small table, whose loop runs in the Ray Tune
trial's own process.

Ray Train's local mode would do that, but its APIs refuse to run inside a Tune function (they
raise once a Tune session is active, ray-project/ray#49454), so such a trial calls the loop
directly inside `direct_loop()`: rank 0 of 1, no checkpoints (a trial that dies is retried by Tune
from its start), each epoch's or round's loss reported to Tune by the loop itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

_DIRECT: ContextVar[bool] = ContextVar("ray_pipeline_direct_loop", default=False)


@dataclass(frozen=True)
class _OneRank:
    """The Ray Train context of a loop run directly: one rank."""

    experiment_name: str = "direct"

    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1

    def get_experiment_name(self) -> str:
        return self.experiment_name


@contextmanager
def direct_loop() -> Iterator[None]:
    """Within the block the loops run without Ray Train (see the module docstring)."""
    token = _DIRECT.set(True)
    try:
        yield
    finally:
        _DIRECT.reset(token)


def is_direct() -> bool:
    """Whether the running loop runs directly (a search trial in-process)."""
    return _DIRECT.get()


def get_context() -> Any:
    """Ray Train's context, or one rank when run directly."""
    if _DIRECT.get():
        return _OneRank()
    import ray.train

    return ray.train.get_context()


def get_checkpoint() -> Any:
    """The checkpoint to resume from (never one when run directly)."""
    if _DIRECT.get():
        return None
    import ray.train

    return ray.train.get_checkpoint()


def report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
    """ray.train.report; nothing when run directly (the loop reports to Tune itself)."""
    if _DIRECT.get():
        return
    import ray.train

    ray.train.report(metrics, checkpoint=checkpoint)
