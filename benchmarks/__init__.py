"""Performance benchmarks of the outlier harness (``python -m pytest benchmarks -m perf``)."""
