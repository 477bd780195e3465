"""Benchmark data vendored with the package: DPG-Bench's prompts (dpg_bench/, Apache-2.0, see its LICENSE)."""
