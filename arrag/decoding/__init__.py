"""Decoding: the autoregressive loop with guidance and hooks, and the text-to-image pipeline."""

from arrag.decoding.loop import DecodingHook, SamplingConfig, StepState, generate_image_tokens, guide
from arrag.decoding.pipeline import ImageGenerationPipeline, image_seed

__all__ = [
    "DecodingHook",
    "ImageGenerationPipeline",
    "SamplingConfig",
    "StepState",
    "generate_image_tokens",
    "guide",
    "image_seed",
]
