"""Promotion attempts: every offer of a version to an alias, passed or refused, with the gate report
(the numbers the gates compared). The alias history says what moved; this says what was tried."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, insert, select

from ray_pipeline.registry.store import ATTEMPTS, Registry, _actor

PASSED, REFUSED, FORCED = "passed", "refused", "forced"


@dataclass(frozen=True)
class Attempt:
    """One promotion attempt."""

    name: str
    version: int
    alias: str
    at: str
    against_version: int | None
    outcome: str  # passed | refused | forced
    report: str
    actor: str


def record_attempt(registry: Registry, name: str, version: int, alias: str, against: int | None, outcome: str,
                   report: str, actor: str = "") -> Attempt:  # fmt: skip
    """Store one attempt (in its own transaction: a refused promotion rolls its own one back)."""
    at = datetime.now(timezone.utc).isoformat()
    attempt = Attempt(name, version, alias, at, against, outcome, report, _actor(actor))
    with registry._transaction(f"attempts:{name}") as db:
        db.execute(insert(ATTEMPTS).values(name=name, version=version, alias=alias, at=at, against_version=against,
                                           outcome=outcome, report=report, actor=attempt.actor))  # fmt: skip
    return attempt


def attempts(registry: Registry, name: str, version: int | None = None, limit: int = 200) -> list[Attempt]:
    """Attempts for `name` (one version's, when given), newest first."""
    a = ATTEMPTS.c
    query = select(a.name, a.version, a.alias, a.at, a.against_version, a.outcome, a.report, a.actor).where(
        a.name == name
    )
    if version is not None:
        query = query.where(a.version == version)
    with registry._read() as db:
        return [Attempt(*r) for r in db.execute(query.order_by(a.id.desc()).limit(limit))]


def attempt_counts(registry: Registry, name: str) -> dict[str, int]:
    """Attempts of `name` by outcome."""
    a = ATTEMPTS.c
    with registry._read() as db:
        rows = db.execute(select(a.outcome, func.count()).where(a.name == name).group_by(a.outcome))
        return {outcome: n for outcome, n in rows}
