"""Replay events against a served endpoint, window by window, as live traffic would arrive; and the
labels that arrive later. Used by the demo, the walkthrough notebook and the loop tests to drive the
closed loop with the generator's drift options."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from ray_pipeline.config import PipelineConfig, SchemaConfig, SyntheticConfig
from ray_pipeline.features.pit import point_in_time_join
from ray_pipeline.features.store import read_view
from ray_pipeline.serve.client import http_json
from ray_pipeline.storage import write_bytes
from ray_pipeline.synthetic.transactions import generate_chunk, num_chunks


def generated_events(spec: SyntheticConfig) -> pa.Table:
    """The generator's rows for `spec` (in-process, every chunk), in event-time order."""
    table = pa.concat_tables([generate_chunk(spec, c) for c in range(num_chunks(spec))])
    return table.sort_by("event_ts")


def with_view_features(cfg: PipelineConfig, events: pa.Table) -> pa.Table:
    """Events with each configured feature view's values as of their time (the training set's join)."""
    import ray.data

    schema = cfg.data.schema_
    ds = ray.data.from_arrow(events)
    for name, view in cfg.features.views.items():
        ds = point_in_time_join(ds, read_view(cfg.features.store_root, name), schema.entity_key, schema.event_timestamp,
                                view.feature_names, feature_entity=view.entity, feature_ts=view.timestamp,
                                ttl_seconds=view.ttl_seconds)  # fmt: skip
    return pa.concat_tables([ray.get(ref) for ref in ds.to_arrow_refs()]) if cfg.features.views else events


def request_record(event: dict[str, Any], inputs: list[str], key: str, ts: str) -> dict[str, Any]:
    """The JSON record for one event: model inputs (NaN as null), entity key and event time."""
    rec: dict[str, Any] = {}
    for name in inputs:
        value = event.get(name)
        rec[name] = None if isinstance(value, float) and math.isnan(value) else value
    rec[key] = event[key]
    rec[ts] = event[ts].isoformat()
    return rec


def wait_for_window(window_s: float, offset: float = 0.3) -> None:
    """Sleep until `offset` seconds after the next window boundary."""
    time.sleep(window_s - time.time() % window_s + offset)


class WindowOverrun(RuntimeError):
    """A window's requests were still being sent after its boundary: its rows fell into two windows."""


def send_windows(url: str, schema: SchemaConfig, events: pa.Table, inputs: list[str], per_window: int,
                 window_s: float, per_request: int = 100, strict: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """POST `events` in consecutive windows (`per_window` each); returns their labels by request id and row.

    With `strict`, a window whose sending ran past its boundary raises WindowOverrun: a caller that
    asserts rows per window then learns the machine was too busy, not that the monitor miscounted."""
    rows = events.to_pylist()
    labels: list[dict[str, Any]] = []
    for n, w in enumerate(range(0, len(rows), per_window)):
        wait_for_window(window_s)
        started = time.time()
        chunk = rows[w : w + per_window]
        for i in range(0, len(chunk), per_request):
            part = chunk[i : i + per_request]
            body = {"records": [request_record(e, inputs, schema.entity_key, schema.event_timestamp) for e in part]}
            status, answer = http_json(url + "/predict", body)
            if status != 200:
                raise RuntimeError(f"POST {url}/predict -> {status}: {answer}")
            # the raw value, as the upstream system delivers it (`labels ingest` maps it per task)
            labels += [{"request_id": answer["request_id"], "row": j, "label": e[schema.label]}
                       for j, e in enumerate(part)]  # fmt: skip
        if strict and time.time() // window_s != started // window_s:
            raise WindowOverrun(f"window {n + 1}: sending {len(chunk):,} rows took {time.time() - started:.1f} s, "
                                f"past the {window_s:g} s window's end (the machine was too busy for this window)")  # fmt: skip
    return labels


def write_labels_csv(path: str | Path, labels: list[dict[str, Any]]) -> str:
    """Labels as an upstream system would deliver them: a CSV of request_id, row, label (path or URI)."""
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.Table.from_pylist(labels), sink)
    write_bytes(path, sink.getvalue().to_pybytes())
    return str(path)


def wait_for_version(url: str, version: int, seconds: float = 60) -> None:
    """Until the endpoint serves `version` (replicas poll the alias)."""
    deadline = time.time() + seconds
    served = None
    while time.time() < deadline:
        status, body = http_json(url + "/model", None)
        served = body.get("version") if status == 200 else None
        if served == version:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} still serves v{served}, expected v{version}")
