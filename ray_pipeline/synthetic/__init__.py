"""Data generators with known ground truth: the demo's transactions, a seasonal table, and their truth summaries."""
