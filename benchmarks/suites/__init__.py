"""The repository's own experiments (python -m benchmarks.suites.NAME); never imported by the library."""
