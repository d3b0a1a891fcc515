"""Per-window HTML report with PNG plots: reference against current distributions of drifted
inputs, the score distribution, and the latency breakdown by stage."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from ray_pipeline.monitor.collect import WindowData
from ray_pipeline.storage import join, local_dir


def _bars(path: Path, labels: list[str], ref: list[float], cur: list[float], title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the process's backend alone

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ref, width=0.4, label="reference")
    ax.bar(x + 0.2, cur, width=0.4, label="current")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _shares(counts: list[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def write_report(directory: str, data: WindowData, rows: list[dict[str, Any]], refs: dict[str, Any],
                 alerts: list[dict[str, Any]]) -> str:  # fmt: skip
    """Write `index.html` and its PNGs into `directory` (path or URI); returns the HTML path."""
    with local_dir(directory) as out:  # matplotlib writes local files: uploaded for a URI
        _write_report(out, data, rows, refs, alerts)
    return join(directory, "index.html")


def _write_report(out: Path, data: WindowData, rows: list[dict[str, Any]], refs: dict[str, Any],
                  alerts: list[dict[str, Any]]) -> None:  # fmt: skip
    parts = [f"<h1>Window {data.start.isoformat()} .. {data.end.isoformat()}</h1>",
             f"<p>{data.rows:,} predictions from {data.files} log file(s)"
             f"{'; EMPTY window' if data.rows == 0 else ''}; skipped files: {len(data.skipped)}</p>"]  # fmt: skip
    for s in data.skipped:
        parts.append(f"<p>skipped {html.escape(s['file'])}: {html.escape(s['error'])}</p>")
    if alerts:
        parts.append("<h2>Alerts</h2><ul>" + "".join(
            f"<li>{html.escape(a['status'])} {html.escape(a['rule'])}: {html.escape(a['summary'])} "
            f"(value {a['value']:.4g})</li>" for a in alerts) + "</ul>")  # fmt: skip
    drifted = {(r["model_version"], r["feature"]) for r in rows if r["verdict"] in ("warn", "drift")}
    for version, part in sorted(data.versions.items()):
        ref = refs.get(version)
        if ref is None:
            continue
        for name, cur in part["numeric"].items():
            if (int(version), name) in drifted:
                png = f"v{version}-{name}.png"
                labels = [f"<{e:.3g}" for e in ref["numeric"][name]["edges"]] + ["rest"]
                _bars(out / png, labels, ref["numeric"][name]["shares"], _shares(cur["counts"]), f"v{version} {name}")
                parts.append(f'<h3>{html.escape(name)}</h3><img src="{png}">')
        for name, cur in part["categorical"].items():
            if (int(version), name) in drifted:
                png = f"v{version}-{name}.png"
                r = ref["categorical"][name]
                top = list(r["top"])[:15]
                present = sum(cur["counts"].values()) or 1
                current = [cur["counts"].get(k, 0) / present for k in top]
                _bars(out / png, top + ["other"], [r["top"][k] for k in top] + [1 - sum(r["top"][k] for k in top)],
                      current + [1 - sum(current)], f"v{version} {name}")  # fmt: skip
                parts.append(f'<h3>{html.escape(name)}</h3><img src="{png}">')
        if part["score"] is not None:
            png = f"v{version}-score.png"
            labels = [f"<{e:.3f}" for e in ref["score"]["edges"]] + ["rest"]
            _bars(out / png, labels, ref["score"]["shares"], _shares(part["score"]["counts"]), f"v{version} scores")
            parts.append(f'<h3>scores, v{version}</h3><img src="{png}">')
    lat = {r["feature"]: r["value"] for r in rows if r["metric"] == "latency_p50_ms"}
    if lat:
        _bars(out / "latency.png", list(lat), list(lat.values()), [0.0] * len(lat), "median latency per stage (ms)")
        parts.append('<h2>Latency breakdown (p50 ms)</h2><img src="latency.png">')
    parts.append("<h2>All values</h2><table border=1><tr><th>metric</th><th>feature</th><th>version</th>"
                 "<th>value</th><th>verdict</th></tr>")  # fmt: skip
    for r in rows:
        parts.append(f"<tr><td>{r['metric']}</td><td>{html.escape(str(r['feature']))}</td>"
                     f"<td>{r['model_version'] if r['model_version'] is not None else ''}</td>"
                     f"<td>{r['value']:.6g}</td><td>{r['verdict'] or ''}</td></tr>")  # fmt: skip
    parts.append("</table>")
    (out / "index.html").write_text("<html><body>" + "\n".join(parts) + "</body></html>")
