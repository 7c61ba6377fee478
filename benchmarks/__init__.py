"""Measurements that are not tests: `python -m benchmarks.<name>` (fault injection, speed figures)."""
