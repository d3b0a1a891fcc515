"""One serving session: the model's application and the web console on Ray Serve, announced, kept
up until Ctrl-C or SIGTERM, then torn down. `run --serve`, `serve deploy`, `ui` and the demo all
serve through it, so starting, waiting and stopping are written once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ray import serve

from ray_pipeline.config import PipelineConfig
from ray_pipeline.console.app import deploy_console
from ray_pipeline.runtime import RayRuntime, announce_ray, attach_file, shutdown_ray
from ray_pipeline.serve.deploy import deploy

Echo = Callable[[str], None]


@dataclass
class ServingSession:
    """What one command serves (`apps`: the names it deployed) on `runtime`, reported through `echo`."""

    cfg: PipelineConfig
    runtime: RayRuntime
    echo: Echo = print
    url: str | None = None
    console_url: str | None = None
    apps: list[str] = field(default_factory=list)

    def start(self, model: bool = True, url: str | None = None, console: bool | None = None) -> ServingSession:
        """Deploy the model's application (`url`: already deployed, e.g. by the run) and the console
        (`console.enabled` unless said here)."""
        if model:
            self.url = url or deploy(self.cfg, local=self.runtime.local)
            self.apps.append(self.cfg.serving.app_name)
        if self.cfg.console.enabled if console is None else console:
            self.console_url = deploy_console(self.cfg)
            self.apps.append(self.cfg.console.app_name)
            access = ("operator token required" if self.cfg.console.token_env
                      else "read-only, this machine only (no console.token_env)")  # fmt: skip
            self.echo(f"console: {self.console_url}  ({access})")
        return self

    def hold(self, wait: bool | None = None) -> None:
        """Serve until Ctrl-C or SIGTERM, then remove what this session deployed, when `wait` (by
        default on an embedded Ray, which would end with this process); otherwise leave it serving
        and say which Ray it runs on."""
        if self.runtime.local if wait is None else wait:
            self.wait()
            self.stop()
        else:
            self.echo(f"Ray: {self.runtime.address}")

    def wait(self) -> None:
        """Keep serving until Ctrl-C or SIGTERM; on an embedded Ray started here, announce it first so
        `monitor`, `retrain`, `predict` and `serve` with the same config attach to it."""
        if self.runtime.local and self.runtime.started:
            with announce_ray(attach_file(self.cfg.base_dir), self.runtime.address):
                self.echo(f"Ray: {self.runtime.address} (local, started by this command); `monitor`, `retrain`, "
                          f"`predict` and `serve` with this config attach to it while it serves "
                          f"(or pass --address {self.runtime.address})")  # fmt: skip
                self._until_stopped()
        else:
            self.echo(f"Ray: {self.runtime.address}")
            self._until_stopped()

    def _until_stopped(self) -> None:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop == Ctrl-C
        try:  # from the line on: a Ctrl-C the moment it shows stops cleanly too (it exited 130 before)
            self.echo("Ctrl-C (or SIGTERM) stops " + ("the endpoint" if self.url else "the console"))
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

    def stop(self, release: bool = False) -> None:
        """Remove what this session deployed: its applications (replicas flush their prediction logs
        first). `release` (a job that ends, like the demo): the embedded Ray this process started goes
        down instead, and Serve on an embedded Ray someone else started frees its HTTP port."""
        if release and self.runtime.started:
            shutdown_ray()  # Serve goes with it (serve.shutdown would print Ray's retry warning)
            return
        if release and self.runtime.local:
            serve.shutdown()
            return
        for name in self.apps:
            if name in serve.status().applications:
                serve.delete(name)
                self.echo(f"deleted {name}")
        self.apps.clear()
