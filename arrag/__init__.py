"""arrag: patch-level autoregressive retrieval augmentation (AR-RAG) for image generation."""

__version__ = "0.1.0"
