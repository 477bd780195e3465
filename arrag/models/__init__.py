"""Backbones: the Janus loader, the VQ tokenizer facade, and the mini base model's training."""

from arrag.models.janus import MiniJanusSpec, load_janus, tokenize_prompts
from arrag.models.vq import VQTokenizer

__all__ = ["MiniJanusSpec", "VQTokenizer", "load_janus", "tokenize_prompts"]
