"""Show-o's LM without its weights: the full-size model on the meta device, a random-weight tiny model of the
same class for the prompt layout, the omni-attention mask and the loader."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from arrag.manifest import write_manifest
from arrag.models.janus import ModelLoadError
from arrag.models.showo import (
    MAX_TEXT_LEN,
    WEIGHTS_NAME,
    ShowoSpec,
    ShowoVocab,
    build_showo,
    encode_texts,
    image_logits,
    load_showo,
    omni_attention_mask,
    phi_config,
    read_spec,
    save_showo,
    showo_logits,
    t2i_prompts,
    t2i_sequence,
    vocab_for_tokenizer,
)

TINY_VOCAB = ShowoVocab(text_vocab_size=40, codebook_size=16, bos_id=1, eos_id=2)
TINY_SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
)
N = 16  # a 4x4 image grid


def tiny_spec():
    return ShowoSpec(TINY_VOCAB, N, phi_config(TINY_VOCAB, **TINY_SHAPE))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_showo(tiny_spec()).eval()


def sequences(vocab=TINY_VOCAB):
    """Three texts (one long enough to be cut, so that row has no padding), partly masked codes."""
    texts = [[5, 6, 7], [vocab.bos_id, 9], list(range(3, 38)) * 4]
    codes = torch.randint(0, vocab.codebook_size, (3, N), generator=torch.Generator().manual_seed(1))
    codes[0, ::3] = -1
    codes[1] = -1
    return texts, codes, t2i_prompts(texts, codes, vocab)


# ---- the full-size model, as published


def test_vocabulary_ids_follow_the_order_show_o_adds_them():
    v = ShowoVocab()
    assert v.pad_id == 50295
    assert [v.special(t) for t in ("<|soi|>", "<|eoi|>", "<|t2i|>", "<|lvg|>")] == [50296, 50297, 50300, 50304]
    assert (v.image_offset, v.mask_id, v.vocab_size) == (50305, 58497, 58498)
    v.check(58498, 58497)
    with pytest.raises(ModelLoadError, match="58498"):
        v.check(58499)
    with pytest.raises(ValueError, match="bos_id"):
        ShowoVocab(bos_id=50295)
    with pytest.raises(ValueError, match="max_text_len must be an integer >= 3"):
        ShowoVocab(max_text_len=2)


def test_full_size_model_on_meta_has_the_published_count_and_names():
    spec = ShowoSpec(ShowoVocab(), 256, phi_config(ShowoVocab()))
    with torch.device("meta"):
        model = build_showo(spec)
    # 1,448,176,770 parameters: 5.79 GB in fp32, the size of showlab/show-o's pytorch_model.safetensors
    assert sum(p.numel() for p in model.parameters()) == 1_448_176_770
    shapes = {"showo." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Expected names: the attributes of showlab/Show-o's models/phi.py (PhiForCausalLM.model/lm_head,
    # PhiModel.embed_tokens/layers/final_layernorm, PhiDecoderLayer.self_attn/mlp/input_layernorm, PhiAttention
    # q_proj/k_proj/v_proj/dense/q_layernorm/k_layernorm, PhiMLP fc1/fc2), held as `showo` by its Showo class.
    layer = {
        "self_attn.q_proj.weight": (2048, 2048),
        "self_attn.q_proj.bias": (2048,),
        "self_attn.k_proj.weight": (2048, 2048),
        "self_attn.k_proj.bias": (2048,),
        "self_attn.v_proj.weight": (2048, 2048),
        "self_attn.v_proj.bias": (2048,),
        "self_attn.dense.weight": (2048, 2048),
        "self_attn.dense.bias": (2048,),
        "self_attn.q_layernorm.weight": (64,),
        "self_attn.q_layernorm.bias": (64,),
        "self_attn.k_layernorm.weight": (64,),
        "self_attn.k_layernorm.bias": (64,),
        "mlp.fc1.weight": (8192, 2048),
        "mlp.fc1.bias": (8192,),
        "mlp.fc2.weight": (2048, 8192),
        "mlp.fc2.bias": (2048,),
        "input_layernorm.weight": (2048,),
        "input_layernorm.bias": (2048,),
    }
    expected = {f"showo.model.layers.{i}.{k}": s for i in range(24) for k, s in layer.items()}
    expected |= {
        "showo.model.embed_tokens.weight": (58498, 2048),
        "showo.model.final_layernorm.weight": (2048,),
        "showo.model.final_layernorm.bias": (2048,),
        "showo.lm_head.weight": (58498, 2048),
        "showo.lm_head.bias": (58498,),
    }
    assert shapes == expected


def test_published_config_gets_phi_1_5s_shape(tmp_path):
    # showlab/show-o's config.json carries Show-o's own fields only; the LM's shape is Phi-1.5's
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "_class_name": "Showo",
                "vocab_size": 58498,
                "llm_vocab_size": 50295,
                "codebook_size": 8192,
                "num_vq_tokens": 256,
                "w_clip_vit": False,
                "llm_model_path": "microsoft/phi-1_5",
                "mask_token_id": 58497,
            }
        )
    )
    spec = read_spec(tmp_path)
    assert spec.vocab == ShowoVocab() and spec.num_image_tokens == 256
    p = spec.phi
    assert (p.hidden_size, p.num_hidden_layers, p.num_attention_heads, p.vocab_size) == (2048, 24, 32, 58498)
    assert p.qk_layernorm and p.rope_parameters["partial_rotary_factor"] == 0.5
    for change, match in (
        ({"vocab_size": 58500}, "58498"),
        ({"w_clip_vit": True}, "w_clip_vit"),
        ({"_class_name": "MAGVITv2"}, "not a Show-o config"),
    ):
        config = json.loads((tmp_path / "config.json").read_text()) | change
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelLoadError, match=match):
            read_spec(tmp_path / "bad")


# ---- the text-to-image sequence and the omni-attention mask


def test_prompt_layout():
    v = TINY_VOCAB
    texts, codes, ids = sequences()
    B, L = len(texts), MAX_TEXT_LEN + 1 + N + 2
    assert ids.shape == (2 * B, L)
    soi, eoi, t2i = v.special("<|soi|>"), v.special("<|eoi|>"), v.special("<|t2i|>")
    head = MAX_TEXT_LEN + 1
    assert ids[0, :head].tolist() == [v.pad_id] * (head - 6) + [t2i, v.bos_id, 5, 6, 7, v.eos_id]
    assert ids[1, :head].tolist() == [v.pad_id] * (head - 4) + [t2i, v.bos_id, 9, v.eos_id]  # no second <bos>
    assert ids[2, :head].tolist() == [t2i, v.bos_id] + texts[2][: head - 3] + [v.eos_id]  # cut, keeps <eos>
    for row in range(B, 2 * B):  # the unconditional twins: empty text, the same image tokens
        assert ids[row, :head].tolist() == [v.pad_id] * (head - 3) + [t2i, v.bos_id, v.eos_id]
        assert torch.equal(ids[row, head:], ids[row - B, head:])
    assert (ids[:, head] == soi).all() and (ids[:, -1] == eoi).all()
    image = ids[:B, head + 1 : -1]
    assert torch.equal(image, torch.where(codes < 0, v.mask_id, codes + v.image_offset))
    assert (image[1] == v.mask_id).all() and (image[0, 1::3] >= v.image_offset).all()
    with pytest.raises(ValueError, match="codes must be integers"):
        t2i_sequence(texts, codes + v.codebook_size, v)
    with pytest.raises(ValueError, match="not text tokens"):
        t2i_sequence([[v.pad_id]], codes[:1], v)


def direct_mask(ids: torch.Tensor, v: ShowoVocab) -> torch.Tensor:
    """The rule written out cell by cell: True where query q may attend to key k."""
    L = ids.shape[1]
    allowed = torch.zeros(ids.shape[0], L, L, dtype=torch.bool)
    for b, row in enumerate(ids.tolist()):
        start, end = row.index(v.special("<|soi|>")), row.index(v.special("<|eoi|>"))
        for q in range(L):
            for k in range(L):
                if start <= q <= end:  # image segment: everything but padding
                    allowed[b, q, k] = row[k] != v.pad_id
                elif row[q] == v.pad_id:  # padding: causal (its output is unused)
                    allowed[b, q, k] = k <= q
                else:  # text: causal, padding unseen
                    allowed[b, q, k] = k <= q and row[k] != v.pad_id
    return allowed


def test_omni_attention_mask_cell_by_cell():
    _, _, ids = sequences()
    mask = omni_attention_mask(ids, TINY_VOCAB)
    assert mask.shape == (ids.shape[0], 1, ids.shape[1], ids.shape[1]) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    assert torch.equal(mask[:, 0] == 0, direct_mask(ids, TINY_VOCAB))
    assert omni_attention_mask(ids, TINY_VOCAB, torch.bfloat16).dtype == torch.bfloat16


def test_omni_attention_mask_refuses_other_layouts():
    _, _, ids = sequences()
    bad = ids.clone()
    bad[1, -1] = TINY_VOCAB.pad_id  # no <|eoi|>
    with pytest.raises(ValueError, match="row 1"):
        omni_attention_mask(bad, TINY_VOCAB)
    bad = ids.clone()
    bad[0, 5] = 7  # padding that is not a prefix
    with pytest.raises(ValueError, match="row 0"):
        omni_attention_mask(bad, TINY_VOCAB)


# ---- the tiny model of the real class


def test_eager_and_sdpa_agree_under_the_float_mask(tiny_model):
    _, _, ids = sequences()
    eager, sdpa = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)  # the fixture stays as built
    eager.config._attn_implementation, sdpa.config._attn_implementation = "eager", "sdpa"
    with torch.no_grad():
        eager_logits, sdpa_logits = showo_logits(eager, ids, TINY_VOCAB), showo_logits(sdpa, ids, TINY_VOCAB)
    assert torch.allclose(eager_logits, sdpa_logits, atol=1e-5)


def test_image_logits_are_the_image_positions_over_the_codebook():
    v = TINY_VOCAB
    _, _, ids = sequences()
    logits = torch.randn(ids.shape[0], ids.shape[1], v.vocab_size)
    got = image_logits(logits, v, N)
    assert got.shape == (ids.shape[0], N, v.codebook_size)
    image_start = MAX_TEXT_LEN + 2  # after the text block and <|soi|>
    for b, i, c in ((0, 0, 0), (1, N - 1, v.codebook_size - 1), (5, 7, 3)):
        assert got[b, i, c] == logits[b, image_start + i, v.image_offset + c]
    assert (ids[:, image_start : image_start + N] >= v.image_offset).all()


def test_vocab_for_a_text_tokenizer():
    from arrag.models.janus import build_word_tokenizer

    tokenizer = build_word_tokenizer(["red", "cube", "on", "a", "table"])
    v = vocab_for_tokenizer(tokenizer, codebook_size=16)
    assert (v.text_vocab_size, v.bos_id, v.eos_id) == (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    ids = encode_texts(tokenizer, ["a red cube", ""])
    assert ids == [tokenizer.convert_tokens_to_ids(["a", "red", "cube"]), []]
    row = t2i_sequence(ids, torch.full((2, N), -1), v)
    assert row[0, MAX_TEXT_LEN - 5 : MAX_TEXT_LEN + 1].tolist() == [v.special("<|t2i|>"), v.bos_id, *ids[0], v.eos_id]


def test_logits_follow_the_omni_attention(tiny_model):
    v = TINY_VOCAB
    _, _, ids = sequences()
    head = MAX_TEXT_LEN + 1
    with torch.no_grad():
        base = showo_logits(tiny_model, ids, v)
        # a later image token changes an earlier image position's logits (bidirectional) but no text position's
        changed = ids.clone()
        changed[:, -2] = v.image_offset + (changed[:, -2] - v.image_offset + 1) % v.codebook_size
        after = showo_logits(tiny_model, changed, v)
        assert not torch.allclose(after[:, head + 1], base[:, head + 1])
        assert torch.equal(after[:, :head], base[:, :head])
        # the padding's embedding reaches no non-padding position: text and image are blind to it
        pad = ids == v.pad_id
        original = tiny_model.model.embed_tokens.weight[v.pad_id].clone()
        tiny_model.model.embed_tokens.weight[v.pad_id] += torch.randn(original.shape)
        try:
            moved = showo_logits(tiny_model, ids, v)
        finally:
            tiny_model.model.embed_tokens.weight[v.pad_id] = original
        assert torch.allclose(moved[~pad], base[~pad], atol=1e-5)
        assert not torch.allclose(moved[pad], base[pad])


# ---- folders


def test_save_and_load_round_trip(tiny_model, tmp_path):
    save_showo(tiny_model, tiny_spec(), tmp_path / "m")
    state = load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    assert all(k.startswith("showo.") for k in state) and "showo.lm_head.weight" in state
    model, spec = load_showo(tmp_path / "m")
    expected = tiny_spec()
    assert (spec.vocab, spec.num_image_tokens) == (expected.vocab, expected.num_image_tokens)
    assert spec.phi.to_dict() == expected.phi.to_dict()
    _, _, ids = sequences()
    with torch.no_grad():
        assert torch.equal(showo_logits(model, ids, spec.vocab), showo_logits(tiny_model, ids, spec.vocab))


def rewrite(folder, edit):
    """Change the weights file, then seal the folder again: the loader's own checks must catch it."""
    state = load_file(str(folder / WEIGHTS_NAME))
    edit(state)
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / "MANIFEST.json").unlink()
    write_manifest(folder, "showo-model")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("showo.model.final_layernorm.bias"), "lack tensors.*showo.model.final_layernorm.bias"),
        (lambda s: s.update({"showo.extra.weight": torch.zeros(2)}), "no place for: showo.extra.weight"),
        (
            lambda s: s.update({"model.final_layernorm.bias": s.pop("showo.model.final_layernorm.bias")}),
            "no place for: model.final_layernorm.bias",
        ),
        (lambda s: s.update({"showo.lm_head.bias": torch.zeros(3)}), "wrong shape: showo.lm_head.bias"),
        (lambda s: s["showo.lm_head.bias"].__setitem__(0, float("nan")), "showo.lm_head.bias holds NaN"),
    ],
)
def test_loader_refuses_checkpoints_that_do_not_fill_the_model(tiny_model, tmp_path, edit, match):
    save_showo(tiny_model, tiny_spec(), tmp_path / "m")
    rewrite(tmp_path / "m", edit)
    with pytest.raises(ModelLoadError, match=match):
        load_showo(tmp_path / "m")


def test_loader_checks_the_manifest(tiny_model, tmp_path):
    save_showo(tiny_model, tiny_spec(), tmp_path / "m")
    state = load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    state["showo.lm_head.bias"] += 1
    save_file(state, str(tmp_path / "m" / WEIGHTS_NAME))
    with pytest.raises(Exception, match=WEIGHTS_NAME):
        load_showo(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_showo(tmp_path / "nowhere")
