"""Deterministic synthetic transactions with a known ground truth, for each task type.

binary: `label` is 1 for fraud, drawn with probability `p_true`; multiclass: `label` is the outcome
(ok / fraud / dispute) drawn from the true softmax, and `p_true` is the truth's probability of the
row's own outcome; regression: `label` is a risk score in points (any sign), `y_true` its
noise-free mean and `NOISE_SD` the noise around it. Every task uses the same inputs and the same fraud log-odds, so
drift options mean the same for all three.

Rows are made in fixed-size chunks, each from its own seeded generator, so the same seed gives
the same rows on any cluster size; Ray Data runs the chunks in parallel and streams them to
files, so the driver never holds the dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import poisson

from ray_pipeline.config import SyntheticConfig
from ray_pipeline.errors import UserError

# Ground truth: fixed here, independent of the data seed, so every dataset shares one true model.
# Terms use observed values only (a missing value contributes 0), so p_true is the Bayes-optimal
# probability given the columns a model can see.
COEFFICIENTS: dict[str, float] = {
    "intercept": -2.9,
    "amount": 0.8,  # per unit of log1p(amount) around 3.5
    "distance_km": 0.5,  # per unit of log1p(distance_km) around 1.5
    "account_age_days": -0.6,  # per unit of log1p(age) around 5.0
    "credit_score": -0.01,  # per point around 680
    "txn_count_24h": 0.3,  # per transaction around 1.8
    "avg_amount_30d": 0.2,  # per unit of log1p(avg) around 3.5
    "night_online": 1.5,  # hour in 0..5 and channel == online (interaction)
    "big_far": 1.2,  # amount > 100 and distance_km > 10 (interaction)
    "channel": 1.0,  # scale of the per-channel effects
    "merchant_category": 1.0,  # scale of the per-category effects
    "merchant_risk": 1.0,  # added for the fixed set of risky merchants
}

# Multiclass: the outcome's classes in order; "ok" is the reference (logit 0), "fraud" takes the
# binary log-odds above and "dispute" its own linear log-odds (DISPUTE).
CLASSES = ["ok", "fraud", "dispute"]
DISPUTE: dict[str, float] = {
    "intercept": -2.2,
    "amount": 0.6,  # per unit of log1p(amount) around 3.5: disputes grow with the amount
    "txn_count_24h": 0.4,  # per transaction around 1.8
    "account_age_days": 0.3,  # per unit of log1p(age) around 5.0: older accounts dispute, new ones defraud
    "phone": 0.8,  # channel == phone
}
# Regression: the risk score is affine in the fraud log-odds plus normal noise of NOISE_SD, so the
# noise floor (the RMSE of the true mean) is NOISE_SD in expectation.
LOSS_OFFSET, LOSS_SCALE, NOISE_SD = 200.0, 50.0, 25.0

NUMERIC_FEATURES = [
    "amount",
    "distance_km",
    "account_age_days",
    "credit_score",
    "txn_count_24h",
    "avg_amount_30d",
    "hour_of_day",
]
# Features drawn from a latent normal: covariate shift moves that latent variable.
LATENT_FEATURES = NUMERIC_FEATURES[:-1]
MISSING_FEATURES = ["distance_km", "credit_score", "avg_amount_30d"]
MISSING_RATE = 0.05
CATEGORICAL_FEATURES = ["merchant_id", "merchant_category", "channel", "country"]

CHANNELS = ["pos", "online", "atm", "phone", "mobile_app"]
CHANNEL_P = [0.50, 0.30, 0.10, 0.05, 0.05]
CHANNEL_EFFECT = {"pos": 0.0, "online": 0.6, "atm": 0.3, "phone": 0.4, "mobile_app": 0.2}
MERCHANT_CATEGORIES = [
    "grocery", "fuel", "restaurant", "online_retail", "travel", "electronics", "pharmacy",
    "clothing", "entertainment", "utilities", "home_improvement", "jewelry", "gaming",
    "telecom", "education", "insurance", "automotive", "books", "sports", "pets",
    "charity", "gift_cards", "crypto_exchange", "pawn_shop", "wire_transfer",
]  # fmt: skip
N_MERCHANTS = 2000
COUNTRIES = [
    "US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "AU", "SE", "BR", "MX", "IN", "JP",
    "PL", "BE", "CH", "AT", "IE", "PT", "DK", "NO", "FI", "NZ", "SG", "ZA", "AR", "CL",
    "TR", "RO", "NG", "KE", "PH", "VN", "TH", "ID", "EG", "MA", "UA", "CO",
]  # fmt: skip

CORRUPTION_KINDS = [
    "negative_amount",
    "credit_score_out_of_range",
    "null_label",
    "unknown_channel",
    "null_timestamp",
    "null_entity",
    "duplicate_row",
]


def _zipf_p(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _truth_tables() -> dict[str, np.ndarray]:
    """Per-category effects of the true model, from a fixed seed (never the data seed)."""
    rng = np.random.default_rng(20240101)
    return {
        "merchant_category": rng.normal(0.0, 0.5, len(MERCHANT_CATEGORIES)),
        "merchant_risky": (rng.random(N_MERCHANTS) < 0.05).astype(np.float64),
        "country": rng.normal(0.0, 0.2, len(COUNTRIES)),
    }


_TRUTH = _truth_tables()
MERCHANT_IDS = np.array([f"m{i:04d}" for i in range(N_MERCHANTS)], dtype=object)


def _check_spec(spec: SyntheticConfig) -> None:
    drift = spec.drift
    if drift is None:
        return
    targets = [
        ("covariate_shift", drift.covariate_shift, "features", LATENT_FEATURES),
        ("new_categories", drift.new_categories, "columns", CATEGORICAL_FEATURES),
        ("concept_drift", drift.concept_drift, "coefficients", sorted(COEFFICIENTS)),
    ]
    for key, given, what, known in targets:
        bad = sorted(set(given) - set(known))
        if bad:
            raise UserError(f"synthetic.drift.{key}: unknown {what} {bad}; expected any of {known}")


def num_chunks(spec: SyntheticConfig) -> int:
    """How many generation tasks `spec` takes."""
    return math.ceil(spec.rows / spec.chunk_rows)


def _effect(values: np.ndarray, keys: list[str] | np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Per-row effect of a categorical value; categories the truth does not know add 0."""
    lookup = pd.Series(np.asarray(effects, dtype=np.float64), index=np.asarray(keys, dtype=object))
    return pd.Series(values, dtype=object).map(lookup).fillna(0.0).to_numpy(np.float64)


