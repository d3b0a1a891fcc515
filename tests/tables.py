"""Tables a user might bring, built in code (no network): shared by the own-table and cluster tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def churn_table(n: int = 4000, seed: int = 1) -> pd.DataFrame:
    """Like the churn table: string ids, Yes/No label, a numeric column stored as text with blanks."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, n)
    monthly = np.round(rng.uniform(18, 120, n), 2)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.21, 0.24])
    internet = rng.choice(["DSL", "Fiber optic", "No"], n, p=[0.34, 0.44, 0.22])
    z = (-1.0 - 0.05 * tenure + 0.02 * monthly + np.where(contract == "Month-to-month", 1.3, 0.0)
         + np.where(internet == "Fiber optic", 0.5, 0.0))  # fmt: skip
    churn = np.where(rng.random(n) < 1 / (1 + np.exp(-z)), "Yes", "No")
    total = np.round(tenure * monthly, 2).astype(str)
    total[tenure == 0] = " "  # as in the public table: new customers have a blank total
    return pd.DataFrame({
        "customerID": [f"{i:05d}-C" for i in range(n)],
        "gender": rng.choice(["Female", "Male"], n),
        "tenure": tenure,
        "Contract": contract,
        "InternetService": internet,
        "MonthlyCharges": monthly,
        "TotalCharges": total,
        "notes": [None] * n,  # all null: init leaves it out with a note
        "Churn": churn,
    })


def missing_table(n: int = 4000, seed: int = 2) -> pd.DataFrame:
    """0/1 label, missing values in numeric and categorical columns, no id, no time."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue", "black"], n)
    z = 1.2 * a - 0.8 * b + np.where(color == "red", 0.9, 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    frame = pd.DataFrame({"a": a, "b": b, "color": color, "noise": rng.uniform(0, 10, n), "y": y})
    for col, share in (("a", 0.2), ("b", 0.1), ("color", 0.15), ("noise", 0.3)):
        frame.loc[rng.random(n) < share, col] = None
    return frame


def flights_table(n: int = 4000, seed: int = 3) -> pd.DataFrame:
    """An event time and a numeric delay: label = arr_delay > 15."""
    rng = np.random.default_rng(seed)
    dep_hour = rng.integers(5, 23, n)
    distance = rng.uniform(100, 3000, n)
    carrier = rng.choice(["AA", "DL", "UA", "WN", "B6"], n)
    delay = rng.normal(5 + 1.2 * (dep_hour - 12) + np.where(carrier == "B6", 12, 0) - distance / 400, 15, n)
    times = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 60 * 86400, n)), unit="s")
    return pd.DataFrame({
        "flight_time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "carrier": carrier,
        "dep_hour": dep_hour,
        "distance": np.round(distance, 1),
        "arr_delay": np.round(delay, 1),
    })


MEMBERSHIP_TIERS = ["bronze", "silver", "gold", "platinum"]


def membership_table(n: int = 4000, seed: int = 4) -> pd.DataFrame:
    """A text label of four classes drawn from a softmax of known linear scores (multiclass): spend
    and visits push towards the higher tiers, the region shifts one tier's share; `noise` is unused."""
    rng = np.random.default_rng(seed)
    spend = rng.gamma(2.0, 50.0, n)
    visits = rng.poisson(6, n).astype(float)
    region = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    s = np.log1p(spend) - 4.0
    logits = np.stack([
        np.zeros(n),
        1.0 * s + 0.10 * visits - 0.3,
        2.0 * s + 0.20 * visits - 1.2 + np.where(region == "east", 0.8, 0.0),
        3.0 * s + 0.25 * visits - 2.6,
    ], axis=1)  # fmt: skip
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    tier = np.array(MEMBERSHIP_TIERS)[(rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)]
    frame = pd.DataFrame({
        "member_id": [f"M{i:06d}" for i in range(n)],
        "spend": np.round(spend, 2),
        "visits": visits,
        "region": region,
        "noise": rng.normal(size=n),
        "tier": tier,
    })
    frame.loc[rng.random(n) < 0.05, "spend"] = None
    return frame


def prices_table(n: int = 4000, seed: int = 5) -> pd.DataFrame:
    """A skewed positive price (regression): log(price) is linear in the inputs plus noise of known
    size (0.25), so the model that knows the truth has log-RMSE 0.25; `noise` is unused."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(30, 200, n)
    rooms = rng.integers(1, 7, n).astype(float)
    city = rng.choice(["Lyon", "Paris", "Lille", "Nice"], n, p=[0.3, 0.3, 0.2, 0.2])
    age = rng.uniform(0, 80, n)
    log_price = (10.5 + 0.9 * np.log(area) + 0.05 * rooms - 0.004 * age
                 + np.select([city == "Paris", city == "Nice"], [0.6, 0.3], 0.0) + rng.normal(0, 0.25, n))  # fmt: skip
    frame = pd.DataFrame({
        "area": np.round(area, 1),
        "rooms": rooms,
        "city": city,
        "age": np.round(age, 1),
        "noise": rng.normal(size=n),
        "price": np.round(np.exp(log_price), 0),
    })
    frame.loc[rng.random(n) < 0.05, "age"] = None
    return frame
