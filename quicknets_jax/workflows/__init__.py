"""Whole runs in a working directory: comparisons, studies, metrics, aggregation, and using what was trained."""
