"""Online store: the latest feature values per entity, for serving; SQLite or Redis behind one API.

Writes are conditional (a value never replaces a newer one), so materializing blocks in any
order, or twice, leaves the newest value. TTL is applied on read: each value comes back with a
status, `present`, `expired` or `missing`.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray_pipeline.config import as_utc
from ray_pipeline.errors import UserError

PRESENT, EXPIRED, MISSING = "present", "expired", "missing"


@dataclass
class OnlineRow:
    """One entity's feature values as read from the online store."""

    entity: str
    status: str
    feature_ts: datetime | None = None
    values: dict[str, Any] = field(default_factory=dict)


def _status(ts_us: int | None, now_us: int, ttl_seconds: float | None) -> str:
    if ts_us is None:
        return MISSING
    if ttl_seconds is not None and now_us - ts_us > ttl_seconds * 1e6:
        return EXPIRED
    return PRESENT


def _now_us(now: datetime | None) -> int:
    return int(as_utc(now or datetime.now(timezone.utc)).timestamp() * 1e6)


class OnlineStore(ABC):
    """Entity -> (timestamp, values) per feature view."""

    @abstractmethod
    def write(self, view: str, rows: Iterable[tuple[str, int, dict[str, Any]]]) -> int:
        """Upsert (entity, timestamp in µs, values); older than stored is skipped. Returns rows written."""

    @abstractmethod
    def _read(self, view: str, entities: Sequence[str]) -> list[tuple[int, dict[str, Any]] | None]:
        """Stored (timestamp, values) per entity, None where absent."""

    def get(
        self,
        view: str,
        entity_ids: Sequence[Any],
        features: Sequence[str],
        ttl_seconds: float | None = None,
        now: datetime | None = None,
    ) -> list[OnlineRow]:
        """Values of `features` for each entity (in order), with present/expired/missing status."""
        keys = [str(e) for e in entity_ids]
        now_us = _now_us(now)
        out = []
        for key, stored in zip(keys, self._read(view, keys)):
            ts, values = stored if stored is not None else (None, {})
            status = _status(ts, now_us, ttl_seconds)
            shown = {f: values.get(f) for f in features} if status == PRESENT else {f: None for f in features}
            when = datetime.fromtimestamp(ts / 1e6, tz=timezone.utc) if ts is not None else None
            out.append(OnlineRow(key, status, when, shown))
        return out

    def close(self) -> None:
        """Release connections."""


class SQLiteOnlineStore(OnlineStore):
    """Embedded default: one table per view in a SQLite file (WAL, safe across processes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._tables: set[str] = set()  # views whose table this process has created or seen

    def __getstate__(self) -> dict[str, Any]:  # connections do not travel to Ray workers
        return {"path": self.path, "_conn": None, "_tables": set()}

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    @staticmethod
    def _table(view: str) -> str:
        if not view.replace("_", "").isalnum():
            raise UserError(f"feature view name {view!r}: use letters, digits and underscores")
        return f"view_{view}"

    def _ensure(self, view: str) -> str:
        # Once per view: reads sit on the serving request path, and CREATE is a write statement.
        table = self._table(view)
        if table not in self._tables:
            self._db().execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(entity TEXT PRIMARY KEY, ts INTEGER NOT NULL, payload TEXT NOT NULL)"
            )
            self._tables.add(table)
        return table

    def write(self, view: str, rows: Iterable[tuple[str, int, dict[str, Any]]]) -> int:
        table = self._ensure(view)
        data = [(str(e), int(ts), json.dumps(values)) for e, ts, values in rows]
        db = self._db()
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                f"INSERT INTO {table} (entity, ts, payload) VALUES (?, ?, ?) "
                "ON CONFLICT(entity) DO UPDATE SET ts = excluded.ts, payload = excluded.payload "
                f"WHERE excluded.ts > {table}.ts",
                data,
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return db.total_changes - before

    def _read(self, view: str, entities: Sequence[str]) -> list[tuple[int, dict[str, Any]] | None]:
        table = self._ensure(view)
        found: dict[str, tuple[int, dict[str, Any]]] = {}
        db = self._db()
        # SQLite limits bound parameters per statement; 500 is safe on every build.
        for i in range(0, len(entities), 500):
            chunk = entities[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for entity, ts, payload in db.execute(
                f"SELECT entity, ts, payload FROM {table} WHERE entity IN ({marks})", chunk
            ):
                found[entity] = (ts, json.loads(payload))
        return [found.get(e) for e in entities]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# Set the value only if nothing newer is stored: atomic inside Redis.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ts', ARGV[1], 'v', ARGV[2])
return 1
"""


class RedisOnlineStore(OnlineStore):
    """Scale-out backend: one Redis hash per (view, entity) with fields ts and v (JSON values)."""

    def __init__(self, url: str, prefix: str = "rp") -> None:
        self.url = url
        self.prefix = prefix
        self._client = None
        self._script = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "prefix": self.prefix, "_client": None, "_script": None}

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url)
            self._script = self._client.register_script(_SET_IF_NEWER)
        return self._client

    def _key(self, view: str, entity: str) -> str:
        return f"{self.prefix}:{view}:{entity}"

    def write(self, view: str, rows: Iterable[tuple[str, int, dict[str, Any]]]) -> int:
        client = self._redis()
        pipe = client.pipeline(transaction=False)
        n = 0
        for entity, ts, values in rows:
            self._script(keys=[self._key(view, str(entity))], args=[int(ts), json.dumps(values)], client=pipe)
            n += 1
        return int(sum(pipe.execute())) if n else 0

    def _read(self, view: str, entities: Sequence[str]) -> list[tuple[int, dict[str, Any]] | None]:
        pipe = self._redis().pipeline(transaction=False)
        for e in entities:
            pipe.hmget(self._key(view, e), "ts", "v")
        out = []
        for ts, payload in pipe.execute():
            out.append(None if ts is None else (int(ts), json.loads(payload)))
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def open_store(backend: str, path: str | None = None, url: str | None = None) -> OnlineStore:
    """The configured online store."""
    if backend == "sqlite":
        return SQLiteOnlineStore(path or "online.db")
    if backend == "redis":
        return RedisOnlineStore(url or "redis://localhost:6379/0")
    raise UserError(f"online store backend {backend!r}: expected sqlite or redis")
