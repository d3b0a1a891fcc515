"""The versions table: one immutable row per registered version (MLflow's vocabulary: a registered
model NAME, its versions 1, 2, ..., models:/ URIs), and its reads, paged for lists that grow."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Integer, String, Table, Text, func, insert, select

from ray_pipeline.registry.database import METADATA, HasDatabase, RegistryError

URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))$")

VERSIONS = Table(
    "versions", METADATA,
    Column("name", String(255), primary_key=True), Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", String(40), nullable=False), Column("kind", String(32), nullable=False),
    Column("path", Text, nullable=False), Column("manifest_sha256", String(64), nullable=False),
    Column("metrics", Text, nullable=False), Column("params", Text, nullable=False),
    Column("signature", Text, nullable=False), Column("lineage", Text, nullable=False),
)  # fmt: skip


@dataclass(frozen=True)
class ModelVersion:
    """One immutable registered version."""

    name: str
    version: int
    created_at: str
    kind: str
    path: str
    manifest_sha256: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    signature: dict[str, Any]
    lineage: dict[str, Any]

    @property
    def uri(self) -> str:
        """models:/NAME/VERSION."""
        return f"models:/{self.name}/{self.version}"


def version_of(row: Any) -> ModelVersion:
    """A versions-table row as its record."""
    name, version, created, kind, path, sha, metrics, params, signature, lineage = tuple(row)
    return ModelVersion(
        name, version, created, kind, path, sha, json.loads(metrics), json.loads(params),
        json.loads(signature), json.loads(lineage),
    )  # fmt: skip


def next_version(db: Connection, name: str) -> int:
    """The number the next version of `name` gets (inside the registrar's transaction: gap-free)."""
    latest = db.execute(select(func.coalesce(func.max(VERSIONS.c.version), 0)).where(VERSIONS.c.name == name))
    return latest.scalar_one() + 1


def insert_version(db: Connection, record: ModelVersion) -> None:
    """Add `record`'s row (visible when the transaction commits)."""
    db.execute(insert(VERSIONS).values(
        name=record.name, version=record.version, created_at=record.created_at, kind=record.kind, path=record.path,
        manifest_sha256=record.manifest_sha256, metrics=json.dumps(record.metrics), params=json.dumps(record.params),
        signature=json.dumps(record.signature), lineage=json.dumps(record.lineage, default=str),
    ))  # fmt: skip


def get_version(db: Connection, name: str, version: int) -> ModelVersion:
    """One version's record, or a RegistryError naming it."""
    row = db.execute(select(VERSIONS).where(VERSIONS.c.name == name, VERSIONS.c.version == version)).first()
    if row is None:
        raise RegistryError(f"models:/{name}/{version} does not exist")
    return version_of(row)


def all_versions(registry: HasDatabase, name: str | None = None) -> list[ModelVersion]:
    """Every version (of `name`), oldest first."""
    query = select(VERSIONS).order_by(VERSIONS.c.name, VERSIONS.c.version)
    if name is not None:
        query = query.where(VERSIONS.c.name == name)
    with registry.database.read() as db:
        return [version_of(r) for r in db.execute(query)]


def model_names(registry: HasDatabase) -> list[str]:
    """Registered model names."""
    with registry.database.read() as db:
        return sorted(db.execute(select(VERSIONS.c.name).distinct()).scalars())


def versions_page(registry: HasDatabase, name: str, offset: int = 0, limit: int = 50,
                  kind: str | None = None) -> tuple[int, list[ModelVersion]]:  # fmt: skip
    """(total, newest-first page) of `name`'s versions."""
    where = [VERSIONS.c.name == name] + ([VERSIONS.c.kind == kind] if kind else [])
    query = select(VERSIONS).where(*where).order_by(VERSIONS.c.version.desc()).offset(offset).limit(limit)
    with registry.database.read() as db:
        total = db.execute(select(func.count()).select_from(VERSIONS).where(*where)).scalar_one()
        return total, [version_of(r) for r in db.execute(query)]
