"""Baselines re-implemented on the same backbone: RA-CM3 (image-level retrieval augmentation)."""
