"""Benchmark presets: a base config and a grid of runs."""
