"""Promotion attempts: every offer of a version to an alias, passed or refused, with the gate report
(the numbers the gates compared). The alias history says what moved; this says what was tried."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Column, Index, Integer, String, Table, Text, func, insert, select

from ray_pipeline.registry.database import METADATA, HasDatabase, actor_name

PASSED, REFUSED, FORCED = "passed", "refused", "forced"

ATTEMPTS = Table(
    "promotion_attempts", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False), Column("alias", String(255), nullable=False),
    Column("at", String(40), nullable=False), Column("against_version", Integer),
    Column("outcome", String(16), nullable=False), Column("report", Text, nullable=False),
    Column("actor", String(255), nullable=False),
    Index("ix_attempts_version", "name", "version"),
)  # fmt: skip


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


def record_attempt(registry: HasDatabase, name: str, version: int, alias: str, against: int | None, outcome: str,
                   report: str, actor: str = "") -> Attempt:  # fmt: skip
    """Store one attempt (in its own transaction: a refused promotion rolls its own one back)."""
    at = datetime.now(timezone.utc).isoformat()
    attempt = Attempt(name, version, alias, at, against, outcome, report, actor_name(actor))
    with registry.database.transaction(f"attempts:{name}") as db:
        db.execute(insert(ATTEMPTS).values(name=name, version=version, alias=alias, at=at, against_version=against,
                                           outcome=outcome, report=report, actor=attempt.actor))  # fmt: skip
    return attempt


def attempts(registry: HasDatabase, name: str, version: int | None = None, limit: int = 200) -> list[Attempt]:
    """Attempts for `name` (one version's, when given), newest first."""
    a = ATTEMPTS.c
    query = select(a.name, a.version, a.alias, a.at, a.against_version, a.outcome, a.report, a.actor).where(
        a.name == name
    )
    if version is not None:
        query = query.where(a.version == version)
    with registry.database.read() as db:
        return [Attempt(*r) for r in db.execute(query.order_by(a.id.desc()).limit(limit))]


def attempt_counts(registry: HasDatabase, name: str) -> dict[str, int]:
    """Attempts of `name` by outcome."""
    a = ATTEMPTS.c
    with registry.database.read() as db:
        rows = db.execute(select(a.outcome, func.count()).where(a.name == name).group_by(a.outcome))
        return {outcome: n for outcome, n in rows}
