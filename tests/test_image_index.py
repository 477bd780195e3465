"""RA-CM3's CLIP image retriever (arrag.retrieval.image_index): the text encoder is open_clip's, embedding
shards equal direct embedding, the index joins codes and embeddings per image, exact search in blocks equals
brute force with ties to the lowest row, and the index refuses embeddings of other weights."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from arrag.cli import main
from arrag.data.code_shards import image_source, shard_paths, tokenise_shard
from arrag.data.downloads import sha256_of
from arrag.data.sources import iter_source
from arrag.models.janus import save_janus
from arrag.models.vq import VQTokenizer
from arrag.retrieval import image_index as ii

PROMPTS = ["a photo of a red circle", "two blue squares", "a green triangle left of a circle"]


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    name, weights, _ = tiny_clip
    return ii.ClipTextEncoder.load(name, str(weights))


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    specs = []
    for name, n in (("a", 5), ("b", 3)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
        specs.append({"type": "folder", "path": str(tmp_path / name)})
    return specs


def _shards(specs, vq, encoder, out):
    """Tokenise and CLIP-embed each source in 2 shards -> (code shard paths, embedding shard paths)."""
    codes, embeddings = [], []
    for k, spec in enumerate(specs):
        for shard in range(2):
            tokenise_shard(spec, shard, 2, vq, out / "codes" / str(k))
            ii.embed_image_shard(spec, shard, 2, encoder, out / "clip" / str(k), batch_size=2)
            codes.append(shard_paths(out / "codes" / str(k), shard, 2)[0])
            embeddings.append(ii.embedding_shard_path(out / "clip" / str(k), shard, 2))
    return codes, embeddings


def test_text_encoder_is_open_clips_encode_text(tiny_clip, encoder):
    import open_clip

    name, weights, model = tiny_clip
    with torch.no_grad():
        want = F.normalize(model.encode_text(open_clip.get_tokenizer(name)(PROMPTS)).float(), dim=-1)
    np.testing.assert_allclose(encoder(PROMPTS), want.numpy(), atol=1e-6)
    assert encoder.describe() == {
        "name": "open_clip",
        "model": name,
        "pretrained": str(weights),
        "sha256": sha256_of(weights),
    }


def test_index_from_shards_joins_each_image_with_its_codes_and_embedding(tiny_janus, encoder, folders, tmp_path):
    vq = VQTokenizer.from_janus(tiny_janus[0])
    codes, embeddings = _shards(folders, vq, encoder, tmp_path)
    sha = _codebook_sha(vq)
    # shard order does not matter; the arrays are written shard by shard into the memory-mapped index
    index = ii.ImageLevelIndex.write_from_shards(codes, embeddings[::-1], encoder, tmp_path / "index", sha)
    assert sorted(index.image_ids.tolist()) == list(range(8)) and [t["offset"] for t in index.sources] == [0, 5]
    assert isinstance(index.codes, np.memmap) and index.codes.dtype == np.uint16
    for row, image_id in enumerate(index.image_ids):
        spec, position = image_source(index.sources, int(image_id))
        (record,) = [r for r in iter_source(spec, size=encoder.input_size) if r.image_id == position]
        np.testing.assert_allclose(index.embeddings[row], encoder.embed_images(record.image[None])[0], atol=1e-3)
        (small,) = [r for r in iter_source(spec, size=vq.image_size) if r.image_id == position]
        assert np.array_equal(index.codes[row], vq.encode(small.image[None])[0].numpy())

    brute = np.argmax(encoder(PROMPTS) @ index.embeddings.astype(np.float32).T, axis=1)
    assert index.retrieve(PROMPTS).tolist() == brute.tolist()
    loaded = ii.ImageLevelIndex.load(tmp_path / "index")  # the query encoder is rebuilt from its description
    assert isinstance(loaded.encoder, ii.ClipTextEncoder) and loaded.sources == index.sources
    assert loaded.retrieve(PROMPTS).tolist() == brute.tolist()
    assert loaded.built_from["code_shards"] and len(loaded.built_from["embedding_shards"]) == len(embeddings)


def _codebook_sha(vq):
    from arrag.models.vq import codebook_fingerprint

    return codebook_fingerprint(vq.codebook)


def test_embeddings_of_other_weights_are_refused(tiny_janus, tiny_clip, encoder, folders, tmp_path):
    vq = VQTokenizer.from_janus(tiny_janus[0])
    codes, embeddings = _shards(folders[:1], vq, encoder, tmp_path)
    name, weights, model = tiny_clip
    from safetensors.torch import save_file

    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in other.items()}, tmp_path / "other.safetensors")
    out, sha = tmp_path / "index", _codebook_sha(vq)
    with pytest.raises(ValueError, match="same CLIP model and weights"):
        ii.ImageLevelIndex.write_from_shards(
            codes, embeddings, ii.ClipTextEncoder.load(name, str(tmp_path / "other.safetensors")), out, sha
        )
    other_codes = _shards(folders[1:], vq, encoder, tmp_path / "b")[0]  # codes of another source
    with pytest.raises(ValueError, match="none of the code shards"):
        ii.ImageLevelIndex.write_from_shards(other_codes, embeddings, encoder, out, sha)
    with pytest.raises(ValueError, match="another VQ codebook"):
        ii.ImageLevelIndex.write_from_shards(codes, embeddings, encoder, out, "0" * 64)
    assert not out.exists() and not list(tmp_path.glob(".index*"))  # nothing written by a refused build


@pytest.mark.parametrize("block", [1, 2, 3, 1 << 18])
def test_search_in_blocks_is_exact_with_ties_to_the_lowest_row(monkeypatch, block):
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(7, 4)).astype(np.float32)
    embeddings[[2, 5]] = embeddings[4]  # rows 2, 4 and 5 tie for any query, across block boundaries
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    index = ii.ImageLevelIndex(embeddings, np.arange(7), np.zeros((7, 2, 2), np.uint16), None, "sha")
    queries = np.concatenate([embeddings[[4]], rng.normal(size=(3, 4)).astype(np.float32)])
    monkeypatch.setattr(ii, "ROW_BLOCK", block)
    scores, rows = index.search(queries, k=4)
    full = queries @ embeddings.T
    for q in range(len(queries)):
        want = sorted(range(7), key=lambda r: (-round(float(full[q, r]), 5), r))[:4]
        assert rows[q].tolist() == want and np.allclose(scores[q], full[q, want], atol=1e-6)
    assert rows[0, :3].tolist() == [2, 4, 5]
    monkeypatch.setattr(ii, "_keeps_resident", lambda device: True)  # the GPU path: the matrix copied once
    resident = index.search(queries, k=4)
    assert np.array_equal(resident[1], rows) and np.allclose(resident[0], scores) and len(index.resident) == 1


def test_embed_and_build_commands(tiny_janus, tiny_clip, folders, tmp_path):
    model, processor, _ = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    name, weights, _ = tiny_clip
    clip = ["--clip-model", name, "--clip-pretrained", str(weights), "--device", "cpu"]
    source = json.dumps(folders[0])
    for shard in range(2):
        shard_args = ["--source", source, "--shard", str(shard), "--num-shards", "2"]
        assert main(["embed-images", *shard_args, *clip, "--out", str(tmp_path / "clip")]) == 0
        base = ["--model", str(tmp_path / "base"), "--device", "cpu"]
        assert main(["tokenise", *base, *shard_args, "--out", str(tmp_path / "codes")]) == 0
    build = [
        "build-image-index",
        "--model",
        str(tmp_path / "base"),
        "--codes",
        *map(str, (tmp_path / "codes").glob("*.npz")),
    ]
    embeddings = ["--embeddings", *map(str, (tmp_path / "clip").glob("*.npz"))]
    assert main([*build, *embeddings, *clip[:4], "--out", str(tmp_path / "index")]) == 0
    index = ii.ImageLevelIndex.load(tmp_path / "index")
    assert len(index) == 5 and index.metadata["encoder"]["model"] == name
    assert main([*build, "--out", str(tmp_path / "nothing")]) == 2  # neither embeddings nor captions


def test_openai_weights_in_a_gelu_architecture_are_refused():
    """open_clip only warns when OpenAI's QuickGELU weights are loaded into ViT-B-32 (standard GELU): the loader
    refuses it before any download and names ViT-B-32-quickgelu; matching pairs pass."""
    from arrag.models.clip import clip_embedder, refuse_activation_mismatch

    with pytest.raises(ValueError, match="use the model name ViT-B-32-quickgelu"):
        clip_embedder("ViT-B-32", "openai")
    refuse_activation_mismatch("ViT-B-32-quickgelu", "openai")
    refuse_activation_mismatch("ViT-B-32", "laion2b_s34b_b79k")  # trained with GELU
    refuse_activation_mismatch("ViT-B-32", "/weights/local.safetensors")  # a file: its activation is not known
