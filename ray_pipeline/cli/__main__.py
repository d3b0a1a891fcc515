"""`python -m ray_pipeline.cli` (how cluster jobs run commands)."""

from ray_pipeline.cli import main

main()