def true_logit(cols: dict[str, np.ndarray], coef: dict[str, float]) -> np.ndarray:
    """The true log-odds computed from observed columns only."""
    c = coef.__getitem__

    def centred(values: np.ndarray, centre: float) -> np.ndarray:
        out = values - centre
        return np.where(np.isnan(out), 0.0, out)

    amount, distance = cols["amount"], cols["distance_km"]
    logit = (
        c("intercept")
        + c("amount") * centred(np.log1p(amount), 3.5)
        + c("distance_km") * centred(np.log1p(distance), 1.5)
        + c("account_age_days") * centred(np.log1p(cols["account_age_days"]), 5.0)
        + c("credit_score") * centred(cols["credit_score"], 680.0)
        + c("txn_count_24h") * centred(cols["txn_count_24h"], 1.8)
        + c("avg_amount_30d") * centred(np.log1p(cols["avg_amount_30d"]), 3.5)
    )
    channel = cols["channel"]
    night_online = (cols["hour_of_day"] <= 5) & (channel == "online")
    big_far = (amount > 100) & (np.nan_to_num(distance, nan=0.0) > 10)
    channel_effect = _effect(channel, list(CHANNEL_EFFECT), np.array(list(CHANNEL_EFFECT.values())))
    cat_effect = _effect(cols["merchant_category"], MERCHANT_CATEGORIES, _TRUTH["merchant_category"])
    risky = _effect(cols["merchant_id"], MERCHANT_IDS, _TRUTH["merchant_risky"])
    country_effect = _effect(cols["country"], COUNTRIES, _TRUTH["country"])
    return (
        logit
        + c("night_online") * night_online
        + c("big_far") * big_far
        + c("channel") * channel_effect
        + c("merchant_category") * cat_effect
        + c("merchant_risk") * risky
        + country_effect
    )


