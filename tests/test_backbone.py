"""The backbone interface: Janus behind it decodes exactly as the autoregressive loop called directly; Show-o behind
it (a random-weight tiny model of the real classes, saved as a backbone folder) decodes with the masked loop, is
picked by the loader, the pipeline and build_method, and its DAiD is the masked one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arrag.decoding.loop import SamplingConfig, generate_image_tokens, make_generators
from arrag.decoding.masked import MaskedSamplingConfig, generate_masked_tokens
from arrag.decoding.pipeline import ImageGenerationPipeline, image_seed
from arrag.models.backbone import (
    AUTOREGRESSIVE,
    MASKED,
    JanusBackbone,
    ShowoBackbone,
    is_showo,
    load_backbone,
)
from arrag.models.janus import build_word_tokenizer, tokenize_prompts
from arrag.models.magvit2 import Magvit2, Magvit2Config
from arrag.models.showo import ShowoSpec, build_showo, encode_texts, phi_config, t2i_sequence, vocab_for_tokenizer
from arrag.models.showo_training import save_showo_backbone
from arrag.models.training import image_token_logits, unconditional_ids

WORDS = ["a", "photo", "of", "red", "blue", "circle", "square"]
PROMPTS = ["a photo of a red circle", "a photo of a blue square"]


def tiny_showo_parts(seed: int = 0, max_text_len: int = 128):
    """A random-weight Show-o of the real classes: 8 px images, a 4x4 grid of 16 LFQ codes (4 bits)."""
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(WORDS)
    magvit = Magvit2(Magvit2Config(32, (1, 2), (1, 1), (1, 2), (1, 1), bits=4)).eval()
    vocab = vocab_for_tokenizer(tokenizer, magvit.cfg.codebook_size, max_text_len)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    spec = ShowoSpec(vocab, 16, phi_config(vocab, num_key_value_heads=4, max_position_embeddings=256, **shape))
    return build_showo(spec).eval(), spec, magvit, tokenizer


@pytest.fixture(scope="module")
def showo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("showo") / "backbone"
    save_showo_backbone(*tiny_showo_parts(), folder)
    return folder


# ---- Janus: unchanged behaviour


def test_janus_pipeline_tokens_are_the_loops_called_directly(tiny_janus):
    model, processor, _ = tiny_janus
    pipe = ImageGenerationPipeline(model, processor, "cpu")
    assert pipe.backbone.loop == AUTOREGRESSIVE and isinstance(pipe.backbone, JanusBackbone)
    sampling = SamplingConfig(guidance_scale=3.0, temperature=0.9, top_k=20)
    seeds = [image_seed(7, p, 0) for p in PROMPTS]
    _, codes = pipe(PROMPTS, n=1, sampling=sampling, seed=7)
    batch = tokenize_prompts(processor, PROMPTS)
    direct = generate_image_tokens(
        model, batch["input_ids"], batch["attention_mask"], sampling, generators=make_generators(seeds, "cpu")
    )
    assert torch.equal(codes, direct)


def test_janus_backbone_prompts_and_teacher_forced_logits(tiny_janus):
    model, processor, _ = tiny_janus
    backbone = JanusBackbone(model, processor)
    prompts = backbone.prompts(PROMPTS)
    tok = processor.tokenizer
    boi = tok.convert_tokens_to_ids(tok.boi_token)
    expected = unconditional_ids(prompts["input_ids"], tok.bos_token_id, boi, tok.pad_token_id)
    assert torch.equal(prompts["uncond_ids"], expected)
    codes = torch.randint(0, backbone.vq.codebook_size, (2, backbone.vq.grid**2))
    with torch.no_grad():
        logits = backbone.image_logits(prompts, codes)
        direct = image_token_logits(model, prompts["input_ids"], prompts["attention_mask"], codes)
    assert torch.equal(logits, direct) and logits.shape == (2, backbone.vq.grid**2, backbone.vq.codebook_size)


# ---- Show-o


def test_showo_folder_loads_as_a_show_o_backbone(showo_dir, tmp_path):
    model, spec, magvit, tokenizer = tiny_showo_parts()
    backbone = load_backbone(showo_dir)
    assert is_showo(showo_dir) and isinstance(backbone, ShowoBackbone) and backbone.loop == MASKED
    for name, tensor in model.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[name], tensor), name
    assert (backbone.vq.grid, backbone.vq.image_size, backbone.vq.codebook_size) == (4, 8, 16)
    assert torch.equal(backbone.vq.codebook, magvit.quantize.embedding)
    with pytest.raises(ValueError, match="revision"):
        load_backbone(showo_dir, revision="abc")


def test_showo_vq_facade_round_trips_codes(showo_dir):
    vq = load_backbone(showo_dir).vq
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    codes = vq.encode(images)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
    assert vq.decode_to_uint8(codes).shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="8x8"):
        vq.encode(np.zeros((1, 16, 16, 3), dtype=np.uint8))


def test_showo_pipeline_tokens_are_the_masked_loops_called_directly(showo_dir):
    pipe = ImageGenerationPipeline.from_pretrained(showo_dir, device="cpu")
    backbone = pipe.backbone
    sampling = SamplingConfig(guidance_scale=2.5, temperature=1.0)
    images, codes = pipe(PROMPTS, n=2, sampling=sampling, seed=3, batch_size=3)
    assert images.shape == (4, 8, 8, 3) and codes.shape == (4, 4, 4)
    texts = encode_texts(backbone.tokenizer, [p for p in PROMPTS for _ in range(2)])
    seeds = [image_seed(3, p, i) for p in PROMPTS for i in range(2)]
    masked = MaskedSamplingConfig(steps=18, guidance_scale=2.5, temperature=1.0)
    direct = generate_masked_tokens(
        backbone.model, texts, backbone.vocab, 16, masked, generators=make_generators(seeds, "cpu")
    )
    assert torch.equal(codes, direct)
    assert pipe.sampling_config(sampling) == masked
    with pytest.raises(ValueError, match="--greedy and --top-k"):
        pipe(PROMPTS, sampling=SamplingConfig(greedy=True))


def test_showo_teacher_forced_logits_and_unconditional_twin(showo_dir):
    backbone = load_backbone(showo_dir)
    prompts = backbone.prompts(PROMPTS)
    assert prompts.uncond_texts == [[], []]
    codes = torch.randint(0, 16, (2, 16))
    codes[:, ::2] = -1
    with torch.no_grad():
        cond, uncond = backbone.image_logits(prompts, codes), backbone.image_logits(prompts, codes, unconditional=True)
    assert cond.shape == (2, 16, 16) and not torch.allclose(cond, uncond)


def test_showo_prompts_longer_than_the_text_block_are_refused(showo_dir):
    pipe = ImageGenerationPipeline.from_pretrained(showo_dir, device="cpu")
    with pytest.raises(ValueError, match="text block holds"):
        pipe.check_prompt_lengths([" ".join(["red"] * 127)])
    pipe.check_prompt_lengths([" ".join(["red"] * 126)])


def test_a_shorter_text_block_is_saved_loaded_and_bounds_the_prompts(tmp_path):
    save_showo_backbone(*tiny_showo_parts(max_text_len=8), tmp_path / "b")
    pipe = ImageGenerationPipeline.from_pretrained(tmp_path / "b", device="cpu")
    vocab = pipe.backbone.vocab
    assert vocab.max_text_len == 8
    pipe.check_prompt_lengths(["a photo of a red circle"])  # 6 words: the block's 8 - 2 text tokens
    with pytest.raises(ValueError, match="holds <bos>, 6 text tokens"):
        pipe.check_prompt_lengths(["a photo of a red circle circle"])
    texts = pipe.backbone.prompts(PROMPTS).texts
    seq = t2i_sequence(texts, torch.full((2, 16), -1), vocab)
    assert seq.shape == (2, 9 + 1 + 16 + 1)  # text block, <|soi|>, 16 image tokens, <|eoi|>
    _, codes = pipe(PROMPTS, n=1, sampling=SamplingConfig(guidance_scale=2.0), seed=0)
    assert codes.shape == (2, 4, 4)


def test_build_method_gives_show_o_the_masked_daid(showo_dir, tmp_path):
    from arrag.decoding.masked_daid import MaskedDAiD
    from arrag.methods import DAiDSettings, VanillaSettings, build_method
    from arrag.retrieval.database import PatchDatabase

    vq = load_backbone(showo_dir).vq
    codes = torch.randint(0, 16, (6, 4, 4), generator=torch.Generator().manual_seed(0))
    PatchDatabase.build(codes, vq.codebook, hops=1, causal=False, index="flat").save(tmp_path / "db")
    daid = build_method(DAiDSettings(db=tmp_path / "db", k=3, weight=0.0), showo_dir, device="cpu")
    hooks = daid.make_hooks()
    assert len(hooks) == 1 and isinstance(hooks[0], MaskedDAiD)
    vanilla = build_method(VanillaSettings(), showo_dir, device="cpu")
    sampling = SamplingConfig(guidance_scale=2.0)
    _, plain = vanilla.pipe(PROMPTS, sampling=sampling)
    _, zero = daid.pipe(PROMPTS, sampling=sampling, hooks=hooks)
    assert torch.equal(plain, zero)  # weight 0: the plain Show-o tokens
    daid1 = build_method(DAiDSettings(db=tmp_path / "db", k=3, weight=1.0), showo_dir, device="cpu")
    _, merged = daid1.pipe(PROMPTS, sampling=sampling, hooks=daid1.make_hooks())
    assert not torch.equal(plain, merged)


# ---- FAiD on Show-o


@pytest.fixture(scope="module")
def showo_db(showo_dir, tmp_path_factory):
    from arrag.retrieval.database import PatchDatabase

    folder = tmp_path_factory.mktemp("showo_db") / "db"
    codes = torch.randint(0, 16, (8, 4, 4), generator=torch.Generator().manual_seed(0))
    PatchDatabase.build(codes, load_backbone(showo_dir).vq.codebook, hops=1, causal=False, index="flat").save(folder)
    return folder


def test_untrained_showo_faid_gives_exactly_the_backbones_logits(showo_dir):
    from arrag.models.faid import FAiDConfig
    from arrag.models.showo_faid import ShowoFAiD

    backbone = load_backbone(showo_dir)
    faid = ShowoFAiD.for_model(backbone.model, FAiDConfig(every=1, hops="12", k=3, rank=8)).attach(backbone)
    assert len(faid.blocks) == 2 and not any(b.causal for b in faid.blocks)  # every layer, the whole ring
    prompts = backbone.prompts(PROMPTS)
    codes = torch.randint(0, 16, (2, 16))
    codes[:, 1::3] = -1
    candidates = torch.randint(-1, 16, (2, 16, 3))
    with torch.no_grad():
        plain = backbone.image_logits(prompts, codes)
        faid.plan(candidates, rows=2)
        zero = backbone.image_logits(prompts, codes)
        for block in faid.blocks:
            torch.nn.init.normal_(block.out.weight, std=0.5)
        faid.plan(candidates[:1], rows=1)  # the first row only (the conditional half under guidance)
        changed = backbone.image_logits(prompts, codes)
        faid.clear()
        again = backbone.image_logits(prompts, codes)
    assert torch.equal(plain, zero) and torch.equal(plain, again)
    assert not torch.allclose(changed[0], plain[0]) and torch.equal(changed[1], plain[1])


def _train_showo_faid(showo_dir, showo_db, tmp_path, restart: bool = False) -> dict:
    """A FAiD checkpoint of the tiny Show-o in tmp_path/faid, trained 3 steps on random codes."""
    from arrag.models.faid_training import FAiDTrainingConfig, build_trainset
    from arrag.models.showo_faid import train_showo_faid
    from arrag.retrieval.database import PatchDatabase

    backbone = load_backbone(showo_dir)
    db = PatchDatabase.load(showo_db, codebook=backbone.vq.codebook)
    codes = torch.randint(0, 16, (6, 4, 4), generator=torch.Generator().manual_seed(1))
    captions = ["a photo of a red circle", "a photo of a blue square", "a photo of a circle"] * 2
    build_trainset(backbone.model, db, codes, captions, 3, tmp_path / "ts", vq=backbone.vq)
    cfg = FAiDTrainingConfig(steps=3, batch_size=4, k=3, rank=8, lr=1e-2, checkpoint_every=0)
    return train_showo_faid(showo_dir, tmp_path / "ts", cfg, tmp_path / "faid", restart=restart)


def test_showo_faid_trains_saves_and_decodes_through_build_method(showo_dir, showo_db, tmp_path):
    from arrag.methods import FAiDSettings, VanillaSettings, build_method
    from arrag.models.showo_faid import ShowoFAiDHook, load_showo_faid
    from arrag.retrieval.database import PatchDatabase

    backbone = load_backbone(showo_dir)
    db = PatchDatabase.load(showo_db, codebook=backbone.vq.codebook)
    stats = _train_showo_faid(showo_dir, showo_db, tmp_path)
    assert stats["trainable_parameters"] > 0 and len(stats["log"]) >= 1
    faid = load_showo_faid(tmp_path / "faid", backbone, db=db)
    assert any(block.out.weight.abs().sum() > 0 for block in faid.blocks)  # it learnt something

    method = build_method(FAiDSettings(db=showo_db, faid=tmp_path / "faid"), showo_dir, device="cpu")
    hooks = method.make_hooks()
    assert len(hooks) == 1 and isinstance(hooks[0], ShowoFAiDHook)
    vanilla = build_method(VanillaSettings(), showo_dir, device="cpu")
    sampling = SamplingConfig(guidance_scale=2.0)
    _, plain = vanilla.pipe(PROMPTS, sampling=sampling)
    _, augmented = method.pipe(PROMPTS, sampling=sampling, hooks=hooks)
    assert augmented.shape == plain.shape

    other = ShowoBackbone(*tiny_showo_parts(seed=1))
    with pytest.raises(ValueError, match="another Show-o backbone"):
        load_showo_faid(tmp_path / "faid", other)


def test_showo_faid_restart_starts_over_from_a_partial_it_cannot_resume(showo_dir, showo_db, tmp_path):
    """`arrag train-faid --restart` on a Show-o backbone discards the old partial, as on Janus."""
    partial = tmp_path / "faid.partial"
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"(?s)cannot be read.*rerun with --restart"):
        _train_showo_faid(showo_dir, showo_db, tmp_path)
    stats = _train_showo_faid(showo_dir, showo_db, tmp_path, restart=True)
    assert stats["resumed_at"] == 0 and (tmp_path / "faid" / "faid.json").is_file() and not partial.exists()


def test_showo_faid_hook_retrieves_in_the_last_half_only(showo_dir, showo_db):
    from arrag.models.faid import FAiDConfig
    from arrag.models.showo_faid import ShowoFAiD, ShowoFAiDHook
    from arrag.retrieval.database import PatchDatabase

    backbone = load_backbone(showo_dir)
    db = PatchDatabase.load(showo_db, codebook=backbone.vq.codebook)
    faid = ShowoFAiD.for_model(backbone.model, FAiDConfig(every=1, k=3, rank=8)).attach(backbone)
    planned = []
    plan = faid.plan
    faid.plan = lambda ids, rows: (planned.append(ids.shape), plan(ids, rows))
    hook = ShowoFAiDHook(db, faid)
    sampling = MaskedSamplingConfig(steps=6, guidance_scale=2.0)
    texts = backbone.prompts(PROMPTS).texts
    zero = generate_masked_tokens(
        backbone.model, texts, backbone.vocab, 16, sampling, make_generators([1, 2], "cpu"), [hook]
    )
    plain = generate_masked_tokens(backbone.model, texts, backbone.vocab, 16, sampling, make_generators([1, 2], "cpu"))
    assert planned == [(2, 16, 3)] * 3 and torch.equal(zero, plain)  # steps 3..5; zero-init: the plain tokens


def test_bench_generate_times_show_o_per_masked_step(showo_dir, showo_db, tmp_path):
    from arrag.cli import main

    out = tmp_path / "bench"
    argv = ["bench", "generate", "--model", str(showo_dir), "--db", str(showo_db), "--daid-k", "3"]
    argv += ["--repeats", "1", "--batch-size", "2", "--guidance-scale", "2.0", "--device", "cpu"]
    assert main(argv + ["--out-json", f"{out}.json", "--out-md", f"{out}.md"]) == 0
    result = json.loads(Path(f"{out}.json").read_text())
    assert result["backbone"] == "showo" and (result["tokens_per_image"], result["steps_per_image"]) == (16, 18)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"vanilla", "daid"}
    assert rows["daid"]["seconds_per_step"] == rows["daid"]["seconds_per_batch"] / 18
    assert "showo backbone" in Path(f"{out}.md").read_text()


def test_bench_generate_times_show_o_with_its_faid_and_the_table_labels_its_rows(showo_dir, showo_db, tmp_path):
    """Table 4's Show-o rows: `arrag bench generate` on a Show-o folder times vanilla, DAiD and FAiD (its
    modules counted in Params); --steps, which cuts an autoregressive image short, times every masked step; the
    inference-time table names the rows after Show-o's runs, beside Janus's."""
    from arrag.cli import main
    from arrag.evaluation import tables

    _train_showo_faid(showo_dir, showo_db, tmp_path)
    out = tmp_path / "bench"
    argv = ["bench", "generate", "--model", str(showo_dir), "--db", str(showo_db), "--faid", str(tmp_path / "faid")]
    argv += ["--daid-k", "3", "--repeats", "1", "--batch-size", "2", "--guidance-scale", "2.0", "--device", "cpu"]
    assert main(argv + ["--steps", "4", "--out-json", f"{out}.json", "--out-md", f"{out}.md"]) == 0
    result = json.loads(Path(f"{out}.json").read_text())
    assert result["backbone"] == "showo" and result["timed_steps"] == result["steps_per_image"] == 18
    assert "first 4" not in Path(f"{out}.md").read_text()  # no estimate: all 18 steps were decoded
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["vanilla", "daid", "faid"] and all(len(r["runs"]) == 1 for r in rows.values())
    assert rows["faid"]["parameters"] > rows["daid"]["parameters"] == rows["vanilla"]["parameters"] > 0
    assert rows["faid"]["overhead_vs_vanilla"] == rows["faid"]["seconds_per_batch"] / rows["vanilla"]["runs"][0] - 1

    measured = tables.inference_rows(result)
    assert list(measured) == ["showo", "showo_daid", "showo_faid"]
    assert measured["showo_faid"]["overhead"] == rows["faid"]["overhead_vs_vanilla"]
