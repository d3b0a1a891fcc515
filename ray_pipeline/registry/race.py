"""A sequential champion/challenger race. A retrained model that its first holdout cannot separate
from the champion keeps scoring live traffic in shadow; its paired per-row loss against the
champion's (same requests, once their labels arrive) accumulates window by window, and the race
ends when the evidence separates, or after `max_windows` windows with the champion kept.

Why not the holdout's bootstrap again each window: a fixed-sample interval looked at after every
window promotes noise far more often than its level says. The race uses a confidence sequence,
valid at every look: the normal-mixture boundary of Robbins (in the form of Howard et al., 2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences"): with S the sum of the paired
gains d = loss(champion) - loss(challenger) and V the sum of d^2,

    |S - n * mean| <= sqrt((V + rho) * log((V + rho) / (rho * alpha^2)))

holds at every n at once with probability 1 - alpha (Ville's inequality on the mixture
martingale). Using the observed V is the self-normalized form, exact for conditionally symmetric
gains and an approximation otherwise. `rho` sets where the boundary is tightest; it is the first
window's V, fixed before any later look. Only the task's primary loss is raced (log-loss, squared
or absolute error); the holdout gates' other rules were checked on the first window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ray_pipeline.registry.versions import ModelVersion

PROMOTE, RETIRE = "promote", "retire"


def row_losses(task: str, y: np.ndarray, p: np.ndarray, metric: str = "rmse") -> np.ndarray:
    """Each row's loss as the prediction log holds its answer: log-loss of a probability (binary),
    squared error (regression; absolute error when the label's metric is mae)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if task == "regression":
        return np.abs(p - y) if metric == "mae" else (p - y) ** 2
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


@dataclass
class Race:
    """The race's evidence so far, and its rules (JSON-safe: it lives in the loop's saved state)."""

    task: str
    champion: int
    challenger: int | None
    alpha: float
    max_windows: int
    rho: float
    rows: int = 0
    gain_sum: float = 0.0  # S: sum of per-row gains (champion loss - challenger loss)
    gain_squares: float = 0.0  # V
    champion_loss: float = 0.0  # sum of the champion's per-row losses (for relative figures)
    windows: int = 0
    metric: str = "rmse"  # a regression's per-row loss: squared (rmse) or absolute (mae) error

    @classmethod
    def start(cls, task: str, champion: int, gains: np.ndarray, champion_loss: np.ndarray, alpha: float,
              max_windows: int, metric: str = "rmse") -> Race:  # fmt: skip
        """A race whose first window is the holdout that could not decide."""
        rho = max(float(np.sum(gains**2)), 1e-12)
        race = cls(task, champion, None, alpha, max_windows, rho=rho, metric=metric)
        race.add(gains, champion_loss)
        return race

    def add(self, gains: np.ndarray, champion_loss: np.ndarray) -> None:
        """One more window of paired rows."""
        self.rows += int(gains.size)
        self.gain_sum += float(np.sum(gains))
        self.gain_squares += float(np.sum(gains**2))
        self.champion_loss += float(np.sum(champion_loss))
        self.windows += 1

    def interval(self) -> tuple[float, float]:
        """Bounds of the mean relative gain (share of the champion's loss), valid at every look."""
        v = self.gain_squares + self.rho
        radius = math.sqrt(v * math.log(v / (self.rho * self.alpha**2)))
        scale = self.champion_loss or 1.0
        return (self.gain_sum - radius) / scale, (self.gain_sum + radius) / scale

    def verdict(self) -> str | None:
        """promote when the gain is surely positive, retire when surely negative or out of windows."""
        lower, upper = self.interval()
        if lower > 0:
            return PROMOTE
        if upper < 0 or self.windows >= self.max_windows:
            return RETIRE
        return None

    def report(self) -> str:
        """The race for people: rows, windows, the gain and its anytime-valid interval."""
        lower, upper = self.interval()
        gain = self.gain_sum / (self.champion_loss or 1.0)
        who = f"v{self.challenger} vs v{self.champion}" if self.challenger else f"challenger vs v{self.champion}"
        return (f"race {who}: {self.rows:,} paired rows over {self.windows} window(s) (of {self.max_windows}); "
                f"loss gain {gain:+.2%}, {1 - self.alpha:.0%} confidence sequence [{lower:+.2%}, {upper:+.2%}]")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """As saved."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Race:
        """As loaded."""
        return cls(**data)

    def __call__(self, candidate: ModelVersion, current: ModelVersion | None) -> tuple[bool, str]:
        """The race as a promotion gate: passes for its challenger against the champion it raced."""
        if current is None or current.version != self.champion:
            now = current.uri if current is not None else "no holder"
            return False, f"{self.report()}\n  FAIL the alias moved to {now} during the race"
        return self.verdict() == PROMOTE and candidate.version == self.challenger, self.report()
