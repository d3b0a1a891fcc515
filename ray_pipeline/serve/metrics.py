"""The application's own metrics (ray.serve.metrics): exported beside Ray Serve's on the metrics port."""

from __future__ import annotations

from typing import Any

SCORE_BOUNDARIES = [i / 10 for i in range(1, 10)]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
STAGE_BOUNDARIES = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]


class ServeMetrics:
    """Predictions and scores per model version and variant, missing features, batch sizes, load times,
    challenger failures and skipped shadow work."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        per_version = ("model_version", "variant")
        self.predictions = Counter("rp_predictions", "Predictions made.", tag_keys=per_version)
        self.scores = Histogram("rp_score", "Predicted probabilities.", boundaries=SCORE_BOUNDARIES,
                                tag_keys=per_version)  # fmt: skip
        self.missing = Counter("rp_missing_features", "Feature values missing in requests.", tag_keys=("feature",))
        self.batch_sizes = Histogram("rp_batch_size", "Records per model call.", boundaries=BATCH_BOUNDARIES)
        self.load_seconds = Gauge("rp_model_load_seconds", "Time to load a served version.", tag_keys=per_version)
        self.challenger_errors = Counter("rp_challenger_errors", "Canary or shadow batches the challenger failed.")
        self.shadow_dropped = Counter("rp_shadow_dropped", "Records not shadow-scored because the backlog was full.")
        self.refused = Counter("rp_refused_requests", "Requests refused by the API.", tag_keys=("status",))
        self.stage_seconds = Histogram("rp_stage_seconds", "Per-request latency by stage.",
                                       boundaries=STAGE_BOUNDARIES, tag_keys=("stage",))  # fmt: skip

    def stages(self, timing: dict[str, float | None], total_ms: float) -> None:
        """Observe one request's latency per stage (lookup, transform, inference, post) and in total."""
        for key, ms in timing.items():
            if ms is not None:
                self.stage_seconds.observe(ms / 1e3, tags={"stage": key.removesuffix("_ms")})
        self.stage_seconds.observe(total_ms / 1e3, tags={"stage": "total"})

    def scored(self, version: int, variant: str, probabilities: list[float]) -> None:
        """Count one model call's predictions."""
        if not probabilities:  # Counter.inc(0) raises
            return
        tags = {"model_version": str(version), "variant": variant}
        self.predictions.inc(len(probabilities), tags=tags)
        self.batch_sizes.observe(len(probabilities))
        for p in probabilities:
            self.scores.observe(p, tags=tags)

    def missing_values(self, records: list[dict[str, Any]], columns: list[str]) -> None:
        """Count None / absent values per input column."""
        for name in columns:
            gaps = sum(1 for r in records if r.get(name) is None)
            if gaps:
                self.missing.inc(gaps, tags={"feature": name})

    def loaded(self, version: int, variant: str, seconds: float) -> None:
        """Record how long loading `version` took."""
        self.load_seconds.set(seconds, tags={"model_version": str(version), "variant": variant})
