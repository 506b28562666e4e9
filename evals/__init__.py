"""Evaluation suites, metrics and benchmarks."""
