"""The feedback loop: labeled traffic back into the data pipeline, retrain, gate, promote."""
