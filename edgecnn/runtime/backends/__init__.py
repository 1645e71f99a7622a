"""One small module per runtime; each imports its runtime only when opened."""
