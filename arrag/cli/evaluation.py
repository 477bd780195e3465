"""Evaluation commands: scoring generated folders (GenEval, DPG-Bench, the fidelity metrics and the mini
feature network they use), the paper's tables and sweep heatmaps, and pictures (sample grids, attribution)."""

from __future__ import annotations

import json
from pathlib import Path

from arrag.cli.args import COUNT_TYPE, INDEX_TYPE, parse_overrides


def register(sub) -> None:
    for add in (
        add_geneval,
        add_vq_ceiling,
        add_caption_reliance,
        add_select_base,
        add_dpg_tiles,
        add_dpg,
        add_train_features,
        add_fidelity,
        add_table,
        add_sweep_table,
        add_attribution,
        add_grid,
    ):
        add(sub)


def _bootstrap(args):
    """--bootstrap N --seed S -> the intervals' Bootstrap, or None for --bootstrap 0."""
    from arrag.evaluation.intervals import Bootstrap

    return Bootstrap(args.bootstrap, args.seed) if args.bootstrap else None


def _bootstrap_flags(p, what: str) -> None:
    from arrag.evaluation.intervals import RESAMPLES, SEED

    p.add_argument(
        "--bootstrap", type=INDEX_TYPE, default=RESAMPLES, help=f"resamples of {what} for 95%% intervals (0: none)"
    )
    p.add_argument(
        "--seed", type=INDEX_TYPE, default=SEED, help="seed of the bootstrap's draws (one for all methods: paired)"
    )


def _labelled(labels: list[str], paths: list[str], option: str) -> dict[str, str]:
    """--label L1 ... with --<option> P1 ...  ->  {L1: P1, ...}, refusing unequal counts."""
    if len(labels) != len(paths):
        raise ValueError(f"give one --label per --{option} (got {len(labels)} labels and {len(paths)} --{option})")
    return dict(zip(labels, paths))


def add_geneval(sub) -> None:
    p = sub.add_parser("geneval", help="score a GenEval-layout image folder (official per-image JSONL + summary)")
    p.add_argument("--images", required=True, help="folder written by `arrag generate-benchmark`")
    p.add_argument(
        "--detector",
        choices=["shapes", "mask2former"],
        default="shapes",
        help="shapes: the mini world's analytic detector; mask2former: the benchmark's (Mask2Former + CLIP colours)",
    )
    p.add_argument("--checkpoint", default=None, help="Mask2Former checkpoint (.pth), for --detector mask2former")
    p.add_argument("--detector-config", default=None, help="Mask2Former config (default: the one in mmdet)")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip weights tag or local file for colours")
    p.add_argument("--device", default="cuda", help="device of the mask2former backend")
    p.add_argument(
        "--images-per-prompt", type=COUNT_TYPE, default=None, help="refuse folders with another sample count"
    )
    p.add_argument("--workers", type=COUNT_TYPE, default=1, help="processes scoring prompt folders in parallel")
    p.add_argument("--out-jsonl", required=True, help="per-image records, the official evaluator's schema")
    p.add_argument("--out-json", required=True, help="per-tag accuracies and the overall score")
    p.set_defaults(func=cmd_geneval)


def cmd_geneval(args) -> None:
    from arrag.evaluation.geneval import check_detector_classes, score_folder, summarise, write_results_jsonl
    from arrag.evaluation.shapes_detector import detect_shapes
    from arrag.io import write_json

    if args.detector == "shapes":
        detector = detect_shapes
    else:  # the paper's backend, in the GenEval conda env (workflow/envs/geneval.yaml)
        from arrag.evaluation.geneval_mask2former import Mask2FormerCLIPDetector

        if not args.checkpoint:
            raise SystemExit("error: --detector mask2former needs --checkpoint (the Mask2Former .pth)")
        detector = Mask2FormerCLIPDetector.from_checkpoint(
            args.checkpoint, args.detector_config, clip_pretrained=args.clip_pretrained, device=args.device
        )
    check_detector_classes(args.images, getattr(detector, "classnames", None), args.detector)
    rows = score_folder(args.images, detector, workers=args.workers, images_per_prompt=args.images_per_prompt)
    summary = summarise(rows) | {"detector": args.detector, "images_dir": str(args.images)}
    write_results_jsonl(rows, args.out_jsonl)
    write_json(args.out_json, summary)
    print(json.dumps(summary, indent=2))


def add_vq_ceiling(sub) -> None:
    p = sub.add_parser(
        "vq-ceiling",
        help="the detector's ceiling: a VQ-VAE's reconstructions of ground-truth scenes of the mini world's GenEval "
        "prompts, as a GenEval folder (score it with `arrag geneval`)",
    )
    p.add_argument("--world", required=True, help="folder written by `arrag world` (its geneval/ prompts)")
    p.add_argument("--vq", required=True, help="VQ-VAE folder written by `arrag train-vq`")
    p.add_argument("--n", type=COUNT_TYPE, default=4, help="scenes per prompt (GenEval's 4)")
    p.add_argument("--seed", type=INDEX_TYPE, default=0)
    p.add_argument("--out", required=True, help="the GenEval folder to write")
    p.set_defaults(func=cmd_vq_ceiling)


