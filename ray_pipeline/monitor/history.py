"""Reading what the monitor wrote, for people: the monitoring table as time series (read
incrementally: a window adds one file), the alert log and the firing alerts, the per-window reports.
The console and the CLI read monitoring through here, never the files themselves."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ray_pipeline.config import MonitoringConfig
from ray_pipeline.monitor.job import TABLE_SCHEMA
from ray_pipeline.storage import filesystem, join, read_text


@dataclass(frozen=True)
class Point:
    """One window's value of a metric."""

    window_end: str
    value: float
    verdict: str | None


class MonitoringTable:
    """The monitoring table, kept in memory and refreshed by reading only new or rewritten window files."""

    def __init__(self, m: MonitoringConfig) -> None:
        self.directory = m.table
        self._files: dict[str, int] = {}  # path -> mtime (ns) when read
        self._parts: dict[str, pa.Table] = {}
        self._table = TABLE_SCHEMA.empty_table()
        self._lock = threading.Lock()

    def refresh(self) -> pa.Table:
        """Read new window files; returns the whole table, sorted by window end."""
        fs, root = filesystem(self.directory)
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        except OSError:
            infos = []
        current = {i.path: i.mtime_ns or 0 for i in infos if i.base_name.endswith(".parquet")
                   and not i.base_name.startswith(".")}  # fmt: skip
        with self._lock:
            changed = [p for p, t in current.items() if self._files.get(p) != t]
            gone = set(self._files) - set(current)
            if not changed and not gone:
                return self._table
            for path in gone:
                self._files.pop(path, None)
                self._parts.pop(path, None)
            for path in changed:
                self._parts[path] = pq.read_table(path, filesystem=fs, schema=TABLE_SCHEMA)
                self._files[path] = current[path]
            table = pa.concat_tables(list(self._parts.values())) if self._parts else TABLE_SCHEMA.empty_table()
            self._table = table.sort_by([("window_end", "ascending")])
            return self._table

    def series(self, metric: str, feature: str | None = None, version: int | None = None) -> list[Point]:
        """One metric's values over windows (for one feature and served version, when given)."""
        t = self.refresh()
        mask = pc.equal(t["metric"], metric)
        if feature is not None:
            mask = pc.and_(mask, pc.equal(t["feature"], feature))
        if version is not None:
            mask = pc.and_(mask, pc.equal(t["model_version"], version))
        rows = t.filter(mask)
        ends = [e.isoformat() for e in rows["window_end"].to_pylist()]
        return [Point(e, float(v), d) for e, v, d in zip(ends, rows["value"].to_pylist(), rows["verdict"].to_pylist())]

    def keys(self) -> list[tuple[str, str, int | None]]:
        """Every (metric, feature, model_version) the table holds a series for."""
        t = self.refresh()
        if t.num_rows == 0:
            return []
        keys = t.select(["metric", "feature", "model_version"]).group_by(["metric", "feature", "model_version"]).aggregate([])
        return sorted(zip(*(keys[c].to_pylist() for c in ("metric", "feature", "model_version"))),
                      key=lambda k: (k[0], str(k[1]), k[2] or 0))  # fmt: skip

    def last_window(self) -> tuple[str, list[dict[str, Any]]] | None:
        """The newest window's end and its rows, or None before the first window."""
        t = self.refresh()
        if t.num_rows == 0:
            return None
        end = t["window_end"][-1]
        rows = t.filter(pc.equal(t["window_end"], end)).to_pylist()
        return end.as_py().isoformat(), rows

    def windows(self) -> int:
        """How many windows the table holds."""
        t = self.refresh()
        return len(pc.unique(t["window_end"])) if t.num_rows else 0


def alert_log(m: MonitoringConfig, limit: int = 200) -> list[dict[str, Any]]:
    """The newest `limit` alert events (fired and resolved), newest first."""
    text = read_text(m.alert_log) or ""
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in reversed(lines[-limit:])]


def active_alerts(m: MonitoringConfig) -> list[dict[str, Any]]:
    """The alerts firing now."""
    text = read_text(m.active_alerts)
    return json.loads(text) if text else []


def report_windows(m: MonitoringConfig, limit: int = 50) -> list[str]:
    """The newest per-window report folders (their names are the window starts), newest first."""
    fs, root = filesystem(m.reports)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory), reverse=True)
    return names[:limit]


def report_file(m: MonitoringConfig, window: str, name: str) -> str:
    """The path of one file of a window's report (names checked by the caller)."""
    return join(m.reports, window, name)
