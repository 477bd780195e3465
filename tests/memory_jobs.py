"""Jobs run in a child process by tests/test_memory.py, which compares their peak memory for two input sizes.

    python tests/memory_jobs.py KIND '{"json": "arguments"}'

prints {"maxrss_kb": peak resident set (VmHWM), "anon_kb": private anonymous memory now (RssAnon)}.
VmHWM is this process's own peak: getrusage's ru_maxrss would also count the parent's pages at the fork
before exec (Linux keeps that high-water mark across execve). RssAnon leaves out file-backed pages (a
memory-mapped database in the page cache, shared by every job on the machine); VmHWM counts them too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def codebook() -> torch.Tensor:
    """The codebook [1024, 8] the build and search jobs share (the mini profile's size)."""
    gen = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(1024, 8, generator=gen), dim=1)


def build(args: dict) -> None:
    from arrag.retrieval.database import PatchDatabase

    db = PatchDatabase.from_code_shards(args["shards"], codebook(), index=args["index"], **args.get("params", {}))
    db.save(args["out"])


def search(args: dict):
    from arrag.retrieval import query_from_grid
    from arrag.retrieval.database import PatchDatabase

    db = PatchDatabase.load(args["db"], codebook(), mmap=args.get("mmap", True))
    if "nprobe" in args:
        db.set_search_params(nprobe=args["nprobe"])
    grids = torch.randint(0, 1024, (16, 8, 8), generator=torch.Generator().manual_seed(1))
    queries = torch.cat([query_from_grid(grids, r, 5, codebook()) for r in (3, 7)])  # [32, 4 * 8]
    db.search(queries, 10)  # an exhaustive search touches every page of the index
    return db  # kept alive until the memory is read


def status_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


if __name__ == "__main__":
    kind, arguments = sys.argv[1], json.loads(sys.argv[2])
    result = {"tokenise": tokenise, "embed": embed, "build": build, "search": search}[kind](arguments)
    print(json.dumps({"maxrss_kb": status_kb("VmHWM"), "anon_kb": status_kb("RssAnon")}))
