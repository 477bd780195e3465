"""Image sources and benchmark prompt sets: the procedural mini world, GenEval- and DPG-Bench-layout files."""
