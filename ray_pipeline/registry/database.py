"""The registry's database: one SQLAlchemy schema, read connections and locked write transactions.

A SQLite file by default, PostgreSQL (`postgresql+psycopg://...`) when several nodes must reach it.
Writers for one model are serialised (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped
advisory lock per name), so concurrent registrations get distinct, gap-free numbers and an alias
move checks its gates against the holder it replaces. Each table group lives in the module that
owns its queries (versions, aliases, locks, attempts, traffic, runs), all on `METADATA`.
"""

from __future__ import annotations

import getpass
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.pool import NullPool

# The same tables (names, columns, order) earlier releases created with raw SQLite DDL, so an
# existing registry.db opens unchanged.
METADATA = MetaData()


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown model, bad URI, tampered artifact...)."""


def db_url(db: str | Path) -> str:
    """A SQLAlchemy URL for `db`: URLs pass through, a plain path means a SQLite file."""
    db = str(db)
    return db if "://" in db else f"sqlite:///{os.path.abspath(db)}"


def now() -> str:
    """The current UTC time as the registry stores it (ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def actor_name(actor: str) -> str:
    """Who made a change: `actor` when given, else the account running this process."""
    if actor:
        return actor
    try:
        return getpass.getuser()  # USER/LOGNAME, else the account name of this process
    except (KeyError, OSError):
        return "unknown"


class Database:
    """Engines on the registry's database: `read()` connections and `transaction(*locks)`."""

    def __init__(self, url: str, tables: list[Table]) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self._writer, self._reader = _sqlite_engines(url)
        else:
            self._writer = self._reader = create_engine(url, pool_pre_ping=True)
        with self.transaction("schema") as db:  # processes starting together: one creates the tables
            METADATA.create_all(db, tables=tables, checkfirst=True)

    @contextmanager
    def transaction(self, *locks: str) -> Iterator[Connection]:
        """A write transaction holding the write lock (SQLite) or each named advisory lock (PostgreSQL)."""
        with self.reachable(), self._writer.begin() as db:
            if db.dialect.name == "postgresql":
                for name in sorted(locks):  # sorted: two writers never wait on each other in a cycle
                    db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(name)})
            yield db

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read connection."""
        with self.reachable(), self._reader.connect() as db:
            yield db

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """Database failures (server down or unreachable, connection lost mid-transaction) as a
        RegistryError naming the database; the transaction is rolled back or never committed."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            where = make_url(self.url).render_as_string(hide_password=True)
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise RegistryError(f"registry database {where}: {reason}") from exc


class HasDatabase(Protocol):
    """What the table modules take: the Registry facade, or anything holding its Database."""

    database: Database


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