def cmd_vq_ceiling(args) -> None:
    from arrag.evaluation.vq_ceiling import write_reconstructions

    print(json.dumps(write_reconstructions(args.world, args.vq, args.out, args.n, args.seed), indent=2))


def add_caption_reliance(sub) -> None:
    p = sub.add_parser(
        "caption-reliance",
        help="how much a mini Janus model reads the shape and colour words of its captions: the extra NLL (nats per "
        "image) of held-out images when the word is swapped",
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained), e.g. results/mini/models/base")
    p.add_argument("--split", required=True, help="a mini-world split the model did not train on, e.g. its reference")
    p.add_argument("--limit", type=COUNT_TYPE, default=1000, help="images per word kind (the first that qualify)")
    p.add_argument("--swap-seed", type=INDEX_TYPE, default=0, help="seed of the swapped words")
    p.add_argument("--out", help="JSON to write (default: print only)")
    _bootstrap_flags(p, "images")
    p.set_defaults(func=cmd_caption_reliance)


def cmd_caption_reliance(args) -> None:
    from arrag.evaluation.caption_reliance import caption_reliance
    from arrag.io import write_json

    record = caption_reliance(args.model, args.split, args.limit, args.swap_seed, _bootstrap(args))
    if args.out:
        write_json(args.out, record)
    print(json.dumps(record, indent=2))


def add_select_base(sub) -> None:
    p = sub.add_parser(
        "select-base",
        help="copy the candidate base model (one per training seed) that reads its captions most on a held-out split",
    )
    p.add_argument("--candidate", action="append", required=True, help="a model folder (repeat for each)")
    p.add_argument("--split", required=True, help="a mini-world split none of the candidates trained on")
    p.add_argument("--limit", type=COUNT_TYPE, default=1000, help="images per word kind (the first that qualify)")
    p.add_argument("--out", required=True, help="the model folder to write (a copy of the chosen candidate)")
    p.add_argument("--record", required=True, help="JSON of every candidate's caption reliance and the choice")
    p.set_defaults(func=cmd_select_base)


def cmd_select_base(args) -> None:
    from arrag.evaluation.caption_reliance import select_base_model
    from arrag.io import write_json

    record = select_base_model(args.candidate, args.split, args.out, args.limit)
    write_json(args.record, record)
    print(json.dumps({k: record[k] for k in ("chosen", "scores")}, indent=2))


def add_dpg_tiles(sub) -> None:
    p = sub.add_parser("dpg-tiles", help="4 images per prompt -> <id>.png 2x2 tiles, as DPG-Bench's evaluator reads")
    p.add_argument("--images", required=True, help="GenEval-layout folder generated from `arrag dpg-prompts`")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dpg_tiles)


def cmd_dpg_tiles(args) -> None:
    from arrag.evaluation.dpg import write_tiled_folder

    print(f"{write_tiled_folder(args.images, args.out)} 2x2 tiles -> {args.out}")


def add_dpg(sub) -> None:
    p = sub.add_parser("dpg", help="score a folder of DPG-Bench tiles (per-image JSONL + summary)")
    p.add_argument("--tiles", required=True, help="folder written by `arrag dpg-tiles`")
    p.add_argument("--csv", required=True, help="question CSV (dpg_bench.csv, or mini-DPG's)")
    p.add_argument(
        "--vqa", choices=["shapes", "mplug"], default="shapes", help="shapes: mini world (structured); mplug: paper"
    )
    p.add_argument("--mplug-model", default="damo/mplug_visual-question-answering_coco_large_en")
    p.add_argument("--mplug-revision", default=None, help="ModelScope revision of --mplug-model (pin it)")
    p.add_argument("--device", default="gpu", help="modelscope device of the mplug backend")
    p.add_argument(
        "--keep-first-row", action="store_true", help="score the CSV's first data row (the official script skips it)"
    )
    p.add_argument(
        "--all-crop-categories", action="store_true", help="categories over all 4 crops (official: the last crop)"
    )
    p.add_argument(
        "--dependent-categories",
        action="store_true",
        help="categories from scores after the dependency rule (official: before it)",
    )
    p.add_argument("--allow-missing", action="store_true", help="score items with both a tile and questions only")
    p.add_argument("--out-jsonl", required=True)
    p.add_argument("--out-json", required=True)
    p.set_defaults(func=cmd_dpg)


