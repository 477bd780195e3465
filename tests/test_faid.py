"""FAiD: the module against a loop-based re-computation, zero-init equivalence, incremental = teacher-forced,
guidance's unconditional rows, training of FAiD alone, parameter budgets."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arrag.decoding.faid import FAiDHook, training_candidates
from arrag.decoding.loop import DecodingHook, SamplingConfig, generate_image_tokens, make_generators
from arrag.models.faid import (
    FAiD,
    FAiDConfig,
    FAiDModule,
    faid_layers,
    faid_logits,
    faid_parameter_count,
    faid_training_loss,
    freeze_backbone,
)
from arrag.models.janus import tokenize_prompts
from arrag.models.training import image_generation_loss, position_ids_from_mask, prompt_embeddings
from arrag.models.vq import VQTokenizer
from arrag.retrieval.database import PatchDatabase

PROMPTS = ["a photo of a circle", "a photo of two red squares and a blue triangle"]  # left padding in row 0
TINY = FAiDConfig(every=1, hops="12", k=3, budget="lowrank", rank=8)  # a module after each of the 2 layers


@pytest.fixture(scope="module")
def model(tiny_janus):
    """A private copy: FAiD hooks and frozen parameters never leak into other test modules."""
    return copy.deepcopy(tiny_janus[0])


@pytest.fixture(scope="module")
def processor(tiny_janus):
    return tiny_janus[1]


@pytest.fixture(scope="module")
def db(model):
    codebook = VQTokenizer.from_janus(model).codebook
    codes = torch.randint(0, len(codebook), (30, 4, 4), generator=torch.Generator().manual_seed(0))
    return PatchDatabase.build(codes, codebook, index="flat"), codebook


@pytest.fixture()
def attach(model):
    attached = []

    def _attach(faid):
        attached.append(faid.attach(model))
        return faid

    yield _attach
    for faid in attached:
        faid.detach()


def randomise(faid: FAiD, seed: int = 0) -> FAiD:
    """Random values everywhere, the zero-initialised output projection included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in faid.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 1.0))
    return faid


# ---------------------------------------------------------------- the module against a direct loop


def direct_module(block: FAiDModule, grid, targets, candidates, valid):
    """Algorithm 1 and Eq. 6-7 written out window by window, candidate by candidate, cell by cell."""
    n_img, height, width, hidden = grid.shape
    weights = torch.softmax(block.scale_logits, 0)
    contribution = torch.zeros(n_img, len(targets), hidden, dtype=grid.dtype)
    updates = torch.zeros(*candidates.shape, dtype=grid.dtype)
    for b in range(n_img):
        for ti, target in enumerate(targets.tolist()):
            row, col = divmod(target, width)
            refined = []
            for cand in candidates[b, ti]:
                c_k = 0
                for w_h, hop, conv_in, conv_out in zip(weights, block.hops, block.conv_in, block.conv_out):
                    size = 2 * hop + 1
                    window = torch.zeros(conv_in.in_channels, size, size, dtype=grid.dtype)
                    for i in range(size):
                        for j in range(size):
                            r, c = row - hop + i, col - hop + j
                            if (i, j) == (hop, hop):
                                window[:, i, j] = block.cells(cand)  # the candidate at the centre
                            elif i > hop or (i == hop and j > hop):
                                continue  # causal mask: the target's right and everything below
                            elif 0 <= r < height and 0 <= c < width:
                                window[:, i, j] = block.cells(grid[b, r, c])
                    inner = F.gelu(F.conv2d(window[None], conv_in.weight, conv_in.bias))  # [1, C, h+1, h+1]
                    c_k = c_k + w_h * F.conv2d(inner, conv_out.weight, conv_out.bias).flatten()  # [C]
                refined.append(c_k)
            found = valid[b, ti].tolist()
            scores = [torch.sigmoid(block.score(c)).item() for c in refined]
            blend = sum(s * c for s, c, f in zip(scores, refined, found) if f) / max(1, sum(found))
            contribution[b, ti] = block.out(blend if torch.is_tensor(blend) else torch.zeros_like(refined[0]))
            updates[b, ti] = torch.stack([block.out(c) for c in refined])
    return contribution, updates


