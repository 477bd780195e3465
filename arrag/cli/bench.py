"""Performance benchmarks (`arrag bench ...`: retrieval backends, corpus encoders, scorers, generation speed of
the methods side by side, the paper's Table 4) and the cost of a run extrapolated to the paper's scale."""

from __future__ import annotations

import argparse
from pathlib import Path

from arrag.bench import JANUS_BENCH_ROWS
from arrag.cli.args import COUNT_TYPE, daid_args, daid_settings, model_args, number, sampling, sampling_args
from arrag.methods import FAiDSettings, RACM3Settings, VanillaSettings


def register(sub) -> None:
    bench = sub.add_parser("bench", help="performance benchmarks").add_subparsers(dest="bench", required=True)
    for add in (
        add_bench_retrieval,
        add_bench_encoders,
        add_bench_scoring,
        add_bench_generate,
        add_bench_janus,
        add_bench_scaling,
    ):
        add(bench)
    add_scale_table(sub)
    add_run_time(sub)


def add_bench_retrieval(sub) -> None:
    p = sub.add_parser("retrieval", help="index backends side by side: build time, bytes/entry, QPS, recall")
    model_args(p)
    p.add_argument("--codes", nargs="+", required=True, help="code shards forming the database")
    p.add_argument("--query-codes", nargs="+", required=True, help="held-out code shards for queries")
    p.add_argument("--backend", action="append", required=True, metavar="NAME[:k=v,...]")
    p.add_argument("--authors-baseline", action="store_true", help="add OPQ8+IVF800+PQ8 with nprobe 1")
    p.add_argument("--hops", type=COUNT_TYPE, default=1)
    p.add_argument("--queries", type=COUNT_TYPE, default=2048)
    p.add_argument("--min-entries", type=COUNT_TYPE, default=2_000_000)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_bench_retrieval)


def cmd_bench_retrieval(args) -> None:
    from arrag.bench.retrieval import AUTHORS_BASELINE, run_retrieval_bench, write_results
    from arrag.data.code_shards import load_code_shards
    from arrag.models.vq import load_codebook

    codebook = load_codebook(args.model, args.revision)
    codes, _, _ = load_code_shards(args.codes)
    queries, _, _ = load_code_shards(args.query_codes)
    entries = codes.shape[0] * codes.shape[1] * codes.shape[2]
    if entries < args.min_entries:
        raise ValueError(
            f"the database would hold {entries:,} entries, fewer than --min-entries {args.min_entries:,}; "
            "pass more code shards (e.g. a larger mini-world corpus)"
        )
    backends = backend_specs(args.backend)
    if args.authors_baseline:
        backends.append(AUTHORS_BASELINE)
    result = run_retrieval_bench(
        codes,
        queries,
        codebook,
        backends,
        hops=args.hops,
        n_queries=args.queries,
        data_note=f"VQ codes of {len(codes):,} mini-world corpus images (real codes, no synthesis)",
    )
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


def add_bench_encoders(sub) -> None:
    p = sub.add_parser("encoders", help="images/s of the corpus encoders (Janus-Pro VQ, CLIP ViT-B/32), random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=COUNT_TYPE, default=8)
    p.add_argument("--batches", type=COUNT_TYPE, default=2)
    p.add_argument("--repeats", type=COUNT_TYPE, default=2)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_bench_encoders)


def cmd_bench_encoders(args) -> None:
    from arrag.bench.encoders import run_encoder_bench, write_results
    from arrag.decoding.pipeline import resolve_device

    result = run_encoder_bench(str(resolve_device(args.device)), args.batch_size, args.batches, args.repeats)
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


def add_bench_scoring(sub) -> None:
    p = sub.add_parser("scoring", help="images/s of the benchmark scorers on generated folders (CPU in the mini)")
    p.add_argument("--geneval", required=True, help="GenEval-layout folder")
    p.add_argument("--dpg-tiles", default=None, help="DPG tile folder (arrag dpg-tiles)")
    p.add_argument("--dpg-csv", default=None, help="its question CSV")
    p.add_argument("--fidelity-images", default=None, help="generated folder for the fidelity metrics")
    p.add_argument("--reference", default=None, help="reference images (.npy or folder)")
    p.add_argument("--features", default=None, help="mini feature network (arrag train-features)")
    p.add_argument("--fwd-level", type=COUNT_TYPE, default=4)
    p.add_argument("--fwd-size", type=COUNT_TYPE, default=256)
    p.add_argument("--repeats", type=COUNT_TYPE, default=3)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_bench_scoring)


