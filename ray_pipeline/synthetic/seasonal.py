"""A year of subscriber records with drift nobody injected at one point in time: the structure of a
real table (a calendar input, a seasonal input, gradual concept drift, a campaign that shifts the
plan mix for two periods and ends), with the true label probability `p_true` known.

Period k (0-based) covers [start + k * period_s, start + (k + 1) * period_s): the monitoring loop
serves one period per window. Deterministic per (seed, period), so any period can be regenerated.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

PLANS = ["basic", "plus", "pro", "family"]
REGIONS = ["north", "south", "east", "west", "central"]
REGION_EFFECT = {"north": 0.2, "south": -0.1, "east": 0.0, "west": 0.15, "central": -0.2}
PLAN_EFFECT = {"basic": 0.3, "plus": 0.0, "pro": -0.4, "family": -0.2}
CAMPAIGN = (7, 8)  # periods whose plan mix a campaign shifts towards "family"
FEATURES = {
    "month": {"type": "int", "min": 1, "max": 12, "seasonal": True},
    "temperature": {"type": "float", "seasonal": True},
    "monthly_charges": {"type": "float", "min": 0},
    "support_calls": {"type": "int", "min": 0},
    "tenure_months": {"type": "int", "min": 0},
    "plan": {"type": "category"},
    "region": {"type": "category"},
}


def truth_logit(period: int, cols: dict[str, np.ndarray]) -> np.ndarray:
    """The true model of period `period`: what drives churn changes slowly over the year."""
    drift = period / 11.0  # 0 in the first period, 1 in the last
    charges = (cols["monthly_charges"] - 70.0) / 25.0
    return (
        -1.2
        + (0.4 + 1.2 * drift) * charges  # price sensitivity grows through the year
        + (0.9 - 0.6 * drift) * (cols["support_calls"] - 1.5) / 1.2  # support matters less
        - 0.5 * (np.log1p(cols["tenure_months"]) - 2.8)
        + 0.25 * (cols["temperature"] - 15.0) / 8.0  # seasonal: hot months churn a little more
        + np.array([PLAN_EFFECT[p] for p in cols["plan"]])
        + np.array([REGION_EFFECT[r] for r in cols["region"]])
    )


def seasonal_period(period: int, rows: int, seed: int = 0, start: datetime | None = None,
                    period_s: float = 86400.0, entities: int = 2000) -> pa.Table:  # fmt: skip
    """Rows of one period, in event-time order, with `label` and `p_true`."""
    start = start or datetime(2024, 1, 1, tzinfo=timezone.utc)
    rng = np.random.default_rng([seed, period])
    month = (period % 12) + 1
    t0 = start.timestamp() + period * period_s
    ts = np.sort(t0 + rng.random(rows) * period_s * 0.98)  # the period's last moments stay empty
    season = np.sin(2 * np.pi * (month - 4) / 12)  # warmest around July
    plan_p = np.array([0.45, 0.30, 0.20, 0.05]) + 0.01 * period * np.array([-1, 0.5, 0.5, 0])
    if period in CAMPAIGN:
        plan_p = np.array([0.15, 0.15, 0.10, 0.60])
    cols: dict[str, np.ndarray] = {
        "month": np.full(rows, month),
        "temperature": 15.0 + 10.0 * season + rng.normal(0, 3, rows),
        "monthly_charges": np.clip(rng.normal(65 + 1.5 * period, 25, rows), 18, None),
        "support_calls": rng.poisson(1.5, rows),
        "tenure_months": rng.integers(0, 73, rows),
        "plan": rng.choice(PLANS, rows, p=plan_p / plan_p.sum()),
        "region": rng.choice(REGIONS, rows),
    }
    p_true = 1 / (1 + np.exp(-truth_logit(period, cols)))
    label = (rng.random(rows) < p_true).astype(np.int64)
    missing = rng.random(rows) < 0.03  # a few charges unknown, as in real billing exports
    charges = np.where(missing, np.nan, np.round(cols["monthly_charges"], 2))
    return pa.table({
        "customer_id": rng.integers(0, entities, rows).astype(str),
        "event_ts": pa.array((ts * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
        "month": cols["month"], "temperature": np.round(cols["temperature"], 1),
        "monthly_charges": pa.array(charges, from_pandas=True), "support_calls": cols["support_calls"],
        "tenure_months": cols["tenure_months"], "plan": cols["plan"], "region": cols["region"],
        "label": label, "p_true": p_true,
    })  # fmt: skip