@pytest.mark.parametrize("width", [None, 3])  # the paper's full width, and a low-rank projection
def test_module_equals_a_direct_loop_over_windows(width):
    torch.manual_seed(0)
    block = FAiDModule(hidden=5, hops=(1, 2), width=width).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p))
    grid = torch.randn(2, 6, 7, 5, dtype=torch.float64) * 3  # non-square on purpose; cells after targets too
    targets = torch.tensor([0, 6, 9, 23, 41])  # corners, edges, the interior
    candidates = torch.randn(2, 5, 3, 5, dtype=torch.float64)
    valid = torch.rand(2, 5, 3) > 0.3
    valid[1, 2] = False  # a target without any hit
    got, got_updates = block(grid, targets, candidates, valid)
    want, want_updates = direct_module(block, grid, targets, candidates, valid)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_updates, want_updates, rtol=1e-10, atol=1e-10)
    assert torch.equal(got[1, 2], torch.zeros(5, dtype=torch.float64))
    # one target at a time (decoding normalises only the window's cells) gives the same
    for ti, target in enumerate(targets):
        alone = block(grid, target[None], candidates[:, ti : ti + 1], valid[:, ti : ti + 1])[0]
        torch.testing.assert_close(alone[:, 0], got[:, ti], rtol=1e-10, atol=1e-10)
    # what lies at or after a target in raster order is never read
    later = grid.clone()
    later[:, 2:, :] = 1e6
    later[:, 1, 3:] = -1e6  # target 10 = (1, 3)
    torch.testing.assert_close(
        block(later, torch.tensor([10]), candidates[:, :1], valid[:, :1])[0],
        block(grid, torch.tensor([10]), candidates[:, :1], valid[:, :1])[0],
    )


def test_config_and_layer_placement():
    assert faid_layers(24, 12) == [11, 23] and faid_layers(2, 1) == [0, 1] and faid_layers(24, 8) == [7, 15, 23]
    assert FAiDConfig(hops="21").hops == "12" and FAiDConfig(hops="12").hop_scales == (1, 2)
    for bad in [dict(hops="0"), dict(hops="11"), dict(hops="x"), dict(every=0), dict(budget="x"), dict(k=0)]:
        with pytest.raises(ValueError):
            FAiDConfig(**bad)
    with pytest.raises(ValueError, match="exceeds"):
        FAiD(FAiDConfig(every=3), hidden_size=8, num_layers=2)


def test_parameter_counts_at_janus_pro_1b_dims():
    hidden, layers = 2048, 24
    paper = faid_parameter_count(hidden, layers, FAiDConfig(every=12, hops="12", budget="paper"))
    lowrank = faid_parameter_count(hidden, layers, FAiDConfig(every=12, hops="12", budget="lowrank", rank=256))
    print(
        f"\nFAiD at Janus-Pro-1B dims, every=12 (2 modules), hops '12': paper {paper:,}  lowrank(256) {lowrank:,}"
        f"  ratio {lowrank / paper:.2%}"
    )
    # per module: convs 2*(2^2 + 3^2) D^2 = 26 D^2, output projection D^2
    assert abs(paper - 2 * 27 * hidden**2) / paper < 0.001
    assert lowrank < 0.1 * paper


# ---------------------------------------------------------------- the backbone with FAiD


def base_logits(model, input_ids, attention_mask, codes):
    prompt, prompt_mask = prompt_embeddings(model, input_ids, attention_mask)
    embeds = torch.cat([prompt, model.prepare_embeddings_for_image_generation(codes[:, :-1])], 1)
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(codes[:, :-1].shape)], 1)
    hidden = model.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)
    ).last_hidden_state
    return model.model.generation_head(hidden[:, prompt.shape[1] - 1 :])


class Record(DecodingHook):
    def __init__(self):
        self.cond, self.uncond = [], []

    def adjust_probs(self, state, probs):
        self.cond.append(state.cond_logits.clone())
        self.uncond.append(state.uncond_logits.clone())
        return probs

    def logits(self):
        return torch.stack(self.cond, 1), torch.stack(self.uncond, 1)  # [B, T, V] each


class Force(DecodingHook):
    """Makes greedy decoding emit the given codes [B, T], whatever the model says."""

    def __init__(self, codes):
        self.codes = codes

    def adjust_probs(self, state, probs):
        return F.one_hot(self.codes[:, state.step], probs.shape[-1]).to(probs.dtype)


def generate(model, processor, hooks, greedy=False):
    batch = tokenize_prompts(processor, PROMPTS)
    sampling = SamplingConfig(guidance_scale=3.0, greedy=greedy)
    return generate_image_tokens(
        model, **batch, sampling=sampling, generators=make_generators([3, 4], "cpu"), hooks=hooks
    )