def cmd_bench_scoring(args) -> None:
    """Scoring throughput of GenEval (shapes detector), DPG-Bench (ShapesVQA) and the fidelity metrics."""
    from arrag.bench.scoring import run_scoring_bench, write_results
    from arrag.evaluation import dpg, fidelity, geneval
    from arrag.evaluation.features import load_feature_network
    from arrag.evaluation.shapes_detector import detect_shapes

    scorers = {
        "GenEval (shapes detector)": lambda: len(geneval.score_folder(args.geneval, detect_shapes)),
    }
    if args.dpg_tiles:
        questions = dpg.read_questions(args.dpg_csv, skip_first_row=False)
        scorers["DPG-Bench (ShapesVQA, 4 crops per image)"] = lambda: len(
            dpg.score_folder(args.dpg_tiles, questions, dpg.ShapesVQA())
        )
    if args.fidelity_images:
        net = load_feature_network(args.features) if args.features else None

        def score_fidelity() -> int:  # every image of both sets goes through the networks and the wavelets
            kwargs = dict(fwd_level=args.fwd_level, fwd_size=args.fwd_size)
            result = fidelity.fidelity_scores(args.fidelity_images, args.reference, net, net, **kwargs)
            return result["images"] + result["reference_images"]

        scorers["fidelity: mini-FID + mini-CMMD + FWD (generated + reference)"] = score_fidelity
    result = run_scoring_bench(scorers, repeats=args.repeats)
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


def add_bench_generate(sub) -> None:
    p = sub.add_parser("generate", help="images/s and time per step: vanilla, DAiD, FAiD, RA-CM3 side by side")
    model_args(p)
    p.add_argument("--db", default=None, help="PatchDatabase: adds the DAiD row")
    p.add_argument("--faid", default=None, help="FAiD checkpoint of --model: adds the FAiD row (needs --db)")
    p.add_argument("--racm3-model", default=None, help="RA-CM3 model (arrag train-racm3): adds the RA-CM3 row")
    p.add_argument("--image-index", default=None, help="RA-CM3's image-level index")
    daid_args(p)
    p.add_argument("--prompts", default=None, help="JSONL of prompt records")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--repeats", type=COUNT_TYPE, default=3)
    p.add_argument(
        "--steps",
        type=COUNT_TYPE,
        default=None,
        help="decode only the first STEPS steps of each batch and estimate its time from them (default: all)",
    )
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    sampling_args(p)
    p.set_defaults(func=cmd_bench_generate, batch_size=16)


def cmd_bench_generate(args) -> None:
    from arrag.bench.generate import load_methods, run_generation_bench, write_results
    from arrag.io import read_jsonl

    settings = [VanillaSettings()]  # a row per method whose inputs are given, checked before anything loads
    if args.db:
        settings.append(daid_settings(args))
    if args.faid:
        settings.append(FAiDSettings(db=args.db, faid=args.faid))
    if args.racm3_model:
        settings.append(RACM3Settings(image_index=args.image_index))
    prompts = [r[args.prompt_field] for r in read_jsonl(args.prompts)] if args.prompts else ["a photo of a circle"]
    methods = load_methods(
        settings,
        args.model,
        racm3_model=args.racm3_model,
        revision=args.revision,
        device=args.device,
        db_devices=args.db_devices,
    )
    result = run_generation_bench(
        methods,
        prompts,
        batch_size=args.batch_size,
        repeats=args.repeats,
        sampling=sampling(args),
        timed_steps=args.steps,
    )
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


def add_bench_janus(sub) -> None:
    p = sub.add_parser(
        "janus-pro-1b",
        help="Table 4 at Janus-Pro-1B's size (random weights): vanilla, generate(), DAiD, FAiD x 2, RA-CM3 per step",
    )
    p.add_argument("--depth", type=COUNT_TYPE, default=None, help="language-model layers (default 24, the real one)")
    p.add_argument(
        "--grids", type=COUNT_TYPE, default=3584, help="24 x 24 token grids in the database (576 entries each)"
    )
    p.add_argument("--steps", type=COUNT_TYPE, default=48, help="decoding steps timed per row (576 = a whole image)")
    p.add_argument("--window", type=COUNT_TYPE, default=8, help="steps per reported window")
    p.add_argument("--repeats", type=COUNT_TYPE, default=3)
    p.add_argument(
        "--rows", default=",".join(JANUS_BENCH_ROWS), help=f"comma-separated, among {','.join(JANUS_BENCH_ROWS)}"
    )
    p.add_argument("--faid-rank", type=COUNT_TYPE, default=256, help="the low-rank FAiD row's rank")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    sampling_args(p)
    p.set_defaults(func=cmd_bench_janus, batch_size=1, device="cpu")


def cmd_bench_janus(args) -> None:
    from arrag.bench.janus_size import run_janus_bench, write_results

    result = run_janus_bench(
        depth=args.depth,
        grids=args.grids,
        batch_size=args.batch_size,
        steps=args.steps,
        repeats=args.repeats,
        window=args.window,
        rows=tuple(r.strip() for r in args.rows.split(",") if r.strip()),
        sampling=sampling(args),
        faid_rank=args.faid_rank,
        device=args.device,
        seed=args.seed,
    )
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


