"""ray-pipeline: an end-to-end ML platform on Ray."""

__version__ = "0.1.0"
