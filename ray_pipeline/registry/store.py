"""Model registry with MLflow's vocabulary (registered model, version, alias, models:/ URIs).

Metadata lives in a SQL database through SQLAlchemy Core: a SQLite file by default, PostgreSQL
(`postgresql+psycopg://...`) when several nodes must reach it. Each version's files live under
`artifact_root` (a directory or an object-store URI) with a sha256 manifest. Registration copies
into a unique staging prefix first and makes the version visible in one transaction: on a local
disk that transaction also renames the folder to `NAME/VERSION/`; an object store has no atomic
rename, so there the unique prefix stays where the version lives and the committed row is what
makes it visible. Either way a crash never leaves a half-registered version visible, and files
are checked against the manifest whenever a version is loaded (`checkout`).

Writers for one model are serialised (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a
transaction-scoped advisory lock per model name), so concurrent registrations get distinct,
gap-free numbers and an alias move checks its gates against the holder it replaces.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.pool import NullPool

from ray_pipeline.storage import (
    copy_tree,
    delete_tree,
    describe,
    file_sha256,
    filesystem,
    is_local,
    join,
    list_files,
    read_bytes,
    write_text,
)

MANIFEST = "MANIFEST.json"
URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))$")

# The same tables (names, columns, order) earlier releases created with raw SQLite DDL, so an
# existing registry.db opens unchanged.
_META = MetaData()
VERSIONS = Table(
    "versions", _META,
    Column("name", String(255), primary_key=True), Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", String(40), nullable=False), Column("kind", String(32), nullable=False),
    Column("path", Text, nullable=False), Column("manifest_sha256", String(64), nullable=False),
    Column("metrics", Text, nullable=False), Column("params", Text, nullable=False),
    Column("signature", Text, nullable=False), Column("lineage", Text, nullable=False),
)  # fmt: skip
ALIASES = Table(
    "aliases", _META,
    Column("name", String(255), primary_key=True), Column("alias", String(255), primary_key=True),
    Column("version", Integer, nullable=False),
)  # fmt: skip
HISTORY = Table(
    "alias_history", _META,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(255), nullable=False),
    Column("alias", String(255), nullable=False), Column("at", String(40), nullable=False),
    Column("from_version", Integer), Column("to_version", Integer),
    Column("reason", Text, nullable=False), Column("actor", String(255), nullable=False),
)  # fmt: skip
LOCKS = Table(
    "locks", _META,
    Column("name", String(255), primary_key=True), Column("holder", String(255), nullable=False),
    Column("acquired_at", String(40), nullable=False), Column("expires_at", String(40), nullable=False),
)  # fmt: skip
# Every promotion attempt, passed or refused, with the gate report (registry/attempts.py).
ATTEMPTS = Table(
    "promotion_attempts", _META,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False), Column("alias", String(255), nullable=False),
    Column("at", String(40), nullable=False), Column("against_version", Integer),
    Column("outcome", String(16), nullable=False), Column("report", Text, nullable=False),
    Column("actor", String(255), nullable=False),
    Index("ix_attempts_version", "name", "version"),
)  # fmt: skip
# Traffic split settings per model, append-only (the newest row holds; registry/traffic.py).
TRAFFIC = Table(
    "traffic_settings", _META,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(255), nullable=False),
    Column("mode", String(16), nullable=False), Column("canary_share", Float, nullable=False),
    Column("at", String(40), nullable=False), Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False),
)  # fmt: skip
# The index of training runs (registry/runs.py): the run directories stay the source of truth.
RUNS = Table(
    "runs", _META,
    Column("run_id", String(255), primary_key=True), Column("path", Text, nullable=False),
    Column("kind", String(32), nullable=False), Column("trigger", String(32), nullable=False),
    Column("started_at", String(40), nullable=False), Column("duration_s", Float),
    Column("params", Text, nullable=False), Column("metrics", Text, nullable=False),
    Column("lineage", Text, nullable=False), Column("workers", Integer), Column("nodes", Integer),
    Index("ix_runs_started", "started_at"), Index("ix_runs_kind", "kind", "started_at"),
)  # fmt: skip
RUN_METRICS = Table(
    "run_metrics", _META,
    Column("run_id", String(255), primary_key=True), Column("metric", String(64), primary_key=True),
    Column("value", Float), Index("ix_run_metrics", "metric", "value"),
)  # fmt: skip


def db_url(db: str | Path) -> str:
    """A SQLAlchemy URL for `db`: URLs pass through, a plain path means a SQLite file."""
    db = str(db)
    return db if "://" in db else f"sqlite:///{os.path.abspath(db)}"


def _sqlite_engines(url: str) -> tuple[Engine, Engine]:
    """(writer, reader) engines on one SQLite file: writers take the write lock at BEGIN."""
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def make(begin: str) -> Engine:
        # NullPool: a connection per operation, as safe across fork() as the sqlite3 code it replaces.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi, _record) -> None:
            dbapi.isolation_level = None  # let the "begin" hook below issue BEGIN itself
            cur = dbapi.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql(begin)

        return engine

    return make("BEGIN IMMEDIATE"), make("BEGIN")


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


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


def write_manifest(directory: str | Path) -> str:
    """Record sha256 and size of every file (path or URI); returns the manifest's own sha256."""
    files = {rel: size for rel, size in list_files(directory).items() if rel != MANIFEST}
    body = {rel: {"sha256": file_sha256(join(directory, rel)), "bytes": size} for rel, size in files.items()}
    text_ = json.dumps(body, indent=2, sort_keys=True)
    write_text(join(directory, MANIFEST), text_)
    return hashlib.sha256(text_.encode()).hexdigest()


