import os

import pytest
import torch

from arrag.models.janus import (
    MiniJanusSpec,
    build_processor,
    build_word_tokenizer,
    configure_image_generation,
    mini_janus_config,
)


@pytest.fixture(autouse=True, scope="session")
def verified_cache(tmp_path_factory):
    """Stamps of verified artefacts (arrag.manifest) go to a temporary folder, not the user's cache."""
    os.environ["ARRAG_VERIFIED_CACHE"] = str(tmp_path_factory.mktemp("verified"))


# The tests' models are tiny: one thread each is faster than two fighting over a loaded 2-core machine.
torch.set_num_threads(1)

WORDS = "a photo of an red green blue circle square triangle and two three left right above below".split()


def tiny_spec(**kw) -> MiniJanusSpec:
    base = dict(image_size=16, patch_size=4, codebook_size=64, hidden_size=32, num_layers=2, num_heads=2)
    base.update(kw)
    return MiniJanusSpec(**base)


@pytest.fixture(scope="session")
def tiny_janus():
    """A random-weight JanusForConditionalGeneration of the mini shape (4x4 token grid) and its processor."""
    from transformers import JanusForConditionalGeneration

    torch.manual_seed(0)
    spec = tiny_spec()
    tok = build_word_tokenizer(WORDS)
    model = JanusForConditionalGeneration(mini_janus_config(spec, tok)).eval()
    # larger random embeddings and head so tokens depend on the prompt and on earlier tokens (a default
    # init collapses to one token, which would make the equivalence tests weak) and argmax is far from ties
    with torch.no_grad():
        model.model.generation_head.vision_head.weight.mul_(20)
        model.model.generation_embeddings.weight.normal_(0, 1)
        model.get_input_embeddings().weight.normal_(0, 1)
    configure_image_generation(model, tok, guidance_scale=3.0)
    return model, build_processor(tok, spec.image_size, spec.grid**2), spec


TINY_CLIP = {  # an open_clip config small enough for tests; the real tokenizer's vocabulary, so text works too
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(model name, safetensors path, the random-weight model): a registered tiny open_clip config."""
    import json

    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    (root / "arrag-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "arrag-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("arrag-tiny-clip").eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "tiny.safetensors")
    return "arrag-tiny-clip", root / "tiny.safetensors", model


def pytest_collection_modifyitems(items):
    """The modules with DAG runs (marked smoke) first: they are the longest, and run beside the rest in parallel
    (pytest-xdist gives each worker whole modules, in this order) instead of after it."""
    smoke = {item.module.__name__ for item in items if item.get_closest_marker("smoke")}
    items.sort(key=lambda item: item.module.__name__ not in smoke)  # stable: keeps each module's own order
