"""Decoding: the autoregressive loop with guidance and hooks, DAiD, FAiD's retrieval hook, and the text-to-image
pipeline."""

from arrag.decoding.daid import DAiD, merge_distributions, retrieval_distribution
from arrag.decoding.faid import FAiDHook, training_candidates
from arrag.decoding.loop import DecodingHook, SamplingConfig, StepState, generate_image_tokens, guide
from arrag.decoding.pipeline import ImageGenerationPipeline, image_seed

__all__ = [
    "DAiD",
    "DecodingHook",
    "FAiDHook",
    "ImageGenerationPipeline",
    "SamplingConfig",
    "StepState",
    "generate_image_tokens",
    "guide",
    "image_seed",
    "merge_distributions",
    "retrieval_distribution",
    "training_candidates",
]
