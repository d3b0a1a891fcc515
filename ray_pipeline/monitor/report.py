"""Per-window HTML report with PNG plots: reference against current distributions of drifted
inputs, the score distribution, and the latency breakdown by stage."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ray_pipeline.monitor.collect import WindowData
from ray_pipeline.storage import join, local_dir


@dataclass(frozen=True)
class BarChart:
    """One chart of a report, as data: what the PNG draws, so a test can hold it against the table."""

    file: str
    title: str
    labels: list[str]
    series: dict[str, list[float]]  # legend -> one value per label

    def draw(self, out: Path) -> None:
        """Write the chart as a PNG into `out`."""
        from matplotlib.figure import Figure  # no pyplot: leaves the process's backend alone

        fig = Figure(figsize=(6, 3))
        ax = fig.subplots()
        x = np.arange(len(self.labels))
        width = 0.8 / max(len(self.series), 1)
        for i, (name, values) in enumerate(self.series.items()):
            ax.bar(x + (i - (len(self.series) - 1) / 2) * width, values, width=width, label=name)
        ax.set_xticks(x, self.labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(self.title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / self.file, dpi=80)


def _shares(counts: list[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def latency_chart(rows: list[dict[str, Any]]) -> BarChart | None:
    """The window's own p50 and p99 per stage, from its table rows (None without latency rows)."""
    p50 = {r["feature"]: r["value"] for r in rows if r["metric"] == "latency_p50_ms"}
    p99 = {r["feature"]: r["value"] for r in rows if r["metric"] == "latency_p99_ms"}
    if not p50:
        return None
    stages = list(p50)
    return BarChart("latency.png", "latency per stage (ms)", stages,
                    {"p50": [p50[s] for s in stages], "p99": [p99.get(s, float("nan")) for s in stages]})  # fmt: skip


def report_charts(data: WindowData, rows: list[dict[str, Any]], refs: dict[str, Any]) -> list[BarChart]:
    """Every chart of a window's report: reference vs current shares for each drifted input and the
    scores, and the latency breakdown."""
    charts = []
    drifted = {(r["model_version"], r["feature"]) for r in rows if r["verdict"] in ("warn", "drift")}
    for version, part in sorted(data.versions.items()):
        ref = refs.get(version)
        if ref is None:
            continue
        for name, cur in part["numeric"].items():
            if (int(version), name) in drifted:
                labels = [f"<{e:.3g}" for e in ref["numeric"][name]["edges"]] + ["rest"]
                series = {"reference": list(ref["numeric"][name]["shares"]), "current": _shares(cur["counts"])}
                charts.append(BarChart(f"v{version}-{name}.png", f"v{version} {name}", labels, series))
        for name, cur in part["categorical"].items():
            if (int(version), name) in drifted:
                r = ref["categorical"][name]
                top = list(r["top"])[:15]
                present = sum(cur["counts"].values()) or 1
                current = [cur["counts"].get(k, 0) / present for k in top]
                reference = [r["top"][k] for k in top]
                series = {"reference": reference + [1 - sum(reference)], "current": current + [1 - sum(current)]}
                charts.append(BarChart(f"v{version}-{name}.png", f"v{version} {name}", top + ["other"], series))
        if part["score"] is not None:
            labels = [f"<{e:.3f}" for e in ref["score"]["edges"]] + ["rest"]
            series = {"reference": list(ref["score"]["shares"]), "current": _shares(part["score"]["counts"])}
            charts.append(BarChart(f"v{version}-score.png", f"v{version} scores", labels, series))
    latency = latency_chart(rows)
    return charts + ([latency] if latency else [])


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
    for chart in report_charts(data, rows, refs):
        chart.draw(out)
        parts.append(f'<h3>{html.escape(chart.title)}</h3><img src="{chart.file}">')
    parts.append("<h2>All values</h2><table border=1><tr><th>metric</th><th>feature</th><th>version</th>"
                 "<th>value</th><th>verdict</th></tr>")  # fmt: skip
    for r in rows:
        parts.append(f"<tr><td>{r['metric']}</td><td>{html.escape(str(r['feature']))}</td>"
                     f"<td>{r['model_version'] if r['model_version'] is not None else ''}</td>"
                     f"<td>{r['value']:.6g}</td><td>{r['verdict'] or ''}</td></tr>")  # fmt: skip
    parts.append("</table>")
    (out / "index.html").write_text("<html><body>" + "\n".join(parts) + "</body></html>")
