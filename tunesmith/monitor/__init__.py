"""Monitor and iterate: A/B statistics between model versions (stats) and drift against the training data (drift)."""
