"""Promotion: an alias moves to a candidate only when every configured gate passes against the
version it replaces, checked inside the transaction that moves it.

Two kinds of evidence, one rule and one `promote`:
- `metric_gates`: the test metrics each version was registered with (`promote`, `run`, the console);
- `HoldoutGates`: both versions scored on the same holdout rows and compared by a paired bootstrap
  (registry/significance.py), so a tie or a gain the rows cannot tell from noise never passes (the
  feedback loop's retrain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ray_pipeline.config import GateRule, GateTestConfig
from ray_pipeline.registry.aliases import AliasChange
from ray_pipeline.registry.attempts import FORCED, PASSED, REFUSED, record_attempt
from ray_pipeline.registry.database import RegistryError
from ray_pipeline.registry.significance import GateCheck, counterparts, paired_gates
from ray_pipeline.registry.store import Registry
from ray_pipeline.registry.versions import ModelVersion

# Metrics where a smaller value is better; every other metric is better when larger.
LOWER_IS_BETTER = {"log_loss", "brier", "calibration_error", "excess_log_loss", "rmse", "mae", "excess_rmse"}


def task_of(version: ModelVersion) -> str:
    """binary, multiclass or regression, from the version's signature."""
    return version.signature.get("task") or (version.signature.get("label") or {}).get("task") or "binary"


def primary_metric(task: str, metric: str = "rmse") -> str:
    """The metric models of a task are ranked by: the label's `metric` (rmse or mae) for regression,
    log-loss otherwise (lower is better)."""
    return metric if task == "regression" else "log_loss"


def metric_of(version: ModelVersion) -> str:
    """The regression error a version was chosen by (its label's `metric`; rmse before there was one)."""
    return (version.signature.get("label") or {}).get("metric", "rmse")


def loss_of(version: ModelVersion) -> str:
    """The metric a version is ranked by among its task's versions."""
    return primary_metric(task_of(version), metric_of(version))


TASK_METRICS = {"binary": ("log_loss", "roc_auc"), "multiclass": ("log_loss", "accuracy", "macro_f1", "roc_auc"),
                "regression": ("rmse", "mae", "r2")}  # fmt: skip


def metrics_text(version: ModelVersion, sep: str = ", ") -> str:
    """The version's test metrics that matter for its task, as `name value` pairs."""
    m = version.metrics
    return sep.join(f"{k} {m[k]:.4g}" for k in TASK_METRICS[task_of(version)] if k in m)


def headline(version: ModelVersion) -> str:
    """One line naming a version and its test metrics in its task's terms."""
    task = task_of(version)
    kind = version.kind if task == "binary" else f"{version.kind}, {task}"
    return f"registered {version.uri} ({kind}): test {metrics_text(version)}"


def _target(version: ModelVersion) -> tuple[str, list | None]:
    label = version.signature.get("label") or {}
    return task_of(version), label.get("classes")


def _same_target(candidate: ModelVersion, current: ModelVersion) -> str | None:
    """Why two versions cannot stand in for each other (different task or class list), or None."""
    (t1, c1), (t2, c2) = _target(candidate), _target(current)
    if t1 != t2:
        return f"  FAIL task: {candidate.uri} is {t1}, {current.uri} is {t2}; a promotion cannot change the task"
    if c1 != c2:
        return f"  FAIL classes: {c1} vs {c2}; a promotion cannot change the class list"
    return None

# (candidate, current holder or None) -> (passed, report)
Gate = Callable[[ModelVersion, ModelVersion | None], tuple[bool, str]]


class PromotionRefused(RegistryError):
    """A gate failed; the message is the readable gate report."""


