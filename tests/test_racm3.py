"""RA-CM3: the image-level index, the reference prefix in training and decoding, fine-tuning, over-copying."""

import numpy as np
import pytest
import torch

from arrag.baselines.racm3 import RACM3Pipeline, RACM3TrainingConfig, train_racm3
from arrag.decoding.loop import SamplingConfig, generate_image_tokens
from arrag.decoding.pipeline import generate_prompt_set
from arrag.evaluation.over_copying import read_copying_records
from arrag.models.janus import save_janus, tokenize_prompts
from arrag.models.training import image_generation_loss, position_ids_from_mask, prompt_embeddings
from arrag.models.vq import VQTokenizer, codebook_fingerprint
from arrag.retrieval.image_index import BagOfWordsEncoder, ImageLevelIndex

CAPTIONS = [
    "a photo of a red circle",
    "a photo of a blue square and a green triangle",
    "a photo of two red squares",
    "a photo of a red circle",  # a tie with row 0
    "a photo of a triangle left of a circle",
]


@pytest.fixture()
def index(tiny_janus):
    model, _, spec = tiny_janus
    codes = np.random.default_rng(0).integers(0, spec.codebook_size, (len(CAPTIONS), spec.grid, spec.grid))
    encoder = BagOfWordsEncoder(sorted({w for c in CAPTIONS for w in c.split()}))
    sha = codebook_fingerprint(VQTokenizer.from_janus(model).codebook)
    return ImageLevelIndex.build(CAPTIONS, codes.astype(np.uint16), np.arange(100, 105), encoder, sha)


def test_bag_of_words_search_equals_brute_force_cosine(index):
    queries = ["a photo of a red circle", "a photo of a green triangle and a blue square", "two red squares"]
    scores, rows = index.search(index.encoder(queries), k=2)

    def cosine(a, b):
        va, vb = (np.array([x.split().count(w) for w in index.encoder.vocabulary], float) for x in (a, b))
        return va @ vb / np.linalg.norm(va) / np.linalg.norm(vb)

    for q, query in enumerate(queries):
        brute = np.array([cosine(query, c) for c in CAPTIONS])
        assert np.allclose(scores[q], np.sort(brute)[::-1][:2], atol=1e-6)
    assert rows[0, 0] == 0  # tie between rows 0 and 3: the lowest row wins
    assert rows[1, 0] == 1  # word order does not matter
    assert list(index.retrieve(queries)) == [0, 1, 2]


def test_index_save_load_round_trip_and_bad_input(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = ImageLevelIndex.load(tmp_path / "idx")
    assert np.array_equal(loaded.codes, index.codes) and np.array_equal(loaded.image_ids, index.image_ids)
    assert list(loaded.retrieve(CAPTIONS)) == list(index.retrieve(CAPTIONS))
    with pytest.raises(ValueError, match="another VQ codebook"):
        loaded.check_codebook("0" * 64)
    with pytest.raises(FileNotFoundError, match="build-image-index"):
        ImageLevelIndex.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="between 1 and the index size"):
        index.search(index.encoder(["a circle"]), k=6)
    with pytest.raises(ValueError, match="shares no word"):
        index.retrieve(["a photo of a circle", "zebra unicorn"])
    assert index.encoder(["A photo, of a RED circle."]).tolist() == index.encoder(["a photo of a red circle"]).tolist()


def test_prefix_shapes_and_masking(tiny_janus, index):
    model, processor, spec = tiny_janus
    batch = tokenize_prompts(processor, ["a photo of a circle", "a photo of two red squares"])
    prefix = index.reference_codes(np.array([0, 2]))  # [2, 16]
    embeds, mask = prompt_embeddings(model, batch["input_ids"], batch["attention_mask"], prefix, torch.tensor([1, 0]))
    b, length = batch["input_ids"].shape
    assert prefix.shape == (2, spec.grid**2)
    assert embeds.shape == (b, spec.grid**2 + length, model.config.text_config.hidden_size)
    assert mask[0, : spec.grid**2].all() and not mask[1, : spec.grid**2].any()
    assert torch.equal(mask[:, spec.grid**2 :], batch["attention_mask"])


