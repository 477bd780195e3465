"""Benchmarks: `arrag bench ...` measures performance side by side in one run."""
