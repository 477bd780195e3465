"""The benchmarks' prompt sets, vendored with the package: GenEval's prompt metadata and COCO class names
(geneval/, MIT) and DPG-Bench's prompts (dpg_bench/, Apache-2.0), each with its LICENSE."""
