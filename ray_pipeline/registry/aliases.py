"""Aliases (champion, challenger, ...) pointing at versions, and the history of every move: each
change is a row of `alias_history`, written in the transaction that makes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Integer, String, Table, Text, delete, func, insert, select

from ray_pipeline.registry.database import METADATA, HasDatabase, RegistryError, actor_name, now
from ray_pipeline.registry.versions import ModelVersion, get_version

ALIASES = Table(
    "aliases", METADATA,
    Column("name", String(255), primary_key=True), Column("alias", String(255), primary_key=True),
    Column("version", Integer, nullable=False),
)  # fmt: skip
HISTORY = Table(
    "alias_history", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(255), nullable=False),
    Column("alias", String(255), nullable=False), Column("at", String(40), nullable=False),
    Column("from_version", Integer), Column("to_version", Integer),
    Column("reason", Text, nullable=False), Column("actor", String(255), nullable=False),
)  # fmt: skip

# (candidate, current holder or None) -> the reason to record; raises to leave the alias as is
AliasCheck = Callable[[ModelVersion, ModelVersion | None], str]


@dataclass(frozen=True)
class AliasChange:
    """One entry of an alias's history."""

    name: str
    alias: str
    at: str
    from_version: int | None
    to_version: int | None
    reason: str
    actor: str


def alias_version(db: Connection, name: str, alias: str) -> int | None:
    """The version `alias` points at, or None."""
    return db.execute(select(ALIASES.c.version).where(ALIASES.c.name == name, ALIASES.c.alias == alias)).scalar()


def move_alias(registry: HasDatabase, name: str, alias: str, version: int, reason: str = "", actor: str = "",
               check: AliasCheck | None = None) -> AliasChange:  # fmt: skip
    """Point `alias` at `version` with a history entry, in one transaction; `check(candidate,
    current_holder)` runs inside it, against the holder this move replaces."""
    with registry.database.transaction(f"model:{name}") as db:
        candidate = get_version(db, name, version)
        current = alias_version(db, name, alias)
        if check is not None:
            holder = get_version(db, name, current) if current is not None else None
            reason = check(candidate, holder)
        db.execute(delete(ALIASES).where(ALIASES.c.name == name, ALIASES.c.alias == alias))
        db.execute(insert(ALIASES).values(name=name, alias=alias, version=version))
        change = AliasChange(name, alias, now(), current, version, reason, actor_name(actor))
        _log(db, change)
    return change


def remove_alias(registry: HasDatabase, name: str, alias: str, reason: str = "", actor: str = "") -> AliasChange:
    """Remove `alias` (recorded in its history)."""
    with registry.database.transaction(f"model:{name}") as db:
        current = alias_version(db, name, alias)
        if current is None:
            raise RegistryError(f"models:/{name}@{alias} is not set")
        db.execute(delete(ALIASES).where(ALIASES.c.name == name, ALIASES.c.alias == alias))
        change = AliasChange(name, alias, now(), current, None, reason or "deleted", actor_name(actor))
        _log(db, change)
    return change


def aliases_of(registry: HasDatabase, name: str) -> dict[str, int]:
    """Alias -> version for `name`."""
    query = select(ALIASES.c.alias, ALIASES.c.version).where(ALIASES.c.name == name).order_by(ALIASES.c.alias)
    with registry.database.read() as db:
        return {a: v for a, v in db.execute(query)}


def alias_history(registry: HasDatabase, name: str, alias: str | None = None) -> list[AliasChange]:
    """Alias changes of `name` (of one alias, when given), oldest first."""
    h = HISTORY.c
    query = select(h.name, h.alias, h.at, h.from_version, h.to_version, h.reason, h.actor).where(h.name == name)
    if alias is not None:
        query = query.where(h.alias == alias)
    with registry.database.read() as db:
        return [AliasChange(*r) for r in db.execute(query.order_by(h.id))]


def history_page(registry: HasDatabase, name: str, offset: int = 0, limit: int = 50, alias: str | None = None,
                 version: int | None = None) -> tuple[int, list[AliasChange]]:  # fmt: skip
    """(total, newest-first page) of alias changes of `name` (to or from `version`, when given)."""
    h = HISTORY.c
    where = [h.name == name] + ([h.alias == alias] if alias else [])
    if version is not None:
        where.append((h.to_version == version) | (h.from_version == version))
    query = (select(h.name, h.alias, h.at, h.from_version, h.to_version, h.reason, h.actor).where(*where)
             .order_by(h.id.desc()).offset(offset).limit(limit))  # fmt: skip
    with registry.database.read() as db:
        total = db.execute(select(func.count()).select_from(HISTORY).where(*where)).scalar_one()
        return total, [AliasChange(*r) for r in db.execute(query)]


def _log(db: Connection, c: AliasChange) -> None:
    db.execute(insert(HISTORY).values(name=c.name, alias=c.alias, at=c.at, from_version=c.from_version,
                                      to_version=c.to_version, reason=c.reason, actor=c.actor))  # fmt: skip
