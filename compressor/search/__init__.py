"""Latency-targeted pruning and latency-aware allocation (they time real exported models)."""
