import pytest
import torch

from arrag.decoding.loop import DecodingHook, SamplingConfig, generate_image_tokens, make_generators
from arrag.models.janus import tokenize_prompts
from arrag.models.training import position_ids_from_mask, unconditional_ids


def _batch(processor, prompts):
    return tokenize_prompts(processor, prompts)


def test_greedy_reproduces_transformers_generate(tiny_janus):
    model, processor, spec = tiny_janus
    batch = _batch(processor, ["a photo of a red circle", "a photo of a blue square"])  # equal lengths
    assert batch["attention_mask"].all()
    ours = generate_image_tokens(model, **batch, sampling=SamplingConfig(guidance_scale=3.0, greedy=True))
    theirs = model.generate(**batch, generation_mode="image", do_sample=False, guidance_scale=3.0)
    assert torch.equal(ours.flatten(1), theirs)


def test_greedy_reproduces_generate_with_left_padding_in_hf_position_mode(tiny_janus):
    model, processor, _ = tiny_janus
    batch = _batch(processor, ["a photo of a circle", "a photo of a red circle and a blue square"])
    assert not batch["attention_mask"].all()
    ours = generate_image_tokens(
        model, **batch, sampling=SamplingConfig(guidance_scale=3.0, greedy=True), padding_aware_positions=False
    )
    theirs = model.generate(**batch, generation_mode="image", do_sample=False, guidance_scale=3.0)
    assert torch.equal(ours.flatten(1), theirs)


class Recorder(DecodingHook):
    wants_hidden_states = True

    def __init__(self):
        self.steps = []

    def adjust_probs(self, state, probs):
        self.steps.append(
            (
                state.step,
                state.row,
                state.col,
                state.grid.clone(),
                state.cond_logits.clone(),
                state.uncond_logits.clone(),
                probs.clone(),
                state.hidden_states,
            )
        )
        return probs


def _full_forward_logits(model, ids, mask, codes_so_far):
    """Direct re-computation without the KV cache: generation-head logits at the last position."""
    embeds = torch.cat(
        [model.get_input_embeddings()(ids), model.prepare_embeddings_for_image_generation(codes_so_far)], 1
    )
    full_mask = torch.cat([mask, mask.new_ones(codes_so_far.shape)], 1)
    hidden = model.model.language_model(
        inputs_embeds=embeds, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)
    ).last_hidden_state
    return model.model.generation_head(hidden[:, -1])


