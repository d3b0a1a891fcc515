"""Shared helpers for benchmarks: machine description, peak memory, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def demo_config_body(workdir: Path) -> dict[str, Any]:
    """configs/demo.yaml as a dict without feature views (raw inputs only: no feature store
    needed) and with its runs under `workdir`; a benchmark edits it, then `parse_config`s it."""
    from ray_pipeline.config import load_config

    body = load_config(ROOT / "configs" / "demo.yaml").model_dump(by_alias=True)
    body["features"]["views"] = {}
    body["features"]["numeric"] = {
        k: v for k, v in body["features"]["numeric"].items() if k in body["data"]["schema"]["features"]
    }
    body["training"]["run_root"] = str(workdir / "runs")
    body["training"]["checkpoint_every"] = 100
    return body


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import ray

    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "processor": platform.machine(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(name: str, figures: dict[str, Any], ratios: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with the figures, the ratios and the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "ratios": ratios,
        **figures,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width table."""

    def fmt(c: Any) -> str:
        if isinstance(c, float):
            return f"{c:.3f}" if abs(c) < 10 else f"{c:,.1f}"
        return f"{c:,}" if isinstance(c, int) else str(c)

    cells = [header, *[[fmt(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
