"""Benchmarks kept beside the package, not in it: ``perf`` (speed, ``python -m benchmarks.perf``) and ``quality.py``."""