def cmd_dpg(args) -> None:
    from arrag.evaluation import dpg
    from arrag.io import write_json, write_jsonl

    questions = dpg.read_questions(args.csv, skip_first_row=not args.keep_first_row)
    vqa = (
        dpg.ShapesVQA()
        if args.vqa == "shapes"
        else dpg.MPLUGVQA(args.mplug_model, device=args.device, revision=args.mplug_revision)
    )
    records = dpg.score_folder(args.tiles, questions, vqa, allow_missing=args.allow_missing)
    summary = dpg.summarise(
        records, last_crop_categories=not args.all_crop_categories, raw_categories=not args.dependent_categories
    )
    summary |= {"vqa": args.vqa, "tiles": str(args.tiles), "csv": str(args.csv)}
    write_jsonl(args.out_jsonl, records)
    write_json(args.out_json, summary)
    print(json.dumps({k: summary[k] for k in ("overall", "categories", "images")}, indent=2))


def add_fidelity(sub) -> None:
    p = sub.add_parser("fidelity", help="Table 3's metrics against real images: FID, CMMD (with a network), FWD")
    p.add_argument("--images", required=True, help="generated images: GenEval-layout folder")
    p.add_argument("--reference", required=True, help="real images: a folder of images or an images .npy")
    p.add_argument("--fid-network", default=None, help="mini:DIR (arrag train-features), inception:FILE, or none")
    p.add_argument("--cmmd-network", default=None, help="clip:WEIGHTS (file or open_clip tag), mini:DIR, or none")
    p.add_argument("--fwd-level", type=COUNT_TYPE, default=4, help="wavelet packet level (paper: 4)")
    p.add_argument("--fwd-size", type=COUNT_TYPE, default=256, help="images resized to this for FWD (paper: 256)")
    p.add_argument("--batch-size", type=COUNT_TYPE, default=64)
    p.add_argument("--device", default="auto")
    _bootstrap_flags(p, "the generated images' prompts")
    p.add_argument("--out-json", default=None)
    p.set_defaults(func=cmd_fidelity)


def cmd_fidelity(args) -> None:
    from arrag.decoding.pipeline import resolve_device
    from arrag.evaluation.features import feature_network
    from arrag.evaluation.fidelity import fidelity_scores
    from arrag.io import write_json

    device = str(resolve_device(args.device))
    result = fidelity_scores(
        args.images,
        args.reference,
        fid_network=(fid_net := feature_network(args.fid_network, device)),
        cmmd_network=fid_net if args.cmmd_network == args.fid_network else feature_network(args.cmmd_network, device),
        fwd_level=args.fwd_level,
        fwd_size=args.fwd_size,
        batch_size=args.batch_size,
        boot=_bootstrap(args),
    )
    if args.out_json:
        write_json(args.out_json, result)
    print(json.dumps({k: result[k] for k in ("fid", "cmmd", "fwd", "images") if k in result}, indent=2))


def add_train_features(sub) -> None:
    p = sub.add_parser("train-features", help="the mini world's feature network for mini-FID / mini-CMMD")
    p.add_argument("--world", required=True, help="directory written by `arrag world`")
    p.add_argument("--split", default="train")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="MiniFeatureConfig field")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train_features)


def cmd_train_features(args) -> None:
    from arrag.data.mini_world import load_split
    from arrag.evaluation.features import MiniFeatureConfig, train_feature_network

    images, records = load_split(Path(args.world) / args.split)
    _, summary = train_feature_network(images, records, parse_overrides(args.set, MiniFeatureConfig), args.out)
    print(json.dumps(summary, indent=2))


def add_table(sub) -> None:
    p = sub.add_parser("table", help="one of the paper's tables as CSV, Markdown and LaTeX (OUT.csv/.md/.tex)")
    p.add_argument("kind", choices=["geneval", "dpg", "fidelity", "inference_time", "over_copying"])
    p.add_argument(
        "--result",
        action="append",
        default=[],
        help="per method: summary JSON (geneval, dpg), fidelity JSON, or GenEval-layout folder (over_copying); "
        "inference_time: the JSON of `arrag bench generate`, one per backbone (Janus's, then Show-o's)",
    )
    p.add_argument("--label", action="append", default=[], help="method name of each --result")
    p.add_argument(
        "--params",
        action="append",
        default=[],
        help="per --result: the generation.json of its images, whose parameter count fills the Params column",
    )
    p.add_argument("--paper-rows", action="store_true", help="add the paper's published rows for reference")
    p.add_argument("--records", action="append", default=[], help="per --result (geneval, dpg): its per-image JSONL")
    _bootstrap_flags(p, "the prompts")
    p.add_argument("--note", default="", help="sentence appended to the caption")
    p.add_argument("--out", required=True, help="output prefix, e.g. results/mini/tables/geneval")
    p.set_defaults(func=cmd_table)


