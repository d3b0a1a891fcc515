"""Online serving on Ray Serve: validated HTTP API, batching, autoscaling, hot reload, prediction log."""