def test_zero_initialised_faid_is_exactly_the_backbone(model, processor, db, attach):
    faid = attach(FAiD.for_model(model, TINY))
    base_rec, faid_rec = Record(), Record()
    base = generate(model, processor, [base_rec])
    with_faid = generate(model, processor, [FAiDHook(*db, faid), faid_rec])
    assert torch.equal(base, with_faid)
    assert all(torch.equal(a, b) for a, b in zip(base_rec.logits(), faid_rec.logits()))

    batch = tokenize_prompts(processor, PROMPTS)
    codes = base.flatten(1)
    candidates = torch.randint(0, 64, (2, 16, 3))
    with torch.no_grad():
        assert torch.equal(
            faid_logits(model, faid, **batch, codes=codes, candidates=candidates),
            base_logits(model, **batch, codes=codes),
        )
        assert torch.equal(
            faid_training_loss(model, faid, **batch, codes=codes, candidates=candidates),
            image_generation_loss(model, **batch, codes=codes),
        )


def test_incremental_decoding_equals_the_teacher_forced_pass(model, processor, db, attach):
    faid = attach(randomise(FAiD.for_model(model, TINY)))
    hook = FAiDHook(*db, faid, record=True, retrieve_at=lambda step: step % 5 != 3)  # some steps without
    rec = Record()
    codes = generate(model, processor, [hook, rec]).flatten(1)  # [B, T]
    values, sources = hook.recorded()  # [T, B, k], [T, B, k, 3]
    assert (values[3] == -1).all() and (values[0] >= 0).all() and (sources[3] == -1).all()
    candidates = values.transpose(0, 1)  # [B, T, k]: each step's hits at its position
    batch = tokenize_prompts(processor, PROMPTS)
    with torch.no_grad():
        teacher_forced = faid_logits(model, faid, **batch, codes=codes, candidates=candidates)
        base = base_logits(model, **batch, codes=codes)
    incremental, _ = rec.logits()
    torch.testing.assert_close(incremental, teacher_forced, rtol=1e-4, atol=1e-4)
    assert (teacher_forced - base).abs().amax() > 0.1 * base.abs().amax()  # FAiD does change the prediction


def test_guidance_unconditional_rows_get_no_faid(model, processor, db, attach):
    faid = attach(randomise(FAiD.for_model(model, TINY), seed=1))
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    plain, augmented = Record(), Record()
    generate(model, processor, [Force(codes), plain], greedy=True)
    generate(model, processor, [FAiDHook(*db, faid), Force(codes), augmented], greedy=True)
    (cond_plain, uncond_plain), (cond_faid, uncond_faid) = plain.logits(), augmented.logits()
    assert torch.equal(uncond_plain, uncond_faid)
    assert (cond_plain - cond_faid).abs().amax() > 0.1 * cond_plain.abs().amax()

    # teacher-forced: candidates for the first row only, the second row is the backbone's
    batch = tokenize_prompts(processor, PROMPTS)
    with torch.no_grad():
        logits = faid_logits(model, faid, **batch, codes=codes, candidates=torch.randint(0, 64, (1, 16, 3)))
        base = base_logits(model, **batch, codes=codes)
    assert torch.equal(logits[1], base[1]) and not torch.allclose(logits[0], base[0])


