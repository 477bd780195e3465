"""`arrag bench janus-pro-1b`: Table 4 at Janus-Pro-1B's size, on random weights, on this machine.

The model is Janus-Pro-1B's image-generation path at full size (arrag.rehearsal.janus_pro_1b_config: 24 layers of
width 2048, 384 px, 24 x 24 tokens, a 16384 x 8 codebook) with random weights. Two parts an image-generation step
never reads are cut, so the model fits beside the database in memory: the text vocabulary is the stand-in word
tokenizer's (the prompt's embeddings are a lookup; Janus-Pro's 102,400-row table and text head would add 1.7 GB),
the SigLIP understanding tower is one narrow layer (it only reads input images), and the VQ encoder is left out
(generation only decodes). The parameter count of the full architecture is reported beside the one built.

The patch database holds real keys in Janus-Pro's layout: hop-1 causal neighbourhood keys (arrag.retrieval.keys)
of 24 x 24 token grids, either from code shards (`arrag tokenise`) or made here (`scene_token_grids`): mini-world
scenes rendered at 384 px, each 16 x 16 patch tokenised by a fixed random projection to the codebook's 8 dimensions
and the nearest L2-normalised code (the VQ's own quantiser rule), so flat backgrounds repeat codes and edges vary,
as in real grids, at a cost a 2-core CPU can pay (the VQ encoder runs at 0.4 images/s there).

Rows, interleaved on the same prompts and seeds, after a warm-up repeat: our decoding loop (vanilla), transformers'
own `generate(generation_mode="image")` on the same model, DAiD, FAiD at the paper's budget and at the low-rank
one (random modules: timing does not depend on trained weights), RA-CM3 (a 576-token reference before the prompt).
A full image is 576 steps; a row may time only the first `steps` (a timer hook stops the decoding), reported per
window of steps so their flatness can be read, and the per-image time is estimated as the time to the first token
(prompt pass, RA-CM3's retrieval) + the remaining steps at the measured mean + one VQ decode.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from arrag.bench import JANUS_BENCH_ROWS
from arrag.bench.generate import StepTimer, _Enough, _synchronise, timed
from arrag.decoding.loop import SamplingConfig
from arrag.io import write_json, write_text

PATCH = 16  # Janus-Pro's VQ downsampling: 384 px -> 24 x 24 tokens
WARM_UP_STEPS = 3
TARGETS = {"daid": 0.01, "faid_lowrank": 0.15, "faid_paper": 0.36}  # the targets, per image vs vanilla


# ---------------------------------------------------------------- the model


def janus_size_model(depth: int | None = None, seed: int = 0, device: str | torch.device = "cpu", toy: bool = False):
    """(model, processor, parameters of Janus-Pro-1B's whole architecture at this depth): the image-generation
    path at full size with random weights (see the module docstring for the two parts cut); `toy`: narrow widths
    with every shape the pipeline depends on kept (tests)."""
    from transformers import JanusForConditionalGeneration, JanusVisionConfig

    from arrag.bench.scale import step_parameters
    from arrag.data.mini_world import caption_vocabulary
    from arrag.models.janus import build_processor, build_word_tokenizer, configure_image_generation
    from arrag.rehearsal import IMAGE_SIZE, janus_pro_1b_config

    tokenizer = build_word_tokenizer(caption_vocabulary())
    config = janus_pro_1b_config(tokenizer, depth, toy)
    with torch.device("meta"):  # shapes only
        full = sum(p.numel() for p in JanusForConditionalGeneration(config).parameters())
    width = config.text_config.hidden_size
    config.text_config.vocab_size = len(tokenizer)
    # image size and patch stay (generate() reads num_image_tokens here); only the tower's width and depth shrink
    config.vision_config = JanusVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=width
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval().to(device)
    model.model.vqmodel.encoder = None  # images -> codes only: generation decodes (0.14 GB at full size)
    configure_image_generation(model, tokenizer)
    grid = config.vq_config.num_patches
    assert (grid, config.vq_config.num_embeddings, config.vq_config.embed_dim) == (24, 16384, 8), "not Janus-Pro's VQ"
    assert model.model.vision_model.config.num_image_tokens == grid * grid
    processor = build_processor(tokenizer, IMAGE_SIZE, grid * grid)
    return model, processor, {"architecture": full, "built": sum(p.numel() for p in model.parameters()),
                              "step": step_parameters(config)}  # fmt: skip


# ---------------------------------------------------------------- the database's grids


def patch_tokens(images: np.ndarray, codebook: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, S, S, 3] -> token grids [N, S/16, S/16]: each 16 x 16 patch (pixels in [-1, 1]) projected
    by projection [768, D] and given the nearest code after L2-normalising both (the VQ quantiser's rule)."""
    import faiss

    x = torch.from_numpy(images).float() / 127.5 - 1  # [N, S, S, 3]
    n, size = x.shape[0], x.shape[1]
    side = size // PATCH
    patches = x.view(n, side, PATCH, side, PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(n * side * side, -1)
    z = F.normalize(patches @ projection, dim=-1)  # [P, D]
    # max inner product with the unit codes = nearest unit code; FAISS keeps only the best per patch (a [P, K]
    # score matrix would be 2.4 GB for 64 images)
    index = faiss.IndexFlatIP(codebook.shape[1])
    index.add(F.normalize(codebook.float(), dim=-1).numpy())
    return torch.from_numpy(index.search(z.numpy(), 1)[1][:, 0]).view(n, side, side)


def scene_token_grids(count: int, codebook: torch.Tensor, seed: int = 0, chunk: int = 64):
    """count mini-world scenes at 384 px tokenised by `patch_tokens`: (codes uint16 [count, 24, 24], captions)."""
    from arrag.data.mini_world import make_split
    from arrag.rehearsal import IMAGE_SIZE

    gen = torch.Generator().manual_seed(seed)
    projection = torch.randn(PATCH * PATCH * 3, codebook.shape[1], generator=gen)  # [768, D]
    codes, captions = [], []
    for start in range(
        0, count, chunk
    ):  # rendered a chunk at a time: 3,584 images at 384 px are 1.6 GB (6.3 GB as floats)
        images, records = make_split("bench", min(chunk, count - start), seed + start, IMAGE_SIZE)
        codes.append(patch_tokens(images, codebook, projection).to(torch.int32))
        captions += [r["caption"] for r in records]
    return torch.cat(codes).to(torch.uint16), captions


# ---------------------------------------------------------------- timing


def generate_timer(steps: int):
    """The same timer as a logits processor of transformers' generate(): it runs once per step, after the
    forward pass (consecutive calls are one whole step apart)."""
    from transformers import LogitsProcessor

    class GenerateTimer(LogitsProcessor):
        def __init__(self):
            self.steps, self.times = steps, []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            if len(self.times) == self.steps:
                raise _Enough
            return scores

    return GenerateTimer()


@contextmanager
def attached(faid, model):
    """FAiD's modules hooked into the shared model for one row only."""
    faid.attach(model)
    try:
        yield
    finally:
        faid.detach()


def bench_rows(pipe, db, codebook, faids: dict, racm3_pipe, prompts, seeds, sampling: SamplingConfig, daid: dict):
    """name -> run(timer): one batch of the method, decoding until the timer stops it."""
    from arrag.decoding.daid import DAiD
    from arrag.decoding.faid import FAiDHook
    from arrag.models.janus import tokenize_prompts

    def ours(hooks: Callable[[], list], p=pipe):
        return lambda timer: p.generate_codes(prompts, seeds, sampling, [*hooks(), timer])

    def theirs(timer):  # transformers' loop draws from the global generator: seeded per batch instead
        from transformers import LogitsProcessorList

        torch.manual_seed(seeds[0])
        batch = tokenize_prompts(pipe.processor, prompts, device=pipe.device)
        pipe.model.generate(
            **batch, generation_mode="image", do_sample=not sampling.greedy, guidance_scale=sampling.guidance_scale,
            temperature=sampling.temperature, top_k=sampling.top_k or 0, logits_processor=LogitsProcessorList([timer]),
        )  # fmt: skip

    def with_faid(faid):
        def run(timer):
            with attached(faid, pipe.model):
                ours(lambda: [FAiDHook(db, codebook, faid)])(timer)

        return run

    rows = {"vanilla": ours(list), "generate()": theirs, "daid": ours(lambda: [DAiD(db, codebook, **daid)])}
    rows |= {f"faid_{budget}": with_faid(faid) for budget, faid in faids.items()}
    if racm3_pipe is not None:
        rows["racm3"] = ours(list, racm3_pipe)
    return rows


def run_rows(rows: dict, device, *, steps: int, repeats: int, window: int) -> dict[str, dict]:
    """Each row `repeats` times, interleaved, after a warm-up round of WARM_UP_STEPS steps per row (the code paths
    run and the buffers allocated once): seconds to the first token and per step."""
    first = {name: [] for name in rows}
    per_step = {name: [] for name in rows}  # [repeat][step]
    for rep in range(repeats + 1):  # repeat 0 warms up: a few steps of every row
        for name, run in rows.items():
            count = steps if rep else min(steps, WARM_UP_STEPS)
            timer = generate_timer(count) if name == "generate()" else StepTimer(count)
            t_first, t_steps = timed(run, timer, device)
            if rep:
                first[name].append(t_first)
                per_step[name].append(t_steps)
    out = {}
    for name in rows:
        steps_arr = np.asarray(per_step[name])  # [repeats, steps - 1]
        windows = [steps_arr[:, s : s + window].mean() for s in range(0, steps_arr.shape[1], window)]
        out[name] = {
            "first_token_seconds": float(np.mean(first[name])),
            "seconds_per_step": float(steps_arr.mean()),
            "step_sd_between_repeats": float(steps_arr.mean(1).std(ddof=1)) if repeats > 1 else None,
            "window_means": [float(w) for w in windows],
            "first_token_runs": first[name],
            "step_means_per_repeat": [float(m) for m in steps_arr.mean(1)],
        }
    return out


# ---------------------------------------------------------------- the run


def run_janus_bench(
    *,
    depth: int | None = None,
    grids: int = 3584,
    prompts: list[str] | None = None,
    batch_size: int = 1,
    steps: int = 48,
    repeats: int = 3,
    window: int = 8,
    rows: tuple[str, ...] = JANUS_BENCH_ROWS,
    sampling: SamplingConfig = SamplingConfig(),
    index: str = "ivf_compact",
    index_params: dict | None = None,
    faid_rank: int = 256,
    device: str = "cpu",
    seed: int = 0,
    toy: bool = False,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict:
    """Build the model, the database of `grids` token grids (scene_token_grids), FAiD's modules and RA-CM3's
    image index as `rows` need, then time the rows."""
    from arrag.decoding.pipeline import ImageGenerationPipeline, resolve_device
    from arrag.methods import DAiDSettings
    from arrag.models.faid import FAiD, FAiDConfig
    from arrag.retrieval.database import PatchDatabase

    unknown = sorted(set(rows) - set(JANUS_BENCH_ROWS))
    if unknown or "vanilla" not in rows:
        raise ValueError(f"rows {unknown or list(rows)}: choose among {', '.join(JANUS_BENCH_ROWS)}, vanilla included")
    if not 2 <= steps <= 576:
        raise ValueError(f"steps={steps}: time between 2 and 576 (a whole image) steps per row")
    device = resolve_device(device)
    t0 = time.perf_counter()  # the grids first: rendering's temporaries are gone before the model is allocated
    codes, captions = scene_token_grids(grids, janus_pro_codebook(seed), seed)
    grid_note = (
        f"{len(codes):,} mini-world scenes at 384 px, each 16 x 16 patch tokenised by a fixed random projection "
        "to 8 dimensions and the nearest L2-normalised code"
    )
    log(f"[bench janus] {len(codes)} token grids in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    model, processor, params = janus_size_model(depth, seed, device, toy)
    with torch.no_grad():  # the model's codebook is the one the grids were tokenised with
        model.model.vqmodel.quantize.embedding.weight.copy_(janus_pro_codebook(seed))
    pipe = ImageGenerationPipeline(model, processor, device)
    codebook = pipe.vq.codebook.cpu()
    log(f"[bench janus] model built in {time.perf_counter() - t0:.0f} s: {params}")
    t0 = time.perf_counter()
    index_params = {"nprobe": 16} if index_params is None and index.startswith("ivf") else (index_params or {})
    db = PatchDatabase.build(codes, codebook, hops=1, causal=True, index=index, device=str(device), **index_params)
    db_seconds = time.perf_counter() - t0
    log(f"[bench janus] database of {len(db):,} entries ({index}) in {db_seconds:.0f} s")

    faids = {}
    for budget in ("paper", "lowrank"):
        if f"faid_{budget}" in rows:
            torch.manual_seed(seed)
            every = max(1, model.config.text_config.num_hidden_layers // 2)  # 2 modules: after layers 12 and 24
            faids[budget] = FAiD.for_model(model, FAiDConfig(every, budget=budget, rank=faid_rank)).to(device).eval()
    racm3_pipe = None
    if "racm3" in rows:
        racm3_pipe = racm3_pipeline(model, processor, codes, captions, pipe, device)
    if prompts is None:
        from arrag.data.mini_world import make_split

        prompts = [r["caption"] for r in make_split("bench-prompts", batch_size, seed + 1, 32)[1]]
    batch = (list(prompts) * batch_size)[:batch_size]
    seeds = list(range(batch_size))
    defaults = DAiDSettings(db="in memory")
    daid = dict(k=defaults.k, weight=defaults.weight, temperature=defaults.temperature, unique=defaults.unique)
    made = bench_rows(pipe, db, codebook, faids, racm3_pipe, batch, seeds, sampling, daid)
    made = {name: made[name] for name in rows}
    with torch.no_grad():
        measured = run_rows(made, device, steps=steps, repeats=repeats, window=window)
        decode = decode_seconds(pipe, batch_size, device)
    tokens = pipe.vq.grid**2
    base = None
    for name, m in measured.items():
        m["seconds_per_image"] = (m["first_token_seconds"] + (tokens - 1) * m["seconds_per_step"] + decode) / batch_size
        if name == "vanilla":
            base = m
    for name, m in measured.items():
        m["overhead_per_image"] = m["seconds_per_image"] / base["seconds_per_image"] - 1
        m["overhead_per_step"] = m["seconds_per_step"] / base["seconds_per_step"] - 1
        # the fastest repeat of each row: on a shared machine other jobs only ever add time
        m["overhead_per_step_best_repeat"] = min(m["step_means_per_repeat"]) / min(base["step_means_per_repeat"]) - 1
        m["target"] = TARGETS.get(name)
        m["added_parameters"] = sum(p.numel() for p in faids[name[5:]].parameters()) if name.startswith("faid") else 0
    from arrag.bench.retrieval import _machine

    return {
        "command": "arrag bench janus-pro-1b",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine() + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "device": str(device),
        "layers": model.config.text_config.num_hidden_layers,
        "parameters": params,
        "database": dict(entries=len(db), index=index, params=index_params, build_seconds=db_seconds, grids=grid_note),
        "daid": daid,
        "faid_rank": faid_rank,
        "batch_size": batch_size,
        "sampling": vars(sampling),
        "tokens_per_image": tokens,
        "steps_timed": steps,
        "repeats": repeats,
        "window": window,
        "vq_decode_seconds": decode,
        "rows": measured,
    }


def racm3_pipeline(model, processor, codes: torch.Tensor, captions: list[str], pipe, device):
    """RA-CM3 on the same weights: a caption-retrieved reference grid from the database's corpus before the prompt."""
    from arrag.baselines.racm3 import RACM3Pipeline
    from arrag.models.vq import codebook_fingerprint
    from arrag.retrieval.image_index import BagOfWordsEncoder, ImageLevelIndex

    sha = codebook_fingerprint(pipe.vq.codebook)
    index = ImageLevelIndex.build(
        captions, codes.numpy(), np.arange(len(codes)), BagOfWordsEncoder.from_captions(captions), sha
    )
    return RACM3Pipeline(model, processor, index, device)


def decode_seconds(pipe, batch_size: int, device) -> float:
    """One VQ decode of a batch of token grids (the same for every method)."""
    codes = torch.zeros(batch_size, pipe.vq.grid, pipe.vq.grid, dtype=torch.long, device=device)
    pipe.vq.decode(codes)  # warm-up
    _synchronise(device)
    t0 = time.perf_counter()
    pipe.vq.decode(codes)
    _synchronise(device)
    return time.perf_counter() - t0


def markdown_table(result: dict) -> str:
    lines = [
        "| method | added params | to first token (s) | ms per step | per image (s, est.) | vs vanilla per image "
        "| vs vanilla per step | per step, fastest repeats | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        target = r["target"]
        lines.append(
            f"| {name} | {r['added_parameters'] / 1e6:.1f}M | {r['first_token_seconds']:.2f} "
            f"| {1000 * r['seconds_per_step']:.1f} | {r['seconds_per_image']:.1f} "
            f"| {100 * r['overhead_per_image']:+.1f}% "
            f"| {100 * r['overhead_per_step']:+.1f}% | {100 * r['overhead_per_step_best_repeat']:+.1f}% "
            f"| {'–' if target is None else f'≤ +{100 * target:.0f}%'} |"
        )
    p, db = result["parameters"], result["database"]
    windows = "; ".join(
        f"{name}: " + ", ".join(f"{1000 * w:.0f}" for w in r["window_means"]) for name, r in result["rows"].items()
    )
    return "\n".join(lines) + (
        f"\n\nJanus-Pro-1B's architecture at {result['layers']} layers with random weights "
        f"({p['architecture'] / 1e9:.2f}B parameters; built {p['built'] / 1e9:.2f}B: the text vocabulary and the "
        f"SigLIP tower, unused by image generation, cut), batch {result['batch_size']} (guidance doubles it), "
        f"guidance {result['sampling']['guidance_scale']}. Database: {db['entries']:,} entries, {db['index']} "
        f"{db['params']} (built in {db['build_seconds']:.0f} s); grids: {db['grids']}. DAiD k={result['daid']['k']}; "
        f"FAiD: 2 modules, hops 12, paper budget and rank {result['faid_rank']}. Each row timed over its first "
        f"{result['steps_timed']} of {result['tokens_per_image']} steps, {result['repeats']} interleaved repeats "
        f"after a {WARM_UP_STEPS}-step warm-up of every row; "
        f"per image = time to first token + {result['tokens_per_image'] - 1} × mean step + one "
        f"VQ decode ({result['vq_decode_seconds']:.2f} s), / batch. Mean ms per window of {result['window']} steps: "
        f"{windows}. Device {result['device']}; {result['machine']}; {result['date']}.\n"
    )


def write_results(result: dict, out_json, out_md) -> None:
    write_json(out_json, result)
    write_text(out_md, markdown_table(result))


def janus_pro_codebook(seed: int = 0) -> torch.Tensor:
    """A random L2-normalised codebook of Janus-Pro's VQ shape, 16384 x 8 (what random weights give it)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(16384, 8, generator=gen), dim=-1)
