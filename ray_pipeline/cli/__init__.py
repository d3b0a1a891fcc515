"""`ray-pipeline`: one module per sub-app (data, features, train, models, serve, monitor, labels,
cluster, feedback, demo, ui), all sharing `context` (options, errors, config and Ray).

Each command imports the stage it runs inside its function: `--help` and a quick command start
without Ray Train, Tune, Serve or scikit-learn (docs/ARCHITECTURE.md has the figures)."""

from __future__ import annotations

import sys

import typer

from ray_pipeline.cli import cluster, data, demo, features, feedback, labels, models, monitor, serve, train, ui

app = typer.Typer(
    help="ray-pipeline: data, features, training, registry, serving and monitoring on one Ray cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Top-level commands, in the order a user meets them; then the sub-apps.
for module in (data, train, feedback, demo, ui):
    app.add_typer(module.app)
for module, name in ((features, "features"), (models, "models"), (serve, "serve"), (cluster, "cluster"),
                     (monitor, "monitor"), (labels, "labels")):  # fmt: skip
    app.add_typer(module.app, name=name)


def main() -> None:
    """Entry point for `python -m ray_pipeline.cli`."""
    app(prog_name="ray-pipeline")


if __name__ == "__main__":
    sys.exit(main())
