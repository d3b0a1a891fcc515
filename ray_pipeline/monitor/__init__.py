"""Monitoring: reference profiles, drift and quality per window of the prediction log, alert rules."""
