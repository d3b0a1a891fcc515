"""The web console: its own Ray Serve application (FastAPI + Jinja2, every asset in the package)
that shows the whole loop - pipeline map, runs, models, serving, monitoring, data - by reading
through the stages' own APIs, and runs the registry's actions through the same gates as the CLI."""
