"""Model registry with MLflow's vocabulary (registered model, version, alias, models:/ URIs).

Metadata lives in SQLite; each version's files live in `artifact_root/NAME/VERSION/` with a
sha256 manifest. Registration copies into a staging folder first and makes the version visible
in one SQLite transaction that also moves the folder into place, so a crash never leaves a
half-registered version visible, and concurrent registrations get distinct, gap-free numbers.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created_at TEXT NOT NULL, kind TEXT NOT NULL,
    path TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, metrics TEXT NOT NULL, params TEXT NOT NULL,
    signature TEXT NOT NULL, lineage TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL, at TEXT NOT NULL,
    from_version INTEGER, to_version INTEGER, reason TEXT NOT NULL, actor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, acquired_at TEXT NOT NULL, expires_at TEXT NOT NULL);
"""


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown model, bad URI, tampered artifact...)."""


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> str:
    """Record sha256 and size of every file; returns the manifest's own sha256."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    body = {str(p.relative_to(directory)): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files}
    (directory / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True))
    return _sha256(directory / MANIFEST)


def verify_manifest(directory: Path, expected_sha256: str) -> None:
    """Refuse an artifact whose files differ from what was registered."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        raise RegistryError(f"{directory}: {MANIFEST} is missing")
    if _sha256(manifest) != expected_sha256:
        raise RegistryError(f"{directory}: {MANIFEST} was modified after registration")
    body = json.loads(manifest.read_text())
    present = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST}
    extra = sorted(present - set(body))
    if extra:
        raise RegistryError(f"{directory}: files not in the manifest: {extra}")
    for rel, info in body.items():
        path = directory / rel
        if not path.exists():
            raise RegistryError(f"{directory}: {rel} is missing")
        if path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
            raise RegistryError(f"{directory}: {rel} does not match its checksum (tampered or truncated)")


class Registry:
    """Registered models, immutable versions, aliases with history."""

    def __init__(self, db_path: str | Path, artifact_root: str | Path) -> None:
        self.db_path = Path(db_path)
        self.root = Path(artifact_root)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit; callers close it (sqlite3's own context manager would leave it open).
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=60000")
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ----------------------------------------------------------------------------------- write

    def register(
        self,
        name: str,
        source_dir: str | Path,
        kind: str,
        metrics: dict[str, Any],
        params: dict[str, Any],
        signature: dict[str, Any],
        lineage: dict[str, Any],
    ) -> ModelVersion:
        """Copy `source_dir` in as version N+1 of `name` (N+1 visible only once complete)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise RegistryError(f"model name {name!r}: use letters, digits, '.', '_' or '-'")
        staging = self.root / name / f".staging-{uuid.uuid4().hex}"
        shutil.copytree(source_dir, staging)
        manifest_sha = write_manifest(staging)
        try:
            # One registrar at a time (IMMEDIATE lock): numbers are distinct and gap-free.
            with self._transaction() as db:
                row = db.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,)).fetchone()
                version = row[0] + 1
                final = self.root / name / str(version)
                if final.exists():  # debris of a crash between rename and commit: never registered
                    shutil.rmtree(final)
                os.replace(staging, final)
                record = ModelVersion(
                    name, version, _now(), kind, str(final), manifest_sha, metrics, params, signature, lineage
                )
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, version, record.created_at, kind, str(final), manifest_sha, json.dumps(metrics),
                     json.dumps(params), json.dumps(signature), json.dumps(lineage, default=str)),
                )  # fmt: skip
                self._before_commit(version)
            return record
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _before_commit(self, version: int) -> None:
        """Hook for crash tests; does nothing."""

    def set_alias(self, name: str, alias: str, version: int, reason: str = "", actor: str = "") -> AliasChange:
        """Point `alias` at `version` (atomically, with a history entry)."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, version)).fetchone() is None:
                raise RegistryError(f"models:/{name}/{version} does not exist")
            current = db.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (name, alias, version))
            change = AliasChange(name, alias, _now(), current[0] if current else None, version, reason, _actor(actor))
            self._log(db, change)
        return change

    def delete_alias(self, name: str, alias: str, reason: str = "", actor: str = "") -> AliasChange:
        """Remove `alias` (recorded in its history)."""
        with self._transaction() as db:
            current = db.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
            if current is None:
                raise RegistryError(f"models:/{name}@{alias} is not set")
            db.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))
            change = AliasChange(name, alias, _now(), current[0], None, reason or "deleted", _actor(actor))
            self._log(db, change)
        return change

    def rollback(self, name: str, alias: str, actor: str = "") -> AliasChange:
        """Move `alias` back to the version it held before its latest change."""
        history = self.history(name, alias)
        if not history:
            raise RegistryError(f"models:/{name}@{alias} has no history to roll back")
        last = history[-1]
        if last.from_version is None:
            return self.delete_alias(name, alias, f"rollback of change at {last.at}", actor)
        return self.set_alias(name, alias, last.from_version, f"rollback of change at {last.at}", actor)

    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> str | None:
        """Take the named lock for `ttl_s` seconds; returns None, or who holds it when taken."""
        now = datetime.now(timezone.utc)
        with self._transaction() as db:
            row = db.execute("SELECT holder, expires_at FROM locks WHERE name=?", (name,)).fetchone()
            if row is not None and datetime.fromisoformat(row[1]) > now and row[0] != holder:
                return row[0]  # held and not expired (an expired lock is a crashed holder's)
            expires = datetime.fromtimestamp(now.timestamp() + ttl_s, tz=timezone.utc)
            db.execute("INSERT OR REPLACE INTO locks VALUES (?, ?, ?, ?)",
                       (name, holder, now.isoformat(), expires.isoformat()))  # fmt: skip
        return None

    def release_lock(self, name: str, holder: str) -> None:
        """Give the lock back (only its holder can)."""
        with self._transaction() as db:
            db.execute("DELETE FROM locks WHERE name=? AND holder=?", (name, holder))

    @staticmethod
    def _log(db: sqlite3.Connection, c: AliasChange) -> None:
        db.execute(
            "INSERT INTO alias_history (name, alias, at, from_version, to_version, reason, actor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (c.name, c.alias, c.at, c.from_version, c.to_version, c.reason, c.actor),
        )

    # ------------------------------------------------------------------------------------ read

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of `name`), oldest first."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT * FROM versions WHERE (? IS NULL OR name = ?) ORDER BY name, version", (name, name)
            ).fetchall()
        return [_version(r) for r in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version's record."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
        if row is None:
            raise RegistryError(f"models:/{name}/{version} does not exist")
        return _version(row)

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version for `name`."""
        with closing(self._connect()) as db:
            return dict(
                db.execute("SELECT alias, version FROM aliases WHERE name=? ORDER BY alias", (name,)).fetchall()
            )

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Alias changes, oldest first."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT name, alias, at, from_version, to_version, reason, actor FROM alias_history "
                "WHERE name=? AND (? IS NULL OR alias=?) ORDER BY id",
                (name, alias, alias),
            ).fetchall()
        return [AliasChange(*r) for r in rows]

    def resolve(self, uri: str) -> ModelVersion:
        """models:/NAME/VERSION or models:/NAME@ALIAS to its version record."""
        match = URI.match(uri)
        if match is None:
            raise RegistryError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        name = match["name"]
        if match["version"]:
            return self.get(name, int(match["version"]))
        version = self.aliases(name).get(match["alias"])
        if version is None:
            raise RegistryError(f"{uri}: alias {match['alias']!r} is not set")
        return self.get(name, version)


def _version(row: tuple) -> ModelVersion:
    name, version, created, kind, path, sha, metrics, params, signature, lineage = row
    return ModelVersion(
        name, version, created, kind, path, sha, json.loads(metrics), json.loads(params),
        json.loads(signature), json.loads(lineage),
    )  # fmt: skip


def _actor(actor: str) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()  # USER/LOGNAME, else the account name of this process
    except (KeyError, OSError):
        return "unknown"
