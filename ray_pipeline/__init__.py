"""ray-pipeline: an end-to-end ML platform on Ray.

The public Python API is `ray_pipeline.api`, reachable from the package itself:

    import ray_pipeline as rp
    cfg = rp.init("churn.csv", label="Churn", positive=["Yes"])
    rp.run(cfg)
    rp.predict(cfg, [{"tenure": 3, "Contract": "Month-to-month"}]).probabilities
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
# (not `train`, `serve` or `monitor`: those are the stages' subpackages)
__all__ = ["load_config", "init", "start_ray", "generate", "ingest", "build_features", "run", "train_model",
           "register_and_promote", "deploy", "undeploy", "read_predictions", "load_model", "predict", "monitor_windows",
           "demo_loop", "retrain", "silent"]  # fmt: skip


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: every Ray worker imports ray_pipeline's modules,
    # and the API pulls in all of them (Serve, Train, Tune).
    if name in __all__:
        from ray_pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'ray_pipeline' has no attribute {name!r}")