def test_a_masked_prefix_is_the_same_as_no_prefix(tiny_janus, index):
    model, processor, spec = tiny_janus
    batch = tokenize_prompts(processor, ["a photo of a circle", "a photo of two red squares"])
    codes = torch.randint(0, spec.codebook_size, (2, spec.grid**2), generator=torch.Generator().manual_seed(1))
    prefix = index.reference_codes(np.array([1, 2]))
    with torch.no_grad():
        plain = image_generation_loss(model, batch["input_ids"], batch["attention_mask"], codes)
        hidden = image_generation_loss(model, **batch, codes=codes, prefix_codes=prefix, prefix_visible=torch.zeros(2))
        seen = image_generation_loss(model, batch["input_ids"], batch["attention_mask"], codes, prefix_codes=prefix)
    assert torch.allclose(plain, hidden, atol=1e-5)
    assert not torch.allclose(plain, seen, atol=1e-3)


def test_decoding_with_a_prefix_matches_a_full_forward(tiny_janus, index):
    """Greedy tokens from the cached loop equal the argmax of one uncached forward over [prefix | prompt | tokens],
    with the same construction the fine-tuning loss uses; guidance masks the prefix out of the unconditional rows."""
    model, processor, spec = tiny_janus
    batch = tokenize_prompts(processor, ["a photo of a circle", "a photo of a red square and a circle"])
    prefix = index.reference_codes(np.array([0, 1]))
    sampling = SamplingConfig(guidance_scale=3.0, greedy=True)
    codes = generate_image_tokens(model, **batch, sampling=sampling, prefix_codes=prefix).flatten(1)  # [2, T]

    from arrag.models.training import unconditional_ids

    gc = model.generation_config
    uncond = unconditional_ids(
        batch["input_ids"], gc.bos_token_id, gc.generation_kwargs["boi_token_id"], gc.pad_token_id
    )
    with torch.no_grad():
        logits = []
        for ids, visible in ((batch["input_ids"], torch.ones(2)), (uncond, torch.zeros(2))):
            prompt, mask = prompt_embeddings(model, ids, batch["attention_mask"], prefix, visible)
            image = model.prepare_embeddings_for_image_generation(codes[:, :-1])
            embeds = torch.cat([prompt, image], 1)
            mask = torch.cat([mask, mask.new_ones(codes[:, :-1].shape)], 1)
            hidden = model.model.language_model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).last_hidden_state
            logits.append(model.model.generation_head(hidden[:, prompt.shape[1] - 1 :]))
    guided = logits[1] + 3.0 * (logits[0] - logits[1])
    assert torch.equal(guided.argmax(-1), codes)
    vanilla = generate_image_tokens(model, **batch, sampling=sampling).flatten(1)
    assert not torch.equal(vanilla, codes)  # the reference changes what is generated


def test_a_few_fine_tuning_steps_lower_the_loss(tiny_janus, index, tmp_path):
    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    index.save(tmp_path / "index")  # what RA-CM3 records: the index's identity
    codes = torch.from_numpy(index.codes[[0, 1, 2, 4]].astype(np.int64))
    captions = [CAPTIONS[i] for i in (0, 1, 2, 4)]
    cfg = RACM3TrainingConfig(steps=30, batch_size=4, lr=3e-3, caption_dropout=0.0, checkpoint_every=0)
    stats = train_racm3(tmp_path / "base", codes, captions, index, cfg, tmp_path / "racm3", device="cpu")
    losses = [entry["loss"] for entry in stats["log"]]
    assert losses[-1] < 0.8 * losses[0]
    assert (tmp_path / "racm3" / "model.safetensors").is_file() and stats["distinct_references"] == 4
    assert not (tmp_path / "racm3.partial").exists()