def test_cfg_formula_cache_and_hook_state_match_direct_recomputation(tiny_janus):
    model, processor, spec = tiny_janus
    prompts = ["a photo of a circle", "a photo of two red squares"]
    batch = _batch(processor, prompts)
    rec = Recorder()
    sampling = SamplingConfig(guidance_scale=4.0, temperature=0.7, top_k=20)
    codes = generate_image_tokens(
        model, **batch, sampling=sampling, generators=make_generators([1, 2], "cpu"), hooks=[rec]
    )
    flat = codes.flatten(1)
    tok = processor.tokenizer
    uncond = unconditional_ids(
        batch["input_ids"], tok.bos_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.pad_token_id
    )
    assert len(rec.steps) == spec.grid**2
    for step, row, col, grid, c, u, probs, hidden in rec.steps[:: max(1, len(rec.steps) // 5)]:
        assert (row, col) == divmod(step, spec.grid)
        # the grid shows exactly the tokens generated so far, -1 elsewhere
        assert torch.equal(grid.flatten(1)[:, :step], flat[:, :step]) and (grid.flatten(1)[:, step:] == -1).all()
        c_ref = _full_forward_logits(model, batch["input_ids"], batch["attention_mask"], flat[:, :step])
        u_ref = _full_forward_logits(model, uncond, batch["attention_mask"], flat[:, :step])
        torch.testing.assert_close(c, c_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(u, u_ref, atol=1e-4, rtol=1e-4)
        guided = u_ref + 4.0 * (c_ref - u_ref)
        kth = guided.topk(20, dim=-1).values[:, -1:]
        expected = torch.softmax(guided.masked_fill(guided < kth, float("-inf")) / 0.7, dim=-1)
        torch.testing.assert_close(probs, expected, atol=1e-4, rtol=1e-3)
        assert (probs > 0).sum(-1).max() <= 20
        assert len(hidden) == model.config.text_config.num_hidden_layers + 1 and hidden[0].shape[0] == 4


def test_unconditional_prompt_keeps_only_bos_and_boi(tiny_janus):
    _, processor, _ = tiny_janus
    tok = processor.tokenizer
    ids = _batch(processor, ["a photo of a circle", "a photo of two red squares"])["input_ids"]
    bos, boi, pad = tok.bos_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.pad_token_id
    u = unconditional_ids(ids, bos, boi, pad)
    for row in u.tolist():
        assert set(row) <= {bos, boi, pad} and row[-1] == boi and row.count(bos) == 1


def test_seeded_sampling_is_reproducible_and_independent_of_batch_mates(tiny_janus):
    model, processor, _ = tiny_janus
    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0)
    alone = _batch(processor, ["a photo of a circle"])
    together = _batch(processor, ["a photo of a circle", "a photo of a red circle and a blue square"])
    a = generate_image_tokens(model, **alone, sampling=sampling, generators=make_generators([7], "cpu"))
    b = generate_image_tokens(model, **alone, sampling=sampling, generators=make_generators([7], "cpu"))
    c = generate_image_tokens(model, **together, sampling=sampling, generators=make_generators([7, 8], "cpu"))
    d = generate_image_tokens(model, **alone, sampling=sampling, generators=make_generators([9], "cpu"))
    assert torch.equal(a, b)
    assert torch.equal(a[0], c[0])  # padding-aware positions + per-image generators
    assert not torch.equal(a, d)


def test_guidance_scale_one_runs_the_conditional_branch_only(tiny_janus):
    model, processor, _ = tiny_janus
    batch = _batch(processor, ["a photo of a circle"])
    rec = Recorder()
    rec.wants_hidden_states = False
    codes = generate_image_tokens(
        model, **batch, sampling=SamplingConfig(guidance_scale=1.0, greedy=True), hooks=[_NoUncond()]
    )
    assert codes.shape == (1, 4, 4)


class _NoUncond(DecodingHook):
    def adjust_probs(self, state, probs):
        assert state.uncond_logits is None and state.cond_logits.shape[0] == 1
        return probs


def test_bad_sampling_settings_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        SamplingConfig(guidance_scale=0.5)


def test_preallocated_cache_holds_what_torch_cat_would_in_one_buffer():
    from arrag.decoding.kv_cache import PreallocatedLayer

    layer = PreallocatedLayer(capacity=7)
    steps = [torch.randn(2, 3, n, 4) for n in (4, 1, 1, 1)]  # a prompt, then one token per step
    for i, k in enumerate(steps):
        keys, values = layer.update(k, -k)
        expected = torch.cat(steps[: i + 1], dim=-2)
        assert torch.equal(keys, expected) and torch.equal(values, -expected)
        assert keys.untyped_storage().data_ptr() == layer.key_buffer.untyped_storage().data_ptr()  # no copy
    assert layer.get_seq_length() == 7
    with pytest.raises(ValueError, match="holds 7 positions"):
        layer.update(steps[1], steps[1])


def test_loop_cache_gives_the_same_logits_and_tokens_as_transformers_dynamic_cache(tiny_janus, monkeypatch):
    """The loop's in-place cache changes no logit and no token against DynamicCache's torch.cat, bit for bit,
    with guidance, sampling and left padding, and it is sized exactly for the prompt and the image."""
    from transformers import DynamicCache

    import arrag.decoding.loop as loop
    from arrag.decoding.kv_cache import PreallocatedLayer, preallocated_cache

    model, processor, spec = tiny_janus
    batch = _batch(processor, ["a photo of a circle", "a photo of two red squares"])
    assert not batch["attention_mask"].all()
    sampling = SamplingConfig(guidance_scale=4.0, temperature=0.7)
    caches = []

    def run(make_cache):
        monkeypatch.setattr(loop, "preallocated_cache", make_cache)
        rec = Recorder()
        codes = generate_image_tokens(
            model, **batch, sampling=sampling, generators=make_generators([1, 2], "cpu"), hooks=[rec]
        )
        return codes, rec.steps

    ours, our_steps = run(lambda config, capacity: caches.append(preallocated_cache(config, capacity)) or caches[-1])
    theirs, their_steps = run(lambda config, capacity: DynamicCache(config=config))
    assert torch.equal(ours, theirs)
    for a, b in zip(our_steps, their_steps):
        assert torch.equal(a[4], b[4]) and torch.equal(a[5], b[5])  # conditional and unconditional logits
    layers = caches[0].layers
    assert all(isinstance(layer, PreallocatedLayer) for layer in layers)
    assert all(layer.length == layer.capacity == batch["input_ids"].shape[1] + spec.grid**2 - 1 for layer in layers)
