"""Benchmarks: each module prints what it measured next to its target and baseline."""