def verify_manifest(directory: str | Path, expected_sha256: str) -> None:
    """Refuse an artifact whose files differ from what was registered."""
    present = list_files(directory)
    if MANIFEST not in present:
        raise RegistryError(f"{directory}: {MANIFEST} is missing")
    manifest = read_bytes(join(directory, MANIFEST))
    if hashlib.sha256(manifest).hexdigest() != expected_sha256:
        raise RegistryError(f"{directory}: {MANIFEST} was modified after registration")
    body = json.loads(manifest)
    extra = sorted(set(present) - set(body) - {MANIFEST})
    if extra:
        raise RegistryError(f"{directory}: files not in the manifest: {extra}")
    for rel, info in body.items():
        if rel not in present:
            raise RegistryError(f"{directory}: {rel} is missing")
        if present[rel] != info["bytes"] or file_sha256(join(directory, rel)) != info["sha256"]:
            raise RegistryError(f"{directory}: {rel} does not match its checksum (tampered or truncated)")


def _cache_root() -> Path:
    """Where versions downloaded from an object store are kept (XDG cache directory)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ray-pipeline" / "models"


class Registry:
    """Registered models, immutable versions, aliases with history."""

    def __init__(self, db: str | Path, artifact_root: str | Path) -> None:
        self.db = db_url(db)
        self.root = str(artifact_root)  # a directory or an object-store URI
        with self._store():
            fs, root = filesystem(self.root)
            fs.create_dir(root, recursive=True)
        if self.db.startswith("sqlite"):
            self._writer, self._reader = _sqlite_engines(self.db)
        else:
            self._writer = self._reader = create_engine(self.db, pool_pre_ping=True)
        with self._transaction("schema") as db:  # processes starting together: one creates the tables
            _META.create_all(db, checkfirst=True)

    def __getstate__(self) -> dict[str, Any]:
        # Engines hold connections and locks: a copy in another process builds its own.
        return {"db": self.db, "root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["db"], state["root"])  # type: ignore[misc]

    @contextmanager
    def _transaction(self, *locks: str) -> Iterator[Connection]:
        """A write transaction holding the write lock (SQLite) or each named advisory lock (PostgreSQL)."""
        with self._reachable(), self._writer.begin() as db:
            if db.dialect.name == "postgresql":
                for name in sorted(locks):  # sorted: two writers never wait on each other in a cycle
                    db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(name)})
            yield db

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read connection."""
        with self._reachable(), self._reader.connect() as db:
            yield db

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Database failures (server down or unreachable, connection lost mid-transaction) as a
        RegistryError naming the database; the transaction is rolled back or never committed."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            where = make_url(self.db).render_as_string(hide_password=True)
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise RegistryError(f"registry database {where}: {reason}") from exc

    @contextmanager
    def _store(self) -> Iterator[None]:
        """Artifact-store failures (unreachable endpoint, missing bucket, no permission) as a
        RegistryError naming the store; a missing file keeps its own FileNotFoundError."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryError(f"registry artifact store {describe(self.root)}: {reason}") from exc

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
        local = is_local(self.root)
        # On a local disk a hidden staging folder renamed at commit; on an object store the unique
        # prefix is where the version stays (no atomic rename), made visible by the committed row.
        staging = join(self.root, name, f".staging-{uuid.uuid4().hex}" if local else uuid.uuid4().hex)
        committed = False
        try:
            with self._store():
                copy_tree(source_dir, staging)
                manifest_sha = write_manifest(staging)
            # One registrar per model at a time: numbers are distinct and gap-free.
            with self._transaction(f"model:{name}") as db:
                latest = db.execute(select(func.coalesce(func.max(VERSIONS.c.version), 0))
                                    .where(VERSIONS.c.name == name)).scalar_one()  # fmt: skip
                version = latest + 1
                final = staging
                if local:
                    final = join(self.root, name, str(version))
                    delete_tree(final)  # debris of a crash between rename and commit: never registered
                    os.replace(filesystem(staging)[1], filesystem(final)[1])
                record = ModelVersion(
                    name, version, _now(), kind, final, manifest_sha, metrics, params, signature, lineage
                )
                db.execute(insert(VERSIONS).values(
                    name=name, version=version, created_at=record.created_at, kind=kind, path=final,
                    manifest_sha256=manifest_sha, metrics=json.dumps(metrics), params=json.dumps(params),
                    signature=json.dumps(signature), lineage=json.dumps(lineage, default=str),
                ))  # fmt: skip
                self._before_commit(version)
            committed = True
            return record
        finally:
            if not committed or local:  # a local staging folder is gone once renamed
                try:
                    delete_tree(staging)
                except OSError:
                    pass  # the store is what failed: nothing refers to these files

    def _before_commit(self, version: int) -> None:
        """Hook for crash tests; does nothing."""

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        reason: str = "",
        actor: str = "",
        check: Callable[[ModelVersion, ModelVersion | None], str] | None = None,
    ) -> AliasChange:
        """Point `alias` at `version` (atomically, with a history entry).

        `check(candidate, current_holder)` runs inside the same transaction, against the holder
        this move replaces; it returns the reason to record, or raises to leave the alias as is.
        """
        with self._transaction(f"model:{name}") as db:
            candidate = self._get(db, name, version)
            current = self._alias(db, name, alias)
            if check is not None:
                holder = self._get(db, name, current) if current is not None else None
                reason = check(candidate, holder)
            db.execute(delete(ALIASES).where(ALIASES.c.name == name, ALIASES.c.alias == alias))
            db.execute(insert(ALIASES).values(name=name, alias=alias, version=version))
            change = AliasChange(name, alias, _now(), current, version, reason, _actor(actor))
            self._log(db, change)
        return change

    def delete_alias(self, name: str, alias: str, reason: str = "", actor: str = "") -> AliasChange:
        """Remove `alias` (recorded in its history)."""
        with self._transaction(f"model:{name}") as db:
            current = self._alias(db, name, alias)
            if current is None:
                raise RegistryError(f"models:/{name}@{alias} is not set")
            db.execute(delete(ALIASES).where(ALIASES.c.name == name, ALIASES.c.alias == alias))
            change = AliasChange(name, alias, _now(), current, None, reason or "deleted", _actor(actor))
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
        with self._transaction(f"lock:{name}") as db:
            row = db.execute(select(LOCKS.c.holder, LOCKS.c.expires_at).where(LOCKS.c.name == name)).first()
            if row is not None and datetime.fromisoformat(row[1]) > now and row[0] != holder:
                return row[0]  # held and not expired (an expired lock is a crashed holder's)
            expires = datetime.fromtimestamp(now.timestamp() + ttl_s, tz=timezone.utc)
            db.execute(delete(LOCKS).where(LOCKS.c.name == name))
            db.execute(insert(LOCKS).values(name=name, holder=holder, acquired_at=now.isoformat(),
                                            expires_at=expires.isoformat()))  # fmt: skip
        return None

    def release_lock(self, name: str, holder: str) -> None:
        """Give the lock back (only its holder can)."""
        with self._transaction(f"lock:{name}") as db:
            db.execute(delete(LOCKS).where(LOCKS.c.name == name, LOCKS.c.holder == holder))

    @staticmethod
    def _log(db: Connection, c: AliasChange) -> None:
        db.execute(insert(HISTORY).values(name=c.name, alias=c.alias, at=c.at, from_version=c.from_version,
                                          to_version=c.to_version, reason=c.reason, actor=c.actor))  # fmt: skip

    # ------------------------------------------------------------------------------------ read

    @staticmethod
    def _get(db: Connection, name: str, version: int) -> ModelVersion:
        row = db.execute(select(VERSIONS).where(VERSIONS.c.name == name, VERSIONS.c.version == version)).first()
        if row is None:
            raise RegistryError(f"models:/{name}/{version} does not exist")
        return _version(tuple(row))

    @staticmethod
    def _alias(db: Connection, name: str, alias: str) -> int | None:
        return db.execute(select(ALIASES.c.version).where(ALIASES.c.name == name, ALIASES.c.alias == alias)).scalar()

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of `name`), oldest first."""
        query = select(VERSIONS).order_by(VERSIONS.c.name, VERSIONS.c.version)
        if name is not None:
            query = query.where(VERSIONS.c.name == name)
        with self._read() as db:
            return [_version(tuple(r)) for r in db.execute(query)]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version's record."""
        with self._read() as db:
            return self._get(db, name, version)

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version for `name`."""
        query = select(ALIASES.c.alias, ALIASES.c.version).where(ALIASES.c.name == name).order_by(ALIASES.c.alias)
        with self._read() as db:
            return {a: v for a, v in db.execute(query)}

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Alias changes, oldest first."""
        h = HISTORY.c
        query = select(h.name, h.alias, h.at, h.from_version, h.to_version, h.reason, h.actor).where(h.name == name)
        if alias is not None:
            query = query.where(h.alias == alias)
        with self._read() as db:
            return [AliasChange(*r) for r in db.execute(query.order_by(h.id))]

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

    def checkout(self, record: ModelVersion) -> Path:
        """A local directory holding the version's files, checked against its manifest: the
        version's own folder on a local store, a cached download from an object store."""
        with self._store():
            if is_local(record.path):
                local = Path(filesystem(record.path)[1])
                verify_manifest(local, record.manifest_sha256)
                return local
            local = _cache_root() / record.name / f"{record.version}-{record.manifest_sha256[:16]}"
            if local.exists():
                try:
                    verify_manifest(local, record.manifest_sha256)
                    return local
                except RegistryError:
                    delete_tree(local)  # a damaged cached copy: fetch it again
            tmp = local.with_name(f".{local.name}-{uuid.uuid4().hex}")
            copy_tree(record.path, tmp)
            try:
                verify_manifest(tmp, record.manifest_sha256)
            except RegistryError as exc:
                delete_tree(tmp)
                raise RegistryError(f"{record.uri} stored at {describe(record.path)}: {exc}") from None
            try:
                os.replace(tmp, local)
            except OSError:  # another process put the same version there first
                delete_tree(tmp)
            return local


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
