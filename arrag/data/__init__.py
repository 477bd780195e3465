"""Image sources and benchmark prompt sets: the procedural mini world, GenEval-layout outputs."""
