"""The index of training runs: one row per run directory (from `run`, `train` or a feedback retrain)
in the registry's database, so a list of thousands of runs sorts, filters and pages in SQL.

The run directories stay the source of truth (train/rundir.py reads them); the index is rebuilt
from them by `sync_runs`, which picks up runs nobody indexed (a `train` on another machine, an
index lost with a fresh database).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyarrow import fs as pafs
from sqlalchemy import Column, Float, Index, Integer, String, Table, Text, and_, delete, func, insert, select

from ray_pipeline.errors import UserError
from ray_pipeline.registry.database import METADATA, HasDatabase
from ray_pipeline.registry.versions import VERSIONS
from ray_pipeline.storage import filesystem, join
from ray_pipeline.train.rundir import RunArtifacts, read_run

SORTABLE = ("started_at", "duration_s", "kind", "trigger", "run_id")

RUNS = Table(
    "runs", METADATA,
    Column("run_id", String(255), primary_key=True), Column("path", Text, nullable=False),
    Column("kind", String(32), nullable=False), Column("trigger", String(32), nullable=False),
    Column("started_at", String(40), nullable=False), Column("duration_s", Float),
    Column("params", Text, nullable=False), Column("metrics", Text, nullable=False),
    Column("lineage", Text, nullable=False), Column("workers", Integer), Column("nodes", Integer),
    Index("ix_runs_started", "started_at"), Index("ix_runs_kind", "kind", "started_at"),
)  # fmt: skip
RUN_METRICS = Table(
    "run_metrics", METADATA,
    Column("run_id", String(255), primary_key=True), Column("metric", String(64), primary_key=True),
    Column("value", Float), Index("ix_run_metrics", "metric", "value"),
)  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    """One indexed training run."""

    run_id: str
    path: str
    kind: str
    trigger: str
    started_at: str
    duration_s: float | None
    params: dict[str, Any]
    metrics: dict[str, float]
    lineage: dict[str, Any]
    workers: int | None
    nodes: int | None


def run_record(run_id: str, path: str, run: RunArtifacts) -> RunRecord:
    """The index row of a run directory's artifacts."""
    lineage = run.lineage
    nodes = lineage.get("worker_nodes") or []
    return RunRecord(run_id, path, run.kind, str(lineage.get("trigger", "train")), str(lineage.get("started_at", "")),
                     lineage.get("duration_s"), run.params, run.metrics, lineage, run.params.get("workers"),
                     len(set(nodes)) if nodes else None)  # fmt: skip


def index_runs(registry: HasDatabase, records: list[RunRecord]) -> None:
    """Add (or replace) runs in the index."""
    if not records:
        return
    ids = [r.run_id for r in records]
    with registry.database.transaction("runs") as db:
        db.execute(delete(RUNS).where(RUNS.c.run_id.in_(ids)))
        db.execute(delete(RUN_METRICS).where(RUN_METRICS.c.run_id.in_(ids)))
        db.execute(insert(RUNS), [
            {"run_id": r.run_id, "path": r.path, "kind": r.kind, "trigger": r.trigger, "started_at": r.started_at,
             "duration_s": r.duration_s, "params": json.dumps(r.params, default=str),
             "metrics": json.dumps(r.metrics), "lineage": json.dumps(r.lineage, default=str),
             "workers": r.workers, "nodes": r.nodes} for r in records])  # fmt: skip
        metrics = [{"run_id": r.run_id, "metric": k, "value": float(v)} for r in records
                   for k, v in r.metrics.items() if isinstance(v, (int, float))]  # fmt: skip
        if metrics:
            db.execute(insert(RUN_METRICS), metrics)


def index_run(registry: HasDatabase, run_dir: str) -> RunRecord:
    """Index one run directory (path or URI)."""
    record = run_record(run_dir.rstrip("/").rsplit("/", 1)[-1], run_dir, read_run(run_dir))
    index_runs(registry, [record])
    return record


def sync_runs(registry: HasDatabase, run_root: str) -> int:
    """Index every run directory under `run_root` the index does not hold yet; returns how many.
    Directories that are not finished runs (Ray Train's files of a run in progress) are left for later."""
    fs, root = filesystem(run_root)
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return 0
    names = {e.base_name for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")}
    with registry.database.read() as db:
        known = set(db.execute(select(RUNS.c.run_id)).scalars())
    records = []
    for name in sorted(names - known):
        path = join(run_root, name)
        try:
            records.append(run_record(name, path, read_run(path)))
        except (FileNotFoundError, UserError, ValueError):
            continue  # not (yet) a complete run directory
    index_runs(registry, records)
    return len(records)


def query_runs(registry: HasDatabase, kind: str | None = None, trigger: str | None = None, sort: str = "started_at",
               descending: bool = True, offset: int = 0, limit: int = 50) -> tuple[int, list[RunRecord]]:  # fmt: skip
    """One page of runs, filtered and sorted in SQL: (total matching, page). `sort` is a column of
    `SORTABLE` or a metric name (runs without that metric last)."""
    r = RUNS.c
    where = []
    if kind:
        where.append(r.kind == kind)
    if trigger:
        where.append(r.trigger == trigger)
    query = select(RUNS)
    if sort in SORTABLE:
        key = getattr(r, sort)
    else:
        m = RUN_METRICS.alias("m")
        query = query.outerjoin(m, and_(m.c.run_id == r.run_id, m.c.metric == sort))
        key = m.c.value
    order = key.desc().nulls_last() if descending else key.asc().nulls_last()
    query = query.where(*where).order_by(order, r.run_id).offset(max(offset, 0)).limit(max(limit, 1))
    with registry.database.read() as db:
        total = db.execute(select(func.count()).select_from(RUNS).where(*where)).scalar_one()
        return total, [_record(row) for row in db.execute(query)]


def get_runs(registry: HasDatabase, run_ids: list[str]) -> list[RunRecord]:
    """The runs with these ids, in the order asked (unknown ids left out)."""
    with registry.database.read() as db:
        rows = {row[0]: _record(row) for row in db.execute(select(RUNS).where(RUNS.c.run_id.in_(run_ids)))}
    return [rows[i] for i in run_ids if i in rows]


def run_kinds(registry: HasDatabase) -> list[str]:
    """The model kinds and triggers present in the index (filter choices)."""
    with registry.database.read() as db:
        return sorted(db.execute(select(RUNS.c.kind).distinct()).scalars())


def metric_names(registry: HasDatabase) -> list[str]:
    """Every metric some run has (sort choices)."""
    with registry.database.read() as db:
        return sorted(db.execute(select(RUN_METRICS.c.metric).distinct()).scalars())


def registered_as(registry: HasDatabase, run: RunRecord) -> list[tuple[str, int]]:
    """The versions registered from this run directory (lineage's run_dir), as (name, version)."""
    with registry.database.read() as db:
        rows = db.execute(select(VERSIONS.c.name, VERSIONS.c.version, VERSIONS.c.lineage)
                          .where(VERSIONS.c.lineage.contains(run.run_id)))  # fmt: skip
        return [(n, v) for n, v, lin in rows if json.loads(lin).get("run_dir", "").rstrip("/") == run.path.rstrip("/")]


def _record(row: Any) -> RunRecord:
    m = row._mapping
    return RunRecord(m["run_id"], m["path"], m["kind"], m["trigger"], m["started_at"], m["duration_s"],
                     json.loads(m["params"]), json.loads(m["metrics"]), json.loads(m["lineage"]), m["workers"],
                     m["nodes"])  # fmt: skip
