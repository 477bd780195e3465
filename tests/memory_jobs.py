"""Jobs run in a child process by tests/test_memory.py, which compares their peak memory for two input sizes.

    python tests/memory_jobs.py KIND '{"json": "arguments"}'

prints {"maxrss_kb": peak resident set (ru_maxrss), "anon_kb": private anonymous memory now (RssAnon)}.
RssAnon leaves out file-backed pages (a memory-mapped database in the page cache, shared by every job on
the machine); ru_maxrss counts them too.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's tiny model builders
torch.set_num_threads(1)


def tiny_vq():
    from conftest import WORDS, tiny_spec
    from transformers import JanusForConditionalGeneration

    from arrag.models.janus import build_word_tokenizer, mini_janus_config
    from arrag.models.vq import VQTokenizer

    torch.manual_seed(0)
    model = JanusForConditionalGeneration(mini_janus_config(tiny_spec(), build_word_tokenizer(WORDS))).eval()
    return VQTokenizer.from_janus(model)


def tokenise(args: dict) -> None:
    from arrag.data.code_shards import tokenise_shard

    tokenise_shard(args["source"], 0, 1, tiny_vq(), args["out"], batch_size=64)


def embed(args: dict) -> None:
    import open_clip

    from arrag.retrieval.image_index import ClipTextEncoder, embed_image_shard

    open_clip.add_model_config(args["clip_config"])
    encoder = ClipTextEncoder.load(args["clip_name"], args["clip_weights"], "cpu")
    embed_image_shard(args["source"], 0, 1, encoder, args["out"], batch_size=64)


def rss_anon_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssAnon:")[1].split()[0])


if __name__ == "__main__":
    kind, arguments = sys.argv[1], json.loads(sys.argv[2])
    {"tokenise": tokenise, "embed": embed}[kind](arguments)
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "anon_kb": rss_anon_kb()}))
