"""Charts rendered on the server as inline SVG (no JS library, nothing fetched at run time).

Each chart carries the numbers it draws in `data-values` / `data-threshold` attributes, so a test
can hold a chart against the table it comes from, and a browser test can check a line crosses a
threshold without reading pixels."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 180, 48, 12, 22, 28
COLORS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2")
MAX_POINTS = 400  # beyond this a series is thinned to every k-th point (its data-values say which)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _thin(xs: list[str], ys: list[float | None]) -> tuple[list[str], list[float | None]]:
    if len(ys) <= MAX_POINTS:
        return xs, ys
    step = math.ceil(len(ys) / MAX_POINTS)
    keep = list(range(0, len(ys), step))
    if keep[-1] != len(ys) - 1:
        keep.append(len(ys) - 1)  # the newest window is always drawn
    return [xs[i] for i in keep], [ys[i] for i in keep]


def line_chart(title: str, x: list[str], series: dict[str, list[float | None]],
               thresholds: dict[str, float] | None = None) -> str:  # fmt: skip
    """A line per series over the shared x labels (window ends), with dashed threshold lines."""
    thresholds = thresholds or {}
    thinned = {name: _thin(x, ys) for name, ys in series.items()}
    xs = next(iter(thinned.values()))[0] if thinned else []
    values = [v for _, ys in thinned.values() for v in _finite(ys)] + list(thresholds.values())
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo = min(lo, 0.0) if lo >= 0 and hi > 0 and lo < hi * 0.25 else lo
    if hi == lo:
        hi, lo = hi + 1.0, lo - (1.0 if lo else 0.0)
    n = max(len(xs), 2)

    def px(i: int) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * i / (n - 1)

    def py(v: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg class="chart line" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}" '
             f'data-title="{html.escape(title)}">', f'<text x="{PAD_L}" y="14" class="title">{html.escape(title)}</text>',
             f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" class="axis"/>',
             f'<text x="4" y="{py(hi) + 4:.1f}" class="tick">{_fmt(hi)}</text>',
             f'<text x="4" y="{py(lo) + 4:.1f}" class="tick">{_fmt(lo)}</text>']  # fmt: skip
    if xs:
        parts.append(f'<text x="{PAD_L}" y="{H - 8}" class="tick">{html.escape(xs[0][:16])}</text>')
        parts.append(f'<text x="{W - PAD_R}" y="{H - 8}" class="tick" text-anchor="end">{html.escape(xs[-1][:16])}</text>')
    merged: dict[float, list[str]] = {}  # lines at the same value drawn once, named together
    for name, value in thresholds.items():
        merged.setdefault(value, []).append(name)
    for value, names in merged.items():
        name = " / ".join(names)
        y = py(value)
        parts.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" class="threshold" '
                     f'data-threshold="{value!r}" data-name="{html.escape(name)}"/>'
                     f'<text x="{W - PAD_R}" y="{y - 3:.1f}" class="tick threshold-label" text-anchor="end">'
                     f'{html.escape(name)} {_fmt(value)}</text>')  # fmt: skip
    for k, (name, (_, ys)) in enumerate(thinned.items()):
        color = COLORS[k % len(COLORS)]
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(ys) if v is not None and math.isfinite(v))
        data = html.escape(json.dumps([v if v is None or math.isfinite(v) else None for v in ys]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5" class="series" '
                     f'data-name="{html.escape(name)}" data-values="{data}" data-x="{html.escape(json.dumps(xs))}"/>')  # fmt: skip
        if len(ys) == 1 and ys[0] is not None:
            parts.append(f'<circle cx="{px(0):.1f}" cy="{py(ys[0]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{PAD_L + 8 + 110 * k}" y="{H - PAD_B - 4}" class="legend" fill="{color}">'
                     f'{html.escape(name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, labels: list[str], series: dict[str, list[float | None]]) -> str:
    """Grouped bars: one group per label, one bar per series."""
    values = [v for ys in series.values() for v in _finite(ys)]
    hi = max(values) if values else 1.0
    hi = hi if hi > 0 else 1.0
    groups = max(len(labels), 1)
    slot = (W - PAD_L - PAD_R) / groups
    width = slot * 0.8 / max(len(series), 1)
    parts = [f'<svg class="chart bar" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}" '
             f'data-title="{html.escape(title)}">', f'<text x="{PAD_L}" y="14" class="title">{html.escape(title)}</text>',
             f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" class="axis"/>',
             f'<text x="4" y="{PAD_T + 4}" class="tick">{_fmt(hi)}</text>']  # fmt: skip
    for i, label in enumerate(labels):
        parts.append(f'<text x="{PAD_L + slot * (i + 0.5):.1f}" y="{H - 8}" class="tick" text-anchor="middle">'
                     f'{html.escape(str(label)[:14])}</text>')  # fmt: skip
    for k, (name, ys) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        for i, v in enumerate(ys):
            if v is None or not math.isfinite(v):
                continue
            h = (H - PAD_T - PAD_B) * v / hi
            x = PAD_L + slot * i + slot * 0.1 + width * k
            parts.append(f'<rect x="{x:.1f}" y="{H - PAD_B - h:.1f}" width="{width:.1f}" height="{h:.1f}" fill="{color}">'
                         f'<title>{html.escape(name)} {html.escape(str(labels[i]))}: {_fmt(v)}</title></rect>')  # fmt: skip
        data = html.escape(json.dumps([v if v is None or math.isfinite(v) else None for v in ys]))
        parts.append(f'<g class="series" data-name="{html.escape(name)}" data-values="{data}" '
                     f'data-labels="{html.escape(json.dumps(labels))}"></g>'
                     f'<text x="{PAD_L + 8 + 110 * k}" y="{PAD_T + 10}" class="legend" fill="{color}">{html.escape(name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
