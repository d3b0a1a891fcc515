"""Reading what the monitor wrote, for people: the monitoring table as time series (read
incrementally: a window adds one file), the alert log and the firing alerts, the per-window reports.
The console and the CLI read monitoring through here, never the files themselves."""

from __future__ import annotations

import json
import threading
import time
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
class Series:
    """One metric's values over windows, oldest first (columns, not one object per window)."""

    window_ends: list[str]
    values: list[float]
    verdicts: list[str | None]

    def __len__(self) -> int:
        return len(self.values)


class MonitoringTable:
    """The monitoring table, kept in memory and refreshed by reading only new or rewritten window files."""

    def __init__(self, m: MonitoringConfig) -> None:
        self.directory = m.table
        self._files: dict[str, int] = {}  # path -> mtime (ns) when read
        self._parts: dict[str, pa.Table] = {}
        self._table = TABLE_SCHEMA.empty_table()
        self._lock = threading.Lock()
        self._listed = float("-inf")
        self._keys: list[tuple[str, str, int | None]] | None = None  # of the table as last read
        self._by_metric: dict[str, dict[tuple[str, int | None], pa.Table]] = {}
        self.max_age_s = 1.0
        self._background = False

    def refresh(self) -> pa.Table:
        """Read new window files; returns the whole table, sorted by window end. The folder is listed
        at most once per `max_age_s`: a page asks for many series, the listing is the cost."""
        now = time.monotonic()
        if self._background or now - self._listed < self.max_age_s:
            return self._table
        self._listed = now
        return self._reload()

    def follow(self, every_s: float) -> None:
        """Re-read in a background thread every `every_s` from now on, so readers never wait for a
        listing (a long-running reader such as the console)."""
        self._reload()
        self._background = True

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    self._reload()
                except Exception as exc:  # a file being replaced; the next round reads it
                    print(f"monitoring table {self.directory}: {exc}")

        threading.Thread(target=loop, name="monitoring-table", daemon=True).start()

    def _reload(self) -> pa.Table:
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
            self._keys = None
            self._by_metric = {}
            return self._table

    def series(self, metric: str, feature: str | None = None, version: int | None = None,
               last: int | None = None) -> Series:  # fmt: skip
        """One metric's values over windows (for one feature and served version, when given; the
        newest `last` windows when given)."""
        groups = self._groups(metric)
        parts = [g for (f, v), g in groups.items() if (feature is None or f == feature) and (version is None or v == version)]
        if not parts:
            return Series([], [], [])
        rows = pa.concat_tables(parts).sort_by([("window_end", "ascending")]) if len(parts) > 1 else parts[0]
        if last is not None and rows.num_rows > last:
            rows = rows.slice(rows.num_rows - last)
        # formatted by Arrow's cast (UTC, whole seconds): datetime objects and strftime are ten times slower
        ends = pc.cast(rows["window_end"].cast(pa.timestamp("s")), pa.string()).to_pylist()
        return Series(ends, rows["value"].to_pylist(), rows["verdict"].to_pylist())

    def _groups(self, metric: str) -> dict[tuple[str, int | None], pa.Table]:
        """The table's rows of `metric` split by (feature, model_version), computed once per table read."""
        t = self.refresh()
        with self._lock:
            if metric in self._by_metric:
                return self._by_metric[metric]
        rows = t.filter(pc.equal(t["metric"], metric)).select(["window_end", "feature", "model_version", "value", "verdict"])
        frame = rows.select(["feature", "model_version"]).to_pandas()
        groups = {}
        for (feature, version), idx in frame.groupby(["feature", "model_version"], dropna=False, sort=False).indices.items():
            key = (feature, None if version != version else int(version))  # NaN: no version
            groups[key] = rows.take(pa.array(idx))
        with self._lock:
            self._by_metric[metric] = groups
        return groups

    def keys(self) -> list[tuple[str, str, int | None]]:
        """Every (metric, feature, model_version) the table holds a series for."""
        t = self.refresh()
        if self._keys is not None:
            return self._keys
        if t.num_rows == 0:
            return []
        keys = t.select(["metric", "feature", "model_version"]).group_by(["metric", "feature", "model_version"]).aggregate([])
        self._keys = sorted(zip(*(keys[c].to_pylist() for c in ("metric", "feature", "model_version"))),
                            key=lambda k: (k[0], str(k[1]), k[2] or 0))  # fmt: skip
        return self._keys

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
