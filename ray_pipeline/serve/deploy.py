"""Deploying the Serve application: the bound `Predictor` deployment with its autoscaling, Serve's
HTTP proxy started on the configured port (named when taken), and the route polled until it answers."""

import os
import time
from typing import Any

from ray import serve

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.raycompat import serve_client
from ray_pipeline.registry.handoff import load, open_registry
from ray_pipeline.runtime import quiet_serve_logs
from ray_pipeline.serve.app import Predictor
from ray_pipeline.serve.client import http_json
from ray_pipeline.serve.replica import ServingSettings


def build_app(cfg: PipelineConfig, api_key: str | None = None):
    """The bound Serve application for `cfg`."""
    s = cfg.serving
    load(open_registry(cfg), f"models:/{cfg.registry.model_name}@{s.alias}")  # fail at deploy, not in every replica
    deployment = Predictor.options(
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        autoscaling_config=autoscaling_config(cfg),
    )
    return deployment.bind(ServingSettings.from_config(cfg, api_key))


def autoscaling_config(cfg: PipelineConfig) -> dict[str, Any]:
    """Ray Serve's autoscaling_config from the pipeline config."""
    a = cfg.serving.autoscaling
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "look_back_period_s": a.look_back_period_s,
    }


def check_port_free(cfg: PipelineConfig) -> None:
    """Fail with a clear message when the configured HTTP port is taken (before Serve tries to bind it)."""
    import socket

    s = cfg.serving
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            raise UserError(
                f"serving.port: {s.host}:{s.port} is already in use ({exc.strerror}); "
                "stop the other endpoint or choose another port"
            ) from None


def deploy(cfg: PipelineConfig, local: bool = False) -> str:
    """Start (or update) the application on the connected Ray cluster; returns its URL.

    `local`: the cluster is an embedded instance on this machine, so a taken HTTP port can be
    named here before Serve's own start fails on it.
    """
    s = cfg.serving
    api_key = os.environ.get(s.api_key_env) if s.api_key_env else None
    if s.api_key_env and not api_key:
        raise UserError(f"serving.api_key_env: environment variable {s.api_key_env} is not set")
    if local and serve_client(required=False) is None:
        check_port_free(cfg)  # only when this call starts Serve: a running Serve already owns its port
    quiet_serve_logs()
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_app(cfg, api_key), name=s.app_name, route_prefix=s.route_prefix, blocking=False)
    # Serve's HTTP options are fixed by whoever started Serve first on this cluster: report where
    # the proxy really listens rather than where the config asked for.
    http = serve_client().http_config
    host = s.host if http.host in ("0.0.0.0", "::") else http.host
    url = f"http://{host}:{http.port}{s.route_prefix.rstrip('/')}"
    # serve.run returns once replicas run, but the front door learns the new route a moment later
    # (seen: a 404 on the first request after a fresh Serve start); return when the route answers.
    if not wait_until_routed(url):
        print(f"warning: {url}/healthz did not answer within {ROUTE_WAIT_S:g} s (unreachable from here?)")
    return url


ROUTE_WAIT_S = 30.0


def wait_until_routed(url: str, seconds: float = ROUTE_WAIT_S) -> bool:
    """Poll GET {url}/healthz until it answers 200 (True) or `seconds` pass (False)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if http_json(url + "/healthz", None, timeout=5)[0] == 200:
                return True
        except OSError:  # connection refused while the proxy (re)starts
            pass
        time.sleep(0.2)
    return False
