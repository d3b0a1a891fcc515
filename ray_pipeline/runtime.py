"""Connect to Ray: an existing cluster when an address is given, else an embedded local instance."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import ray

from ray_pipeline import reaper
from ray_pipeline.raycompat import (
    AUTH_SETUP_LOGGER,
    DATA_PROGRESS_LOGGER,
    default_token_path,
    node_logs_dir,
    route_raylet_messages,
    use_saved_token,
)

log = logging.getLogger(__name__)

# Ray's own loggers print an INFO line per dataset execution; on a laptop that drowns the
# summaries the CLI prints. Warnings and errors still come through.
_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve")
# Ray Data warnings a CLI user cannot act on, kept for --verbose: "Replacing contents" of the
# directories the feature stage rewrites on purpose, and "no available CPUs" while Serve replicas
# hold them (the job waits for a CPU and goes on).
_QUIET_DATA_LOGGERS = ("ray.data.datasource.file_datasink", "ray.data.dataset")


@dataclass(frozen=True)
class RayRuntime:
    """What `init_ray` connected to."""

    address: str
    local: bool
    num_cpus: float
    started: bool = False  # this call started the Ray instance (so stopping it stops only ours)


# Variables init_ray put into this process's environment (Ray's processes inherit them at start);
# shutdown_ray takes them out again so they do not leak into later instances or child processes.
_env_set_by_us: set[str] = set()
_reapers: list = []  # the reaper of each instance this process started (ray_pipeline/reaper.py), while it runs


def _setdefault_env(key: str, value: str) -> None:
    if key not in os.environ:
        os.environ[key] = value
        _env_set_by_us.add(key)


def _quiet_defaults() -> None:
    _setdefault_env("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train re-routes print() in workers through its logger and, since Ray redirects worker
    # stdout, also tees it to the original print: every progress line came out twice. Workers of
    # an instance we start inherit this; on a cluster set it where `ray start` runs.
    _setdefault_env("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def _serve_fast_path_env(temp_dir: str) -> None:
    """Env for the Ray we start: Serve's HAProxy front door + direct ingress, scoped to this instance."""
    # Measured here (docs/ARCHITECTURE.md, benchmarks/serve.py): the default Python proxy added ~5-10 ms p50 per
    # request over plain uvicorn; HAProxy forwarding straight to the replica's own HTTP server ~0.6-1.3 ms.
    # Autoscaling, max_queued_requests -> 503 and Serve's HTTP metrics keep working in this mode
    # (tests/test_serve.py, tests/test_serve_traffic.py). Export a flag as 0 to get the default proxy.
    _setdefault_env("RAY_SERVE_ENABLE_HA_PROXY", "1")
    _setdefault_env("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1")
    # Serve's throughput profile: user code on the replica's main loop (no thread hop per request),
    # buffered request logs, GC frozen after start. Measured -0.5..-1.5 ms p50 and +20% req/s here.
    _setdefault_env("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    if os.environ["RAY_SERVE_ENABLE_HA_PROXY"] != "1":
        return
    # HAProxy's files and admin ports default to fixed, machine-wide places (/tmp/haproxy-serve,
    # 9101, 8404): two embedded instances on one box would fight over them.
    base = os.path.join(temp_dir, "haproxy")
    os.makedirs(base, exist_ok=True)
    _setdefault_env("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", os.path.join(base, "haproxy.cfg"))
    _setdefault_env("RAY_SERVE_HAPROXY_SOCKET_PATH", os.path.join(base, "admin.sock"))
    _setdefault_env("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", base)
    _setdefault_env("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", os.path.join(base, "server-state"))
    # So does the fallback Python proxy's (8500/9500), which HAProxy sends requests to when the
    # replica is full or marked down: bound with SO_REUSEPORT, a second instance's fallback shares
    # the port, and requests for this instance's routes reached the other one's proxy (404).
    metrics_port, stats_port, fallback_http, fallback_grpc = _reserved_ports(4)
    _setdefault_env("RAY_SERVE_HAPROXY_METRICS_PORT", str(metrics_port))
    _setdefault_env("RAY_SERVE_HAPROXY_STATS_PORT", str(stats_port))
    _setdefault_env("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(fallback_http))
    _setdefault_env("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", str(fallback_grpc))
    # A stopping ingress replica keeps answering for this long so external load balancers can
    # drain it (default 30 s). HAProxy here runs beside the replicas and is told at once.
    _setdefault_env("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")


def _reserved_ports(n: int, lo: int = 25000, hi: int = 30000) -> list[int]:
    """`n` ports free now and outside the OS's ephemeral range (and Ray's worker ports 10002-19999).

    HAProxy binds them only when Serve (re)starts, maybe minutes later; an ephemeral port picked
    now can meanwhile be handed to some outgoing connection (seen: a clean-clone test run failed
    on it). Ports below the ephemeral range are only ever taken by explicit binds.
    """
    found: list[int] = []
    # A block of `n` per process id: processes started one after another (pytest workers, a demo
    # beside the tests) have adjacent ids, and overlapping blocks would pick the same ports.
    start = os.getpid() % ((hi - lo) // n) * n
    for i in range(hi - lo):
        port = lo + (start + i) % (hi - lo)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # HAProxy listens on all interfaces
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"no {n} free ports in {lo}-{hi}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _owner_only(path: Path) -> None:
    """Make a secret file of ours readable by its owner only: Ray writes its generated token with the umask's
    mode (often 0644), which would let any local user reach the instance the token guards."""
    try:
        if path.stat().st_uid == os.getuid():
            path.chmod(0o600)
    except FileNotFoundError:  # no token: auth is off and Ray generated none
        pass
    except OSError as exc:  # the instance runs either way; say what was left open
        log.warning("could not make %s readable by its owner only: %s", path, exc)


def _configure_data_context(quiet: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # The default hash shuffle is slow on small data and 2 cores (docs/ARCHITECTURE.md, measured);
    # sort-based pull shuffle is the robust choice for the groupbys we run.
    ctx.shuffle_strategy = "sort_shuffle_pull_based"
    # Ray Data's bars are one line per operator; the CLI draws one bar per stage instead.
    ctx.enable_progress_bars = not quiet and os.environ.get("RAY_PIPELINE_PROGRESS", "1") != "0"
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    global _quiet
    _quiet = quiet
    if quiet:
        # Ray Data warns once that its bars are off.
        for name in (DATA_PROGRESS_LOGGER, *_QUIET_DATA_LOGGERS):
            logging.getLogger(name).setLevel(logging.ERROR)


_quiet = False


def quiet_serve_logs() -> None:
    """Once Serve is imported: keep its INFO lines ("Started Serve ...") off a quiet
    terminal. Importing Serve installs its INFO-level logger, so this cannot be done at start-up
    without importing Serve in every command (~0.5-1 s)."""
    if _quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def local_cpus() -> int:
    """Logical CPUs for an embedded instance: at least 4 so Data and Train never starve each other."""
    # On a 2-core box a Train worker holding a whole CPU plus a Data read task can deadlock;
    # oversubscribing logical CPUs is cheaper than a hung run (docs/ARCHITECTURE.md, Ray facts).
    return max(4, os.cpu_count() or 1)


def _raylet_log(directory: str) -> Callable[[str], None]:
    """A writer appending each raylet message, timestamped, to `raylet_messages.log` in `directory`."""
    path = Path(directory) / "raylet_messages.log"

    def write(line: str) -> None:
        try:
            with path.open("a") as f:
                f.write(f"{datetime.now(timezone.utc).isoformat()} {line.rstrip()}\n")
        except OSError:
            pass  # a log that cannot be written is no reason to fail a run

    return write


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    metrics_export_port: int | None = None,
    quiet: bool = False,
) -> RayRuntime:
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray sized for this machine; idempotent.

    `quiet`: workers' output (epoch lines, Ray Data's coordinator logs) stays in Ray's log files
    (`logs_dir()`) instead of being copied to this terminal.
    """
    _quiet_defaults()
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized() and not address
    if not ray.is_initialized():
        if quiet:  # Ray's notice that it turned token auth on (its default): nothing to act on
            logging.getLogger(AUTH_SETUP_LOGGER).setLevel(logging.ERROR)
        if address:
            log.info("connecting to Ray cluster at %s", address)
            use_saved_token()  # the token of an embedded instance started on this machine (e.g. `run --serve`)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=not quiet)
        else:
            cpus = num_cpus or local_cpus()
            # Unix socket paths are limited to 107 bytes; Ray's default /tmp/ray/session_* is
            # shared by every instance on the box, so give each embedded instance its own.
            tmp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
            _serve_fast_path_env(tmp)
            # Every process of this instance inherits the mark; the reaper ends what is left of it
            # when this process is gone (a SIGKILLed driver left Ray's agents running for minutes).
            os.environ[reaper.MARK] = tmp
            _env_set_by_us.add(reaper.MARK)
            _reapers.append(reaper.start(tmp))
            extra = {"_metrics_export_port": metrics_export_port} if metrics_export_port else {}
            ray.init(
                num_cpus=cpus,
                # The dashboard serves Ray's state API: without it Ray Train's placement-group
                # cleaner warns every few seconds that it cannot query its controller (~2 s more
                # to start). Its own free port, as several embedded instances may share a box.
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=free_port(),
                logging_level=logging.WARNING,
                log_to_driver=not quiet,
                _temp_dir=tmp,
                **extra,
            )
            _owner_only(default_token_path())
    _configure_data_context(quiet)
    if quiet:  # the raylet's notices (a burst of worker processes starting) go to Ray's logs, not the terminal
        route_raylet_messages(_raylet_log(node_logs_dir() or tempfile.gettempdir()))
    ctx = ray.get_runtime_context()
    resources = ray.cluster_resources()
    return RayRuntime(
        address=ctx.gcs_address,
        local=address is None,
        num_cpus=float(resources.get("CPU", 0.0)),
        started=started,
    )


def attach_file(base_dir: Path) -> Path:
    """Where a serving session on an embedded Ray says which local Ray it runs (beside the config in
    `base_dir`): other commands given the same config attach to it."""
    return base_dir / ".ray-pipeline" / "ray.json"


@contextmanager
def announce_ray(path: Path, address: str) -> Iterator[None]:
    """Say, in `path`, that this process runs a local Ray at `address` (other commands attach to it),
    for as long as the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"address": address, "pid": os.getpid()}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def serving_ray(path: Path) -> str | None:
    """The address in `path` if the process that wrote it is still alive (a stale file is removed)."""
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)  # signal 0: only asks whether the process exists
        return str(info["address"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None


def logs_dir() -> str | None:
    """Where this node's Ray processes write their logs (None when not connected)."""
    return node_logs_dir()


def shutdown_ray() -> None:
    """Disconnect from (and stop, if embedded) the Ray instance, and take back the environment
    variables init_ray set. The instance's temp directory stays: it holds Ray's logs, which
    `run` links from the run root."""
    if ray.is_initialized():
        ray.shutdown()
    while _env_set_by_us:
        os.environ.pop(_env_set_by_us.pop(), None)
    while _reapers:  # the instance is down: its reaper sweeps up stragglers now, not when this process ends
        _reapers.pop().stdin.close()
