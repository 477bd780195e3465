"""Show-o's masked decoding on a tiny random-weight Show-o: the batched loop against a plain per-image
re-computation, batch independence, the schedule's counts, the guidance mapping and the hooks."""

import math

import pytest
import torch
from test_showo import TINY_VOCAB, N, tiny_spec

from arrag.decoding.masked import (
    MaskedDecodingHook,
    MaskedSamplingConfig,
    MaskedStepState,
    generate_masked_tokens,
    mask_length,
    showo_guidance_scale,
)
from arrag.decoding.masked_daid import MaskedDAiD, grid_queries, retrieves_at
from arrag.models.showo import build_showo, image_logits, showo_logits, t2i_sequence
from arrag.retrieval.database import PatchDatabase
from arrag.retrieval.keys import neighbourhood_keys, query_from_grid

V = TINY_VOCAB
K = V.codebook_size
TEXTS = [[5, 6, 7], [9, 10, 11, 12, 13]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_showo(tiny_spec()).eval()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def run(model, texts, seeds, hooks=(), **sampling):
    return generate_masked_tokens(
        model, texts, V, N, MaskedSamplingConfig(**sampling), generators=gens(seeds), hooks=hooks
    )


@torch.no_grad()
def reference(model, text, seed, steps, w, temperature):
    """Show-o's loop written out for one image: separate conditional and unconditional forwards, Show-o's
    (1 + w) c - w u, its cut-off re-masking (confidence below the mask_len-th smallest)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.full((1, N), -1)

    def logits_of(t):
        return image_logits(showo_logits(model, t2i_sequence([t], codes, V), V), V, N)[0].float()  # [N, K]

    for s in range(steps):
        c = logits_of(text)
        logits = (1 + w) * c - w * logits_of([]) if w > 0 else c
        probs = logits.softmax(-1)
        sampled = torch.multinomial(probs, 1, generator=g)[:, 0]
        unknown = codes[0] < 0
        sampled = torch.where(unknown, sampled, codes[0])
        ratio = (s + 1) / steps
        masked_ratio = torch.cos(torch.tensor(ratio) * math.pi * 0.5)
        selected = probs.gather(-1, sampled[:, None])[:, 0]
        temperature = temperature * (1 - ratio)
        noise = -torch.log((-torch.log(torch.rand(N, generator=g).clamp(min=1e-20))).clamp(min=1e-20))
        confidence = torch.where(unknown, selected.log() + temperature * noise, torch.inf)
        mask_len = max(1, min(int(unknown.sum()) - 1, int(torch.floor(N * masked_ratio))))
        cut_off = confidence.sort().values[mask_len]
        codes = torch.where(confidence < cut_off, -1, sampled)[None]
        if s == steps - 1:
            codes = sampled[None]
    return codes.view(4, 4)


class Recorder(MaskedDecodingHook):
    def __init__(self):
        self.masked, self.logits, self.cond, self.grids = [], [], [], []

    def adjust_probs(self, state, probs):
        self.masked.append(state.masked.clone())
        self.logits.append(state.logits)
        self.cond.append(state.cond_logits)
        self.grids.append(state.grid.clone())
        return probs


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_loop_equals_a_plain_per_image_recomputation(model, w):
    got = run(model, TEXTS, [3, 4], steps=5, guidance_scale=showo_guidance_scale(w), temperature=4.5)
    assert got.shape == (2, 4, 4) and (got >= 0).all() and (got < K).all()
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(got[i], reference(model, text, [3, 4][i], 5, w, 4.5), rtol=0, atol=0)


def test_an_image_does_not_depend_on_its_batch_mates(model):
    both = run(model, TEXTS, [3, 4], steps=4, guidance_scale=2.5)
    alone = [run(model, [t], [s], steps=4, guidance_scale=2.5)[0] for t, s in zip(TEXTS, [3, 4])]
    assert torch.equal(both, torch.stack(alone))


def test_masked_counts_per_step_follow_the_schedule(model):
    rec = Recorder()
    steps = 7  # no count here falls on a float32 rounding boundary (see below)
    run(model, TEXTS, [1, 2], hooks=[rec], steps=steps, temperature=2.0)
    expected, unknown = [], N
    for s in range(steps):
        expected.append(unknown)
        ratio = math.cos(math.pi / 2 * (s + 1) / steps)
        unknown = max(1, min(unknown - 1, math.floor(N * ratio)))
    assert [m.sum(-1).tolist() for m in rec.masked] == [[e, e] for e in expected]
    for m, g in zip(rec.masked, rec.grids):  # the hook's grid is -1 exactly where positions are being decided
        assert torch.equal(m, g.flatten(1) < 0)
    # float32 as in Show-o: at T = 18, N = 256 step 11 masks 127 (exact cos(pi/3) * 256 would be 128)
    assert mask_length(11, 18, 256, torch.tensor([200])).item() == 127
    assert mask_length(17, 18, 256, torch.tensor([5])).item() == 1  # never below one
    assert mask_length(0, 18, 256, torch.tensor([3])).item() == 2  # at most unknown - 1


def test_guidance_maps_show_o_weight_to_our_scale(model):
    assert showo_guidance_scale(0.0) == 1.0 and showo_guidance_scale(5.0) == 6.0
    rec = Recorder()
    run(model, TEXTS[:1], [0], hooks=[rec], steps=1, guidance_scale=showo_guidance_scale(0.0))
    blank = torch.full((1, N), -1)
    cond = image_logits(showo_logits(model, t2i_sequence(TEXTS[:1], blank, V), V), V, N).float()
    uncond = image_logits(showo_logits(model, t2i_sequence([[]], blank, V), V), V, N).float()
    torch.testing.assert_close(rec.logits[0], cond)  # w = 0: the conditional logits, no unconditional pass
    rec = Recorder()
    run(model, TEXTS[:1], [0], hooks=[rec], steps=1, guidance_scale=showo_guidance_scale(2.0))
    torch.testing.assert_close(rec.logits[0], 3 * cond - 2 * uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rec.cond[0], cond)


def test_a_no_op_hook_changes_nothing_and_a_hook_can_decide(model):
    plain = run(model, TEXTS, [7, 8], steps=3, guidance_scale=2.0, temperature=3.0)
    assert torch.equal(
        plain, run(model, TEXTS, [7, 8], hooks=[MaskedDecodingHook()], steps=3, guidance_scale=2.0, temperature=3.0)
    )

    class Only5(MaskedDecodingHook):
        def adjust_probs(self, state, probs):
            return torch.zeros_like(probs).index_fill_(-1, torch.tensor([5]), 1.0)

    assert (run(model, TEXTS, [7, 8], hooks=[Only5()], steps=3) == 5).all()


def test_one_step_fills_every_token(model):
    rec = Recorder()
    got = run(model, TEXTS, [5, 6], hooks=[rec], steps=1)
    assert rec.masked[0].all() and (got >= 0).all() and (got < K).all()


def test_bad_settings_are_refused(model):
    with pytest.raises(ValueError, match="MaskedSamplingConfig.steps"):
        MaskedSamplingConfig(steps=0)
    with pytest.raises(ValueError, match="MaskedSamplingConfig.guidance_scale"):
        MaskedSamplingConfig(guidance_scale=0.5)
    with pytest.raises(ValueError, match="MaskedSamplingConfig.temperature"):
        MaskedSamplingConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="square"):
        generate_masked_tokens(model, TEXTS, V, 15)
    with pytest.raises(ValueError, match="no texts"):
        generate_masked_tokens(model, [], V, N)
    with pytest.raises(ValueError, match="generators"):
        generate_masked_tokens(model, TEXTS, V, N, generators=gens([1]))


# ---- DAiD on masked decoding (appendix B.2)

ALLOWED = torch.tensor([3, 7, 11])  # the database only ever holds these tokens


@pytest.fixture(scope="module")
def full_db():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(K, 4, generator=g)  # continuous, so no two distances tie
    codes = ALLOWED[torch.randint(0, 3, (30, 4, 4), generator=g)]
    return PatchDatabase.build(codes, codebook, causal=False, index="flat")


class SpyDB:
    """The database, noting at which steps it is searched and with how many queries."""

    def __init__(self, db):
        self.db, self.calls = db, []
        self.causal, self.hops, self.codebook = db.causal, db.hops, db.codebook

    def __len__(self):
        return len(self.db)

    def search(self, queries, k):
        self.calls.append(queries.shape[0])
        return self.db.search(queries, k)


def test_masked_daid_weight_zero_gives_the_plain_tokens(model, full_db):
    plain = run(model, TEXTS, [3, 4], steps=4, guidance_scale=2.0, temperature=4.5)
    hooked = run(
        model, TEXTS, [3, 4], hooks=[MaskedDAiD(full_db, k=4, weight=0.0)], steps=4, guidance_scale=2.0, temperature=4.5
    )
    assert torch.equal(plain, hooked)


def test_masked_daid_retrieves_for_all_masked_positions_in_the_last_half_only(model, full_db):
    spy, rec = SpyDB(full_db), Recorder()
    hook = MaskedDAiD(spy, k=4, weight=1.0)
    run(model, TEXTS, [3, 4], hooks=[rec, hook], steps=5, temperature=4.5)
    assert [retrieves_at(s, 5) for s in range(5)] == [False, False, False, True, True]
    masked = [int(m.sum()) for m in rec.masked]  # both images' masked positions per step
    assert spy.calls == masked[3:]  # steps 3 and 4, one search for every masked position of the batch
    # weight 1: what the last half decides comes from the database
    grid_before_last = rec.grids[4]
    final = run(model, TEXTS, [3, 4], hooks=[MaskedDAiD(full_db, k=4, weight=1.0)], steps=5, temperature=4.5)
    decided = final[grid_before_last < 0]
    assert decided.numel() > 0 and torch.isin(decided, ALLOWED).all()


def test_masked_daid_merges_one_position_as_computed_directly(full_db):
    g = torch.Generator().manual_seed(2)
    grid = torch.randint(0, K, (2, 4, 4), generator=g)
    grid[0, 1, 1] = grid[0, 0, 1] = grid[1, 3, 3] = -1
    masked = (grid < 0).flatten(1)
    probs = torch.rand(2, N, K, generator=g).softmax(-1)
    state = MaskedStepState(step=3, steps=4, grid=grid, masked=masked)
    weight, temperature, k = 0.4, 0.7, 5
    out = MaskedDAiD(full_db, k=k, weight=weight, temperature=temperature).adjust_probs(state, probs)
    assert torch.equal(out[~masked], probs[~masked])  # known positions untouched

    # position (1, 1) of image 0: its 8 neighbours in raster order, (0, 1) still masked -> zero vector
    cb = full_db.codebook
    rows = [grid[0, 1 + dr, 1 + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    query = torch.cat([cb[t] if t >= 0 else torch.zeros(4) for t in rows])
    torch.testing.assert_close(query, query_from_grid(grid, 1, 1, cb, causal=False)[0])
    keys = neighbourhood_keys(full_db.codes.reshape(-1, 4, 4).long(), cb, causal=False).reshape(-1, 32)
    sq = ((keys - query) ** 2).sum(-1)
    nearest = sq.argsort(stable=True)[:k]
    weights = torch.softmax(-sq[nearest] / temperature, 0)
    p_ret = torch.zeros(K).index_add_(0, full_db.codes.reshape(-1)[nearest].long(), weights)
    expected = (1 - weight) * probs[0, 5] + weight * p_ret
    torch.testing.assert_close(out[0, 5], expected)
    # a corner (3, 3) of image 1: off-grid neighbours are zero vectors too
    torch.testing.assert_close(grid_queries(grid, cb)[1, 3, 3], query_from_grid(grid, 3, 3, cb, causal=False)[1])
    # the first half does not retrieve
    early = MaskedStepState(step=1, steps=4, grid=grid, masked=masked)
    assert MaskedDAiD(full_db, k=k, weight=weight).adjust_probs(early, probs) is probs


def test_masked_daid_refuses_causal_keys(full_db):
    causal = PatchDatabase.build(full_db.codes.reshape(-1, 4, 4).long(), full_db.codebook, index="flat")
    with pytest.raises(ValueError, match="--full"):
        MaskedDAiD(causal)
    with pytest.raises(ValueError, match="DAiD weight"):
        MaskedDAiD(full_db, weight=1.5)