def test_pipeline_records_copying_against_the_reference(tiny_janus, index, tmp_path):
    model, processor, _ = tiny_janus
    pipe = RACM3Pipeline(model, processor, index, "cpu")
    records = [{"prompt": "a photo of a red circle"}, {"prompt": "a photo of two red squares"}]
    sampling = SamplingConfig(guidance_scale=3.0, greedy=True)
    generate_prompt_set(pipe, records, tmp_path / "out", n=1, sampling=sampling)
    rows = read_copying_records(tmp_path / "out")
    images, codes = pipe([r["prompt"] for r in records], n=1, sampling=sampling)
    reference = torch.from_numpy(index.codes[[0, 2]].astype(np.int64))
    for row, grid, ref, source in zip(rows, codes, reference, (100, 102)):
        same = grid == ref  # copied = equal to the reference's token at the same position
        assert row["copied_fraction"] == pytest.approx(same.float().mean().item())
        if same.any():
            assert row["top_sources"][0] == [source, int(same.sum())]


def test_pipeline_refuses_an_index_of_another_codebook(tiny_janus, index):
    model, processor, _ = tiny_janus
    index.codebook_sha256 = "f" * 64
    with pytest.raises(ValueError, match="another VQ codebook"):
        RACM3Pipeline(model, processor, index, "cpu")


def test_attribution_picture_shows_the_sources(tiny_janus, index, tmp_path):
    from PIL import Image

    from arrag.visualise import attribution_figure, attribution_rows, load_source_images

    model, processor, _ = tiny_janus
    pipe = RACM3Pipeline(model, processor, index, "cpu")
    records = [{"prompt": "a photo of a red circle"}, {"prompt": "a photo of two red squares"}]
    generate_prompt_set(pipe, records, tmp_path / "out", n=2, sampling=SamplingConfig(guidance_scale=3.0))
    rows = attribution_rows(tmp_path / "out", n=3)
    assert len(rows) == 3
    fractions = [r["largest_region_fraction"] for r in rows]
    assert fractions == sorted(fractions, reverse=True)
    assert all(np.array(r["source_grid"]).shape == index.grid for r in rows)

    # the corpus as a folder source: image id = position in the sorted file list
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    images = pipe.vq.decode_to_uint8(torch.from_numpy(index.codes.astype(np.int64)))
    for i in range(105):
        Image.fromarray(images[i % len(images)]).save(corpus / f"{i:03d}.png")
    wanted = {image_id for r in rows for image_id, _ in r["top_sources"]}
    sources = load_source_images({"type": "folder", "path": str(corpus)}, wanted, size=16)
    assert set(sources) == wanted
    out = attribution_figure({"racm3": rows}, sources, tmp_path / "attribution.png")
    assert Image.open(out).size[1] >= 3 * 16 * 4
    with pytest.raises(ValueError, match="no readable images with ids"):
        load_source_images({"type": "folder", "path": str(corpus)}, {999}, size=16)


def test_two_processes_train_exactly_like_one(tiny_janus, index, tmp_path):
    """`train-racm3` under torchrun with 2 CPU processes (gloo) equals one process accumulating the same global
    batch in two micro-batches: each process takes every other example and the gradients are summed."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from arrag.data.code_shards import shard_paths, write_code_shard

    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    index.save(tmp_path / "index")
    meta = {  # the fine-tuning pairs as a captioned code shard
        "codebook_size": spec.codebook_size,
        "codebook_sha256": index.codebook_sha256,
        "tokenizer_id": "",
        "source": {"type": "folder", "path": "pairs"},
        "source_ids": [f"{i}.png" for i in range(len(CAPTIONS))],
        "captions": CAPTIONS,
    }
    write_code_shard(tmp_path / "pairs", 0, 1, index.codes[::-1], np.arange(len(CAPTIONS)), meta)
    common = ["train-racm3", "--model", str(tmp_path / "base"), "--image-index", str(tmp_path / "index")]
    common += ["--codes", str(shard_paths(tmp_path / "pairs", 0, 1)[0]), "--device", "cpu"]
    common += [f"--set={kv}" for kv in ("steps=4", "batch_size=2", "lr=3e-3", "checkpoint_every=0")]
    common += ["--set=caption_dropout=0.25"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "arrag", *common, "--set=grad_accum=2", "--out", str(tmp_path / "one")]
    subprocess.run(one, check=True, env=env, capture_output=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, "-m", "arrag", *common, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    base = load_file(tmp_path / "base" / "model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], base[k]) for k in a)  # training moved weights
    for name in a:  # Adam divides by sqrt(v): summation-order noise in near-zero gradients shows at ~1e-6
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