def gate_report(candidate: ModelVersion, current: ModelVersion | None, gates: dict[str, GateRule]) -> tuple[bool, str]:
    """Check each gate; returns (passed, report text)."""
    if current is None:
        return True, f"{candidate.uri}: no current holder, gates do not apply"
    lines, ok = [f"{candidate.uri} vs {current.uri}:"], True
    clash = _same_target(candidate, current)
    if clash:
        return False, "\n".join([*lines, clash])
    counterpart = counterparts(task_of(candidate), metric_of(candidate))
    for configured, rule in gates.items():
        metric = counterpart.get(configured, configured)
        if metric != configured:
            lines.append(f"  ({configured} -> {metric} for a {task_of(candidate)} task)")
        new, old = candidate.metrics.get(metric), current.metrics.get(metric)
        if new is None or old is None:
            lines.append(f"  FAIL {metric}: missing on {'candidate' if new is None else 'current'}")
            ok = False
            continue
        lower = metric in LOWER_IS_BETTER
        # Relative improvement, positive when the candidate is better.
        gain = (old - new) / abs(old) if lower else (new - old) / abs(old)
        if rule.max_regression is not None and rule.min_improvement == 0.0:  # non-inferiority
            passed = -gain <= rule.max_regression
            need = f"allows {rule.max_regression:.2%} regression"
        else:  # strictly better: a tie is no reason to move the alias
            passed = gain > rule.min_improvement
            need = f"needs > {rule.min_improvement:.2%} improvement"
        ok &= passed
        direction = "lower" if lower else "higher"
        lines.append(
            f"  {'PASS' if passed else 'FAIL'} {metric} ({direction} is better): {new:.6g} vs {old:.6g} "
            f"({gain:+.2%}; {need})"
        )
    return ok, "\n".join(lines)


def metric_gates(gates: dict[str, GateRule]) -> Gate:
    """The gates on the test metrics both versions were registered with."""
    return lambda candidate, current: gate_report(candidate, current, gates)


@dataclass
class HoldoutGates:
    """The gates on one holdout both versions were scored on, by paired bootstrap.

    Decided against `current_version`, the holder whose scores are `p_old`: if another promotion
    moved the alias in between, the comparison is stale and does not pass."""

    y: np.ndarray
    p_new: np.ndarray
    p_old: np.ndarray
    current_version: int
    gates: dict[str, GateRule]
    test: GateTestConfig
    title: str
    task: str = "binary"
    metric: str = "rmse"  # a regression's error (the label's metric)
    checks: list[GateCheck] = field(init=False)

    def __post_init__(self) -> None:
        self.checks = paired_gates(self.y, self.p_new, self.p_old, self.gates, self.test, self.task, self.metric)

    @property
    def passed(self) -> bool:
        """Every gate's interval clears its rule."""
        return all(c.passed for c in self.checks)

    def report(self) -> str:
        """The comparison for people: one line per gate with its interval."""
        t = self.test
        lines = [f"{self.title} on {len(self.y):,} holdout rows (paired bootstrap, {t.resamples} resamples, seed {t.seed}):"]
        return "\n".join(lines + [c.line(t.level) for c in self.checks])

    def records(self) -> list[dict[str, Any]]:
        """The checks as plain data (the feedback record)."""
        return [asdict(c) for c in self.checks]

    def __call__(self, candidate: ModelVersion, current: ModelVersion | None) -> tuple[bool, str]:
        if current is None or current.version != self.current_version:
            now = current.uri if current is not None else "no holder"
            return False, f"{self.report()}\n  FAIL the alias moved to {now} after the holdout was scored"
        return self.passed, self.report()


def promote(
    registry: Registry,
    name: str,
    version: int,
    alias: str,
    gates: dict[str, GateRule] | Gate,
    force: bool = False,
    actor: str = "",
    reason: str = "",
) -> tuple[AliasChange, str]:
    """Point `alias` at `version` if it passes the gates against the current holder (or `force`).

    `gates`: the metric rules (`metric_gates`) or any `Gate`, such as `HoldoutGates`. They are
    checked inside the transaction that moves the alias, against the holder it replaces: a
    promotion that lands in between cannot be overtaken by a stale comparison.
    """
    gate = metric_gates(gates) if isinstance(gates, dict) else gates
    reports: list[str] = []
    decided: dict[str, object] = {}

    def check(candidate: ModelVersion, current: ModelVersion | None) -> str:
        passed, report = gate(candidate, current)
        reports.append(report)
        decided.update(against=current.version if current else None, outcome=PASSED if passed else FORCED)
        if not passed and not force:
            raise PromotionRefused(f"promotion of {candidate.uri} to @{alias} refused:\n{report}")
        outcome = "promoted: gates passed" if passed else "FORCED past failing gates"
        return f"{reason}: {outcome}" if reason else outcome

    try:
        change = registry.set_alias(name, alias, version, actor=actor, check=check)
    except PromotionRefused:
        record_attempt(registry, name, version, alias, decided["against"], REFUSED, reports[-1], actor)  # type: ignore[arg-type]
        raise
    record_attempt(registry, name, version, alias, decided["against"], str(decided["outcome"]), reports[-1], actor)  # type: ignore[arg-type]
    return change, reports[-1]