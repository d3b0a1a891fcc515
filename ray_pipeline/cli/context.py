"""What every command shares: its options, one error policy, the config and Ray it runs on."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import typer

from ray_pipeline.config import PipelineConfig, SyntheticConfig, load_config
from ray_pipeline.errors import UserError

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of the pipeline.yaml to use.")]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to connect to (e.g. ray://head:10001 or auto); a local Ray starts if unset.",
    ),
]

F = TypeVar("F", bound=Callable[..., object])

VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Ray's own logs and per-worker lines instead of progress bars; tracebacks."),
]


def friendly_errors(fn: F) -> F:
    """Turn errors into one clear line (exit 2 for what the user can fix, 1 otherwise); the
    traceback only with --verbose (or RAY_PIPELINE_TRACEBACK=1)."""
    import click

    from ray_pipeline.data.sources import IngestError
    from ray_pipeline.registry.database import RegistryError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (UserError, IngestError, RegistryError, FileNotFoundError) as exc:  # ConfigError is a UserError
            if kwargs.get("verbose") or os.environ.get("RAY_PIPELINE_TRACEBACK") == "1":
                raise
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except Exception as exc:
            if kwargs.get("verbose") or os.environ.get("RAY_PIPELINE_TRACEBACK") == "1":
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            typer.secho(f"error: {type(exc).__name__}: {first} (--verbose shows the traceback)",
                        fg=typer.colors.RED, err=True)  # fmt: skip
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def heading(text: str) -> None:
    """A bold line: a step of a long command."""
    typer.secho(text, bold=True)


def start_ray(address: str | None, verbose: bool = False, cfg: PipelineConfig | None = None):
    """Connect to Ray; without --verbose Ray's per-worker output stays in its log files and our
    progress bars show instead. Without an address, a local Ray that `run --serve` started for the
    same config is attached to instead of starting a second one beside it."""
    from ray_pipeline.progress import set_enabled
    from ray_pipeline.runtime import attach_file, init_ray, serving_ray

    set_enabled(not verbose)
    if not (address or os.environ.get("RAY_ADDRESS")) and cfg is not None:
        address = serving_ray(attach_file(cfg.base_dir))
        if address:
            typer.echo(f"attached to the local Ray that `run --serve` started: {address}")
    return init_ray(address, quiet=not verbose)


def stop_on_signals(echo: Callable[[str], object]):
    """An event SIGTERM and SIGINT set instead of interrupting: a long-lived job stops between two
    units of work (a window, a retrain) with its state saved, never in the middle of one."""
    import signal
    import threading

    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not stop.is_set():
            echo(f"{signal.Signals(signum).name}: stopping after the current step")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    """NAME=VALUE options as a dict, or a UserError naming the option."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option}: expected NAME=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def synthetic_spec(
    cfg: PipelineConfig | None, overrides: dict[str, object], drift: dict[str, object]
) -> SyntheticConfig:
    """The config's `synthetic` section with the command line's overrides and drift."""
    base = cfg.synthetic.model_dump() if cfg is not None and cfg.synthetic is not None else {}
    base.update({k: val for k, val in overrides.items() if val is not None})
    if drift:
        base["drift"] = {**(base.get("drift") or {}), **drift}
    return SyntheticConfig.model_validate(base)


NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Registered model (default: registry.model_name).")]


@dataclass
class Context:
    """A command's config and the Ray it connected to."""

    cfg: PipelineConfig
    runtime: Any  # runtime.RayRuntime (imported lazily: Ray is slow to import)


def connect(config: Path, address: str | None, verbose: bool) -> Context:
    """Load the config and connect to Ray (to the local Ray `run --serve` started for it, if any)."""
    cfg = load_config(config)
    return Context(cfg, start_ray(address, verbose, cfg))