def test_training_only_faid_lowers_the_loss_and_leaves_the_backbone(model, processor):
    backbone = copy.deepcopy(model)
    freeze_backbone(backbone)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    faid = FAiD.for_model(backbone, FAiDConfig(every=1, hops="12", k=3, budget="lowrank", rank=16)).attach(backbone)
    g = torch.Generator().manual_seed(0)
    batch = tokenize_prompts(processor, PROMPTS * 2)
    codes = torch.randint(0, 64, (4, 16), generator=g)
    candidates = torch.randint(0, 64, (4, 16, 3), generator=g)
    candidates[..., 1] = codes  # the ground truth is among the hits, so the candidates carry signal
    opt = torch.optim.Adam(faid.parameters(), lr=3e-2)
    losses = []
    for _ in range(12):
        loss = faid_training_loss(backbone, faid, **batch, codes=codes, candidates=candidates)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"\nFAiD training losses: {[round(x, 3) for x in losses]}")
    assert losses[-1] < 0.95 * losses[0]
    assert all(p.grad is None for p in backbone.parameters())
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_load_round_trip_and_detach(model, db, tmp_path):
    faid = randomise(FAiD.for_model(model, TINY), seed=2)
    faid.save(tmp_path / "faid")
    loaded = FAiD.load(tmp_path / "faid")
    assert loaded.cfg == faid.cfg
    assert all(torch.equal(a, b) for a, b in zip(faid.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="attach"):
        FAiDHook(*db, loaded)
    # transformers may keep its own output-capturing hooks on the layers: compare with what was there before
    hooks_before = [dict(layer._forward_hooks) for layer in model.model.language_model.layers]
    loaded.attach(model)
    with pytest.raises(RuntimeError, match="already attached"):
        loaded.attach(model)
    loaded.detach()
    assert [dict(layer._forward_hooks) for layer in model.model.language_model.layers] == hooks_before


def test_training_candidates_exclude_the_image_itself(db):
    database, codebook = db
    codes = database.codes[:5].long().view(5, 4, 4)  # images 0..4 of the database
    with_self = training_candidates(database, codes, codebook, k=3)
    without = training_candidates(database, codes, codebook, k=3, image_ids=torch.arange(5))
    assert with_self.shape == without.shape == (5, 16, 3)
    # the own patch is an exact hit; interior keys are unique enough that it comes first
    assert (with_self[:, 5:, 0] == codes.flatten(1)[:, 5:]).float().mean() > 0.9
    assert not torch.equal(with_self, without)
    alone = PatchDatabase.build(codes[:1], codebook, index="flat")  # only the image itself: nothing is left
    assert (training_candidates(alone, codes[:1], codebook, k=3, image_ids=torch.tensor([0])) == -1).all()


@pytest.mark.parametrize("profile", ["config/paper.yaml", "config/paper-1gpu.yaml"])
def test_the_paper_profiles_add_the_papers_faid_parameters(profile):
    """Table 1's Params column goes from 1.0B (Janus-Pro) to 1.2B (+ FAiD), Table 3's from 1.3B to 1.5B (Show-o):
    FAiD adds about 0.2B. The modules the paper profiles train, built at Janus-Pro-1B's dims (24 layers of 2048)
    from the config as Snakemake merges it over config/config.yaml, add that many."""
    import yaml
    from snakemake.utils import update_config

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((repo / profile).read_text()))
    training = config["faid"]["training"]
    cfg = FAiDConfig(**{k: training[k] for k in ("every", "hops", "k", "budget", "rank") if k in training})
    added = faid_parameter_count(2048, 24, cfg)
    print(f"\n{profile}: {len(faid_layers(24, cfg.every))} FAiD modules, {added / 1e6:.1f}M parameters")
    assert cfg.budget == "paper" and cfg.hops == "12" and len(faid_layers(24, cfg.every)) == 2
    assert 0.15e9 <= added < 0.25e9  # rounds to the paper's 0.2B


def test_a_faid_model_counts_its_modules_beside_the_backbone(model, db, attach):
    """The tables' Params column: every loaded backbone parameter plus the FAiD modules the hook decodes with."""
    from arrag.decoding.pipeline import method_parameters

    faid = attach(FAiD.for_model(model, TINY))
    backbone = sum(p.numel() for p in model.parameters())
    added = sum(p.numel() for p in faid.parameters())
    assert added > 0 and method_parameters(model, []) == backbone
    assert method_parameters(model, [FAiDHook(*db, faid)]) == backbone + added


@pytest.mark.parametrize("width", [None, 3])
def test_the_decoding_path_equals_the_training_path_and_follows_weight_updates(width):
    """Without gradients a step's few targets take the matrix-product path with the centre taps kept between steps;
    it computes the same as the convolution path, and an in-place weight update (an optimiser step) is seen."""
    torch.manual_seed(0)
    block = FAiDModule(hidden=5, hops=(1, 2), width=width).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p))
    grid = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    candidates = torch.randn(2, 1, 3, 5, dtype=torch.float64)
    valid = torch.ones(2, 1, 3, dtype=torch.bool)
    for target in (0, 9, 41):
        args = (grid, torch.tensor([target]), candidates, valid)
        with torch.no_grad():
            fast = block(*args)
        for got, want in zip(fast, block(*args)):
            torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        block.conv_in[1].weight.mul_(-2)  # in place, as an optimiser step updates it
        fast = block(*args)
    torch.testing.assert_close(fast[0], block(*args)[0].detach(), rtol=1e-10, atol=1e-10)


def test_decoding_with_faid_makes_the_same_tokens_on_either_path(model, processor, db, attach, monkeypatch):
    import arrag.models.faid as faid_module

    faid = attach(randomise(FAiD.for_model(model, TINY), seed=2))
    fast = generate(model, processor, [FAiDHook(*db, faid)])
    monkeypatch.setattr(faid_module, "DECODING_TARGETS", 0)  # every step through the convolution path
    assert torch.equal(generate(model, processor, [FAiDHook(*db, faid)]), fast)