def dispute_logit(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The true log-odds of "dispute" against "ok" (multiclass), from observed columns only."""
    d = DISPUTE
    age = np.nan_to_num(np.log1p(cols["account_age_days"]) - 5.0, nan=0.0)
    return (
        d["intercept"]
        + d["amount"] * np.nan_to_num(np.log1p(cols["amount"]) - 3.5, nan=0.0)
        + d["txn_count_24h"] * np.nan_to_num(cols["txn_count_24h"] - 1.8, nan=0.0)
        + d["account_age_days"] * age
        + d["phone"] * (cols["channel"] == "phone")
    )


def class_probabilities(logit: np.ndarray, cols: dict[str, np.ndarray]) -> np.ndarray:
    """The true outcome probabilities (rows x CLASSES) given the fraud log-odds."""
    z = np.stack([np.zeros_like(logit), logit, dispute_logit(cols)], axis=1)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _labels(task: str, logit: np.ndarray, cols: dict[str, np.ndarray], label_u: np.ndarray,
            noise: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """The label column and its ground truth for `task`, from the same uniform and normal draws."""
    if task == "multiclass":
        probs = class_probabilities(logit, cols)
        # Inverse CDF: the first class whose cumulative probability passes the row's uniform.
        k = np.minimum((label_u[:, None] >= np.cumsum(probs, axis=1)).sum(axis=1), len(CLASSES) - 1)
        return {"label": np.array(CLASSES, dtype=object)[k], "p_true": probs[np.arange(len(k)), k]}
    if task == "regression":
        mean = LOSS_OFFSET + LOSS_SCALE * logit
        return {"label": np.round(mean + NOISE_SD * noise, 2), "y_true": mean}
    p_true = 1.0 / (1.0 + np.exp(-logit))
    return {"label": (label_u < p_true).astype(np.float64), "p_true": p_true}


def generate_chunk(spec: SyntheticConfig, chunk: int) -> pa.Table:
    """Rows of chunk number `chunk`; a pure function of (spec, chunk)."""
    _check_spec(spec)
    first = chunk * spec.chunk_rows
    n = min(spec.chunk_rows, spec.rows - first)
    if n <= 0:
        raise UserError(f"chunk {chunk} is past the end of {spec.rows} rows")
    rng = np.random.default_rng([spec.seed, chunk])
    # Every draw happens whatever the options, in a fixed order, so drift settings change only
    # the rows they target and corruption changes only the corrupted rows.
    n_entities = spec.entities or max(1, spec.rows // 20)
    entity_rank = rng.choice(n_entities, size=n, p=_zipf_p(n_entities, 0.8))
    offsets = rng.random(n) * spec.days * 86400.0
    latent = rng.standard_normal((len(LATENT_FEATURES), n))
    poisson_u = rng.random(n)
    missing_u = rng.random((len(MISSING_FEATURES), n))
    merchant = rng.choice(N_MERCHANTS, size=n, p=_zipf_p(N_MERCHANTS, 1.05))
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=_zipf_p(len(MERCHANT_CATEGORIES), 1.2))
    channel = rng.choice(len(CHANNELS), size=n, p=CHANNEL_P)
    country = rng.choice(len(COUNTRIES), size=n, p=_zipf_p(len(COUNTRIES), 1.4))
    new_cat_u = rng.random((len(CATEGORICAL_FEATURES), n))
    new_cat_k = rng.integers(0, 50, size=(len(CATEGORICAL_FEATURES), n))
    label_u = rng.random(n)
    corrupt_u = rng.random(n)
    corrupt_kind = rng.integers(0, len(CORRUPTION_KINDS), size=n)
    noise = rng.standard_normal(n)  # drawn last, so adding it left the binary rows unchanged

    start_us = int(spec.start.timestamp() * 1e6)
    ts_us = start_us + (offsets * 1e6).astype(np.int64)
    drift = spec.drift
    drifted = ts_us >= int(drift.start.timestamp() * 1e6) if drift is not None else np.zeros(n, dtype=bool)

    z = {name: latent[i] for i, name in enumerate(LATENT_FEATURES)}
    if drift is not None:
        for name, shift in drift.covariate_shift.items():
            z[name] = np.where(drifted, shift.loc + shift.scale * z[name], z[name])

    cols: dict[str, np.ndarray] = {
        "amount": np.round(np.exp(3.5 + 1.0 * z["amount"]), 2),
        "distance_km": np.round(np.exp(1.5 + 1.2 * z["distance_km"]), 3),
        "account_age_days": np.clip(np.round(np.exp(5.0 + 0.9 * z["account_age_days"])), 0, 20000),
        "credit_score": np.clip(np.round(680.0 + 70.0 * z["credit_score"]), 300, 850),
        # Poisson by inverse CDF from one uniform, so the count depends on the latent rate only.
        "txn_count_24h": poisson.ppf(poisson_u, np.exp(0.5 + 0.6 * z["txn_count_24h"])),
        "avg_amount_30d": np.round(np.exp(3.5 + 0.6 * z["avg_amount_30d"]), 2),
        "hour_of_day": ((ts_us // 3_600_000_000) % 24).astype(np.float64),
    }
    for i, name in enumerate(MISSING_FEATURES):
        cols[name] = np.where(missing_u[i] < MISSING_RATE, np.nan, cols[name])

    cats = {
        "merchant_id": MERCHANT_IDS[merchant],
        "merchant_category": np.array(MERCHANT_CATEGORIES, dtype=object)[category],
        "channel": np.array(CHANNELS, dtype=object)[channel],
        "country": np.array(COUNTRIES, dtype=object)[country],
    }
    if drift is not None:
        for i, name in enumerate(CATEGORICAL_FEATURES):
            rate = drift.new_categories.get(name, 0.0)
            unseen = drifted & (new_cat_u[i] < rate)
            fresh = np.char.add(f"new_{name}_", new_cat_k[i].astype(str)).astype(object)
            cats[name] = np.where(unseen, fresh, cats[name])
    cols.update(cats)

    if drift is not None and drift.concept_drift:
        after = {**COEFFICIENTS, **drift.concept_drift}
        logit = np.where(drifted, true_logit(cols, after), true_logit(cols, COEFFICIENTS))
    else:
        logit = true_logit(cols, COEFFICIENTS)
    labels = _labels(spec.task, logit, cols, label_u, noise)

    table = {
        "event_id": np.arange(first, first + n, dtype=np.int64),
        "customer_id": (entity_rank + 1).astype(np.float64),
        "event_ts": ts_us.astype(np.float64),
        "label": labels.pop("label"),
        **cols,
        **labels,
    }
    if spec.corruption_rate > 0:
        _corrupt(table, corrupt_u < spec.corruption_rate, corrupt_kind)
    return _to_arrow(table, integer_label=spec.task == "binary")


def _corrupt(table: dict[str, np.ndarray], hit: np.ndarray, kind: np.ndarray) -> None:
    """Turn rows marked `hit` into bad rows of known kinds (validation must quarantine them)."""
    rows = np.flatnonzero(hit)
    for row in rows:
        what = CORRUPTION_KINDS[kind[row]]
        if what == "negative_amount":
            table["amount"][row] = -abs(table["amount"][row]) - 1.0
        elif what == "credit_score_out_of_range":
            table["credit_score"][row] = 9999.0
        elif what == "null_label":
            table["label"][row] = None if table["label"].dtype == object else np.nan
        elif what == "unknown_channel":
            table["channel"][row] = "carrier_pigeon"
        elif what == "null_timestamp":
            table["event_ts"][row] = np.nan
        elif what == "null_entity":
            table["customer_id"][row] = np.nan
        elif what == "duplicate_row" and row > 0 and not hit[row - 1]:
            for values in table.values():
                values[row] = values[row - 1]


def _to_arrow(table: dict[str, np.ndarray], integer_label: bool) -> pa.Table:
    ints = {"customer_id", "account_age_days", "credit_score", "txn_count_24h", "hour_of_day"}
    ints |= {"label"} if integer_label else set()
    arrays = {}
    for name, values in table.items():
        if name == "event_ts":
            mask = np.isnan(values)
            us = pa.array(np.where(mask, 0, values).astype(np.int64), mask=mask)
            arrays[name] = us.cast(pa.timestamp("us", tz="UTC"))
        elif name in ints:
            mask = np.isnan(values)
            arrays[name] = pa.array(np.where(mask, 0, values).astype(np.int64), mask=mask)
        elif values.dtype == object:
            arrays[name] = pa.array(values, type=pa.string(), from_pandas=True)
        else:
            arrays[name] = pa.array(values, from_pandas=True)
    return pa.table(arrays)


@dataclass(frozen=True)
class GenerateResult:
    """Where `generate` wrote and how much."""

    path: str
    rows: int
    format: str
    seconds: float


def generate(spec: SyntheticConfig, out: str) -> GenerateResult:
    """Write `spec.rows` rows to the directory or URI `out` in parallel with Ray Data (overwrites)."""
    import time

    import ray.data
    from ray.data import SaveMode

    _check_spec(spec)
    started = time.perf_counter()
    chunks = num_chunks(spec)

    def make(batch: dict[str, np.ndarray]) -> pa.Table:
        return pa.concat_tables([generate_chunk(spec, int(i)) for i in batch["id"]])

    ds = ray.data.range(chunks, override_num_blocks=chunks).map_batches(make, batch_size=1, batch_format="numpy")
    if spec.format == "parquet":
        ds.write_parquet(out, mode=SaveMode.OVERWRITE)
    else:
        ds.write_csv(out, mode=SaveMode.OVERWRITE)
    return GenerateResult(out, spec.rows, spec.format, time.perf_counter() - started)


def bayes_log_loss(label: np.ndarray, p_true: np.ndarray) -> float:
    """Mean log-loss of the true probabilities: the floor no model can beat on this data."""
    p = np.clip(p_true, 1e-15, 1 - 1e-15)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log1p(-p)))


def bayes_multiclass_log_loss(p_own: np.ndarray) -> float:
    """Mean multiclass log-loss of the truth, from its probability of each row's own class."""
    return float(-np.mean(np.log(np.clip(p_own, 1e-15, 1.0))))


def noise_rmse(label: np.ndarray, y_true: np.ndarray) -> float:
    """RMSE of the true mean: the regression floor no model can beat on this data."""
    return float(np.sqrt(np.mean((label - y_true) ** 2)))