def cmd_table(args) -> None:
    from arrag.evaluation import tables

    spec = tables.TABLES[args.kind]
    if args.kind == "inference_time":
        if not args.result or args.label:
            raise ValueError(
                "the inference_time table takes a --result per backbone, the JSON of `arrag bench generate`, "
                "and no --label (the rows are named after the methods and backbone the JSON records)"
            )
        measured = tables.inference_table_rows([(path, tables.read_summary(path)) for path in args.result])
    else:
        results = _labelled(args.label, args.result, "result")
        measured = {label: tables.measured_row(args.kind, path, label) for label, path in results.items()}
        if args.params:  # the generation.json of each result's images: the Params column
            for label, path in _labelled(args.label, args.params, "params").items():
                measured[label]["params"] = tables.generation_parameters(path)
        if args.records and _bootstrap(args):  # 95% intervals and paired differences, over prompts
            records = _labelled(args.label, args.records, "records")
            tables.record_intervals(args.kind, measured, results, records, _bootstrap(args))
        if args.kind == "fidelity":  # the intervals `arrag fidelity --bootstrap` stored
            tables.fidelity_intervals(measured, results)
    tables.write_table(spec, measured, args.out, note=args.note, paper=args.paper_rows)
    print(Path(args.out).with_suffix(".md").read_text())


def add_sweep_table(sub) -> None:
    p = sub.add_parser("sweep-table", help="a 2-D hyper-parameter sweep's scores: CSV + heatmap")
    p.add_argument("--summary", nargs="+", required=True, help="score records under .../name~value/ folders")
    p.add_argument(
        "--metric",
        choices=["geneval", "fid"],
        default="geneval",
        help="geneval: GenEval summaries' overall; fid: `arrag fidelity` records' FID (the paper's Figure 7)",
    )
    p.add_argument("--records", nargs="+", default=[], help="geneval: each --summary's per-image JSONL, in order")
    _bootstrap_flags(p, "the prompts")
    p.add_argument("--x", required=True, help="parameter across the heatmap")
    p.add_argument("--y", required=True, help="parameter down the heatmap")
    p.add_argument("--title", default="")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=cmd_sweep_table)


def cmd_sweep_table(args) -> None:
    from arrag.evaluation.tables import best_sweep_row, read_summary, write_sweep

    summaries = {path: read_summary(path) for path in args.summary}
    if args.records and len(args.records) != len(args.summary):
        raise ValueError(f"give one --records per --summary, in order ({len(args.records)} for {len(args.summary)})")
    records = dict(zip(args.summary, args.records)) if args.records else None
    rows = write_sweep(
        summaries, args.out_csv, args.out_png, args.x, args.y, args.title, args.metric, records, _bootstrap(args)
    )
    best = best_sweep_row(rows, args.metric)
    print(json.dumps({"runs": len(rows), "best": best}, indent=2))


def add_attribution(sub) -> None:
    p = sub.add_parser("attribution", help="generated images beside the corpus images they copied most from")
    p.add_argument("--images", action="append", required=True, help="GenEval-layout folder with copying.json")
    p.add_argument("--label", action="append", required=True, help="method name of each --images folder")
    p.add_argument("--db", default=None, help="the PatchDatabase: its images through its source table")
    p.add_argument("--source", default=None, help="or: JSON source spec of a one-source corpus (arrag tokenise)")
    p.add_argument("--size", type=COUNT_TYPE, default=32, help="pixel side the corpus images are shown at")
    p.add_argument("--n", type=COUNT_TYPE, default=4, help="images per method: those with the largest copied region")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attribution)


def cmd_attribution(args) -> None:
    from arrag.visualise import attribution_figure, attribution_rows, load_database_images, load_source_images

    if bool(args.source) == bool(args.db):
        raise ValueError("give the retrieval corpus as --db DIR (its source table) or as --source JSON, not both")
    folders = _labelled(args.label, args.images, "images")
    panels = {label: attribution_rows(folder, args.n) for label, folder in folders.items()}
    wanted = {image_id for rows in panels.values() for r in rows for image_id, _ in r["top_sources"]}
    if args.db:
        sources = load_database_images(args.db, wanted, args.size)
    else:
        sources = load_source_images(json.loads(args.source), wanted, args.size)
    print(attribution_figure(panels, sources, args.out))


def add_grid(sub) -> None:
    p = sub.add_parser("grid", help="tile generated images (GenEval layout) with their prompts into one PNG")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-prompts", type=COUNT_TYPE, default=16)
    p.add_argument("--upscale", type=COUNT_TYPE, default=4)
    p.set_defaults(func=cmd_grid)


def cmd_grid(args) -> None:
    from arrag.visualise import sample_grid

    print(sample_grid(args.images, args.out, max_prompts=args.max_prompts, upscale=args.upscale))
