"""Benchmarks: `arrag bench ...` measures performance side by side in one run."""

# Table 4 at Janus-Pro-1B's size: its rows, here so that `arrag --help` need not import torch to list them
JANUS_BENCH_ROWS = ("vanilla", "generate()", "daid", "faid_paper", "faid_lowrank", "racm3")
