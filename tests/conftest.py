"""Shared fixtures: one real local Ray instance per test session, small data, temp dirs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Must be set before Ray starts: no token auth, no usage reporting, no progress bars in logs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
os.environ.pop("RAY_ADDRESS", None)

ROOT = Path(__file__).resolve().parents[1]
# Node metrics (Ray Serve's and ours) for the scrape test; outside Ray's 10002-19999 worker ports.
METRICS_PORT = 20_000 + os.getpid() % 5_000
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


def require_binary(name: str, package: str) -> str:
    """The path of a program a test needs: skip without it, but fail under CI=true (CI installs it)."""
    binary = shutil.which(name)
    if binary is None:
        message = f"{name} not found: install it with `apt-get install -y {package}` (make test does, as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's postgresql package puts it."""
    import glob

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


# The files that take longest, in that order, run first: `make test`'s pytest-xdist workers take
# whole files, and a long file started last would keep one worker busy after the other is done.
LONGEST_FIRST = ["test_local_cluster.py", "test_real_drift.py", "test_train.py", "test_search.py", "test_tasks.py", "test_cli.py",
                 "test_feedback_loop.py", "test_serve_traffic.py", "test_console.py", "test_own_table.py",
                 "test_task_loop.py"]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first; each file's tests stay together and in their order (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@dataclass
class Postgres:
    """One PostgreSQL server of the tests: its admin URL, and stop / start for fault tests."""

    url: str
    stop: Callable[[], None]
    start: Callable[[], None]


@contextmanager
def postgres_instance() -> Iterator[Postgres]:
    """A real PostgreSQL server: initdb in a temp dir, a free port, run as a non-root user
    (PostgreSQL refuses root); removed afterwards. Skips (fails when CI=true) without PostgreSQL."""
    import subprocess
    import tempfile

    from ray_pipeline.runtime import free_port

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        message = "PostgreSQL not found: install it with `apt-get install -y postgresql` (make test does, as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    base = tempfile.mkdtemp(prefix="rp-pg-")
    data = os.path.join(base, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = "postgres" if any(p.pw_name == "postgres" for p in pwd.getpwall()) else "nobody"
        os.chmod(base, 0o755)
        shutil.chown(base, user)
        prefix = ["runuser", "-u", user, "--"]
    port = free_port()
    subprocess.run([*prefix, initdb, "-D", data, "-U", "rp", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(base, "log"), "-w", "start"],
                       check=True, capture_output=True)  # fmt: skip

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)

    start()
    try:
        yield Postgres(f"postgresql+psycopg://rp@127.0.0.1:{port}/postgres", stop, start)
    finally:
        stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server; yields an admin SQLAlchemy URL."""
    with postgres_instance() as server:
        yield server.url


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server (URL)."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return postgres_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def s3_server_or_none() -> Iterator[str | None]:
    """An S3-compatible server (moto's server mode, a process of its own) on a free port, or None
    without moto. AWS_ENDPOINT_URL and test credentials point this process at it, and Ray's
    processes too: `ray_session` starts after it, so its workers inherit them."""
    import subprocess
    import sys
    import urllib.request

    from ray_pipeline.runtime import free_port

    from .helpers import wait_until

    try:
        import moto.server  # noqa: F401
    except ImportError:
        yield None
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(endpoint, timeout=1).status == 200
        except OSError:
            return False

    try:
        if not wait_until(up, 30):
            raise RuntimeError(f"moto server on {endpoint} did not answer in 30 s")
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def s3_server(s3_server_or_none: str | None) -> str:
    """The session's S3-compatible server endpoint; skips (fails when CI=true) without moto."""
    if s3_server_or_none is None:
        message = "moto not installed: install the dev extra (`pip install -e .[dev]`, make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return s3_server_or_none


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the session's S3 server, as an s3:// URI."""
    import uuid

    import pyarrow.fs as pafs

    name = f"rp-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server_or_none):
    """The one Ray instance of this test session, per pytest-xdist worker (started on first use, stopped at the end)."""
    from ray_pipeline.runtime import init_ray, shutdown_ray

    runtime = init_ray(num_cpus=4, metrics_export_port=METRICS_PORT)
    yield runtime
    shutdown_ray()


@pytest.fixture
def demo_config_dict() -> dict:
    """configs/demo.yaml as a plain mapping, for tests to adapt."""
    import yaml

    return yaml.safe_load(DEMO_CONFIG.read_text())


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A temp dir holding configs/demo.yaml, so the demo's relative paths land under tmp_path."""
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO_CONFIG, tmp_path / "configs" / "demo.yaml")
    return tmp_path