def entry_count(text: str) -> int:
    """`2M`, `128M`, `7.83B`, `500K` or a plain integer -> entries."""
    scale = {"K": 1_000, "M": 1_000_000, "B": 1_000_000_000}.get(text[-1:].upper(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an entry count (e.g. 2M, 128M, 2000000)") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: an entry count must be at least 1")
    return int(value)


def add_bench_scaling(sub) -> None:
    p = sub.add_parser(
        "retrieval-scaling", help="database size vs build time, memory, QPS, recall; fit and extrapolate"
    )
    p.add_argument("--sizes", nargs="+", type=entry_count, default=[2_000_000, 8_000_000, 32_000_000, 128_000_000])
    p.add_argument("--backend", action="append", metavar="NAME[:k=v,...]", help="default: compact, torch_compact, "
                   "ivf_compact:nlist=1024,nprobe=16")  # fmt: skip
    p.add_argument("--grids", type=COUNT_TYPE, default=3584, help="real 24 x 24 base grids (576 entries each)")
    p.add_argument("--query-grids", type=COUNT_TYPE, default=64, help="held-out grids the queries come from")
    p.add_argument("--queries", type=COUNT_TYPE, default=256)
    p.add_argument("--perturb", type=float, default=0.05, help="fraction of tokens replaced in each tiled copy")
    p.add_argument("--max-batch-seconds", type=float, default=60.0, help="skip a search predicted to take longer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=cmd_bench_scaling)


def backend_specs(specs: list[str]) -> list[tuple[str, dict]]:
    """`name:k=v,k=v` flags -> (name, params)."""
    out = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        out.append((name, {k: number(v) for k, v in (p.split("=", 1) for p in rest.split(",") if p)}))
    return out


def cmd_bench_scaling(args) -> None:
    from arrag.bench.janus_size import janus_pro_codebook, scene_token_grids
    from arrag.bench.retrieval_scaling import run_scaling, write_results

    codebook = janus_pro_codebook(args.seed)
    base, _ = scene_token_grids(args.grids, codebook, args.seed)
    held_out, _ = scene_token_grids(args.query_grids, codebook, args.seed + 1_000_003)
    specs = args.backend or ["compact", "torch_compact", "ivf_compact:nlist=1024,nprobe=16"]
    result = run_scaling(
        base,
        held_out,
        codebook,
        args.sizes,
        backend_specs(specs),
        perturb=args.perturb,
        n_queries=args.queries,
        max_batch_seconds=args.max_batch_seconds,
        data_note="mini-world scenes at 384 px tokenised by arrag.bench.janus_size.scene_token_grids (random-weight "
        "Janus-Pro VQ codebook)",
        seed=args.seed,
        on_size=lambda partial: write_results(partial, args.out_json, args.out_md, args.out_png),
    )
    write_results(result, args.out_json, args.out_md, args.out_png)
    print(Path(args.out_md).read_text())


def add_scale_table(sub) -> None:
    p = sub.add_parser("scale-table", help="per-rule cost per item of a run, extrapolated to the paper's counts")
    p.add_argument("--results", required=True, help="results/<profile> of a finished run (its jobstats/*.tsv)")
    p.add_argument("--out", required=True, help="Markdown file (a .json of the rows beside it)")
    p.add_argument(
        "--paper-plan",
        default=None,
        help="the output of `snakemake -n --configfile config/paper.yaml`: adds the memory each paper job declares",
    )
    p.set_defaults(func=cmd_scale_table)


def cmd_scale_table(args) -> None:
    from arrag.bench.scale import declared_memory, run_span, scale_markdown, scale_rows
    from arrag.io import write_json, write_text

    declared = declared_memory(Path(args.paper_plan).read_text()) if args.paper_plan else None
    rows = scale_rows(args.results, declared)
    span = run_span(Path(args.results) / "jobstats")
    write_text(args.out, scale_markdown(rows, args.results, span))
    write_json(Path(args.out).with_suffix(".json"), rows)
    print(Path(args.out).read_text())


def add_run_time(sub) -> None:
    p = sub.add_parser("run-time", help="where a finished run's time went: its jobs' wall and CPU time per stage")
    p.add_argument("--results", required=True, help="results/<profile> of a finished run (its jobstats/*.tsv)")
    p.add_argument("--rules", default="workflow/rules", help="the workflow's rules folder: one .smk per stage")
    p.add_argument("--out", required=True, help="Markdown file (a .json of the rows beside it)")
    p.set_defaults(func=cmd_run_time)


def cmd_run_time(args) -> None:
    from arrag.bench.scale import run_span, run_time_markdown, stage_rows
    from arrag.io import write_json, write_text

    jobstats = Path(args.results) / "jobstats"
    rows = stage_rows(jobstats, args.rules)
    write_text(args.out, run_time_markdown(rows, run_span(jobstats), jobstats.as_posix()))
    write_json(Path(args.out).with_suffix(".json"), rows)
    print(Path(args.out).read_text())
