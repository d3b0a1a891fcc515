"""Named locks with a time-to-live in the registry's database (one retrain per model at a time,
across processes and nodes): an expired lock is a crashed holder's and can be taken."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, String, Table, delete, insert, select

from ray_pipeline.registry.database import METADATA, HasDatabase

LOCKS = Table(
    "locks", METADATA,
    Column("name", String(255), primary_key=True), Column("holder", String(255), nullable=False),
    Column("acquired_at", String(40), nullable=False), Column("expires_at", String(40), nullable=False),
)  # fmt: skip


def acquire_lock(registry: HasDatabase, name: str, holder: str, ttl_s: float) -> str | None:
    """Take the named lock for `ttl_s` seconds; returns None, or who holds it when taken."""
    at = datetime.now(timezone.utc)
    with registry.database.transaction(f"lock:{name}") as db:
        row = db.execute(select(LOCKS.c.holder, LOCKS.c.expires_at).where(LOCKS.c.name == name)).first()
        if row is not None and datetime.fromisoformat(row[1]) > at and row[0] != holder:
            return row[0]  # held and not expired (an expired lock is a crashed holder's)
        expires = datetime.fromtimestamp(at.timestamp() + ttl_s, tz=timezone.utc)
        db.execute(delete(LOCKS).where(LOCKS.c.name == name))
        db.execute(insert(LOCKS).values(name=name, holder=holder, acquired_at=at.isoformat(),
                                        expires_at=expires.isoformat()))  # fmt: skip
    return None


def release_lock(registry: HasDatabase, name: str, holder: str) -> None:
    """Give the lock back (only its holder can)."""
    with registry.database.transaction(f"lock:{name}") as db:
        db.execute(delete(LOCKS).where(LOCKS.c.name == name, LOCKS.c.holder == holder))
