"""Paged reads of the registry for lists that grow without bound (versions, alias history)."""

from __future__ import annotations

from sqlalchemy import func, select

from ray_pipeline.registry.store import HISTORY, VERSIONS, AliasChange, ModelVersion, Registry, _version


def model_names(registry: Registry) -> list[str]:
    """Registered model names."""
    with registry._read() as db:
        return sorted(db.execute(select(VERSIONS.c.name).distinct()).scalars())


def versions_page(registry: Registry, name: str, offset: int = 0, limit: int = 50,
                  kind: str | None = None) -> tuple[int, list[ModelVersion]]:  # fmt: skip
    """(total, newest-first page) of `name`'s versions."""
    where = [VERSIONS.c.name == name] + ([VERSIONS.c.kind == kind] if kind else [])
    query = select(VERSIONS).where(*where).order_by(VERSIONS.c.version.desc()).offset(offset).limit(limit)
    with registry._read() as db:
        total = db.execute(select(func.count()).select_from(VERSIONS).where(*where)).scalar_one()
        return total, [_version(tuple(r)) for r in db.execute(query)]


def history_page(registry: Registry, name: str, offset: int = 0, limit: int = 50, alias: str | None = None,
                 version: int | None = None) -> tuple[int, list[AliasChange]]:  # fmt: skip
    """(total, newest-first page) of alias changes of `name` (to or from `version`, when given)."""
    h = HISTORY.c
    where = [h.name == name] + ([h.alias == alias] if alias else [])
    if version is not None:
        where.append((h.to_version == version) | (h.from_version == version))
    query = (select(h.name, h.alias, h.at, h.from_version, h.to_version, h.reason, h.actor).where(*where)
             .order_by(h.id.desc()).offset(offset).limit(limit))  # fmt: skip
    with registry._read() as db:
        total = db.execute(select(func.count()).select_from(HISTORY).where(*where)).scalar_one()
        return total, [AliasChange(*r) for r in db.execute(query)]
