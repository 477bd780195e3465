"""Models: the Janus loader, the VQ tokenizer facade, CLIP towers (clip), FAiD's modules (faid), and training: the
mini base model's, and the one loop (training.fit) that base, RA-CM3 and FAiD fine-tuning share."""

from arrag.models.janus import MiniJanusSpec, load_janus, tokenize_prompts
from arrag.models.vq import VQTokenizer

__all__ = ["MiniJanusSpec", "VQTokenizer", "load_janus", "tokenize_prompts"]
