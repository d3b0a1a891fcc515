"""Application builder for `serve run` / `serve deploy` config files (import_path + args)."""

import os

from ray_pipeline.config import PipelineConfig, load_config
from ray_pipeline.serve.app import DEPLOYMENT
from ray_pipeline.serve.deploy import autoscaling_config, build_app


def build(args: dict):
    """Build the application from {"config": "path/to/pipeline.yaml"}; the API key comes from the environment."""
    cfg = load_config(args["config"])
    env = cfg.serving.api_key_env
    return build_app(cfg, os.environ.get(env) if env else None)


def deploy_config(cfg_path: str, cfg: PipelineConfig | None = None) -> dict:
    """A `serve deploy`-compatible config for the pipeline at `cfg_path` (as the cluster sees
    that path; `cfg` is its content when it is read from elsewhere, e.g. inside an image)."""
    cfg = cfg or load_config(cfg_path)
    s = cfg.serving
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": s.port},
        "applications": [
            {
                "name": s.app_name,
                "route_prefix": s.route_prefix,
                "import_path": "ray_pipeline.serve.entry:build",
                "args": {"config": cfg_path},
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "max_ongoing_requests": s.max_ongoing_requests,
                        "max_queued_requests": s.max_queued_requests,
                        "autoscaling_config": autoscaling_config(cfg),
                    },
                ],
            }
        ],
    }
