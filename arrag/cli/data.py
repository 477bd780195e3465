"""Data commands: the mini world and its prompt sets, tokenising and hashing image sources, the contamination
check, benchmark prompt records, the rehearsal's stand-in downloads, and verifying artefacts."""

from __future__ import annotations

import json
from pathlib import Path

from arrag.cli.args import COUNT_TYPE, INDEX_TYPE, model_args
from arrag.validation import FRACTION, cli_number


def register(sub) -> None:
    for add in (
        add_world,
        add_mini_dpg,
        add_dpg_prompts,
        add_mjhq_prompts,
        add_tokenise,
        add_hash_images,
        add_contamination,
        add_rehearsal_mirror,
        add_verify,
    ):
        add(sub)


def add_world(sub) -> None:
    p = sub.add_parser("world", help="render the mini world's splits and GenEval-schema prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=COUNT_TYPE, default=32)
    p.add_argument("--seed", type=INDEX_TYPE, default=0)
    p.add_argument("--split", action="append", default=[], metavar="NAME=COUNT")
    p.add_argument("--underrepresented", action="append", default=[], metavar="COLOUR:SHAPE")
    p.add_argument("--keep-fraction", type=cli_number(float, **FRACTION), default=0.05)
    p.add_argument("--geneval-prompts", type=COUNT_TYPE, default=180)
    p.add_argument(
        "--background",
        action="append",
        default=None,
        metavar="NAME",
        help="background kind to draw from (repeat for several; default: all of plain, noise, stripes, checker)",
    )
    p.add_argument(
        "--snap",
        type=int,
        default=1,
        help="shape boxes' corners and sides on multiples of this many px (the VQ patch size: every edge then sits "
        "at the same place inside its patch); 1 = anywhere",
    )
    p.add_argument(
        "--tones",
        type=int,
        default=0,
        help="background tones: N > 0 draws one of N untinted greys; 0 = any tinted tone of the range",
    )
    p.add_argument(
        "--coloured-captions",
        type=float,
        default=0.0,
        help="probability that a caption is the template naming the colours (where the scene has one), before the "
        "uniform pick among all templates; 0 = uniform",
    )
    p.set_defaults(func=cmd_world)


def cmd_world(args) -> None:
    from arrag.data.mini_world import BACKGROUNDS, write_world

    splits = {}
    for item in args.split:
        name, _, count = item.partition("=")
        if not count.isdigit():
            raise SystemExit(f"error: --split {item!r}: expected NAME=COUNT, e.g. corpus=20000")
        splits[name] = int(count)
    under = []
    for item in args.underrepresented:
        colour, _, shape = item.partition(":")
        under.append((colour, shape))
    write_world(
        args.out,
        size=args.size,
        seed=args.seed,
        splits=splits,
        underrepresented=under,
        keep_fraction=args.keep_fraction,
        n_geneval_prompts=args.geneval_prompts,
        backgrounds=args.background or BACKGROUNDS,
        snap=args.snap,
        tones=args.tones,
        coloured=args.coloured_captions,
    )


def add_tokenise(sub) -> None:
    p = sub.add_parser("tokenise", help="encode one shard of an image source into a code shard")
    model_args(p)
    p.add_argument("--source", required=True, help='JSON source spec, e.g. \'{"type": "folder", "path": "imgs/"}\'')
    p.add_argument("--shard", type=INDEX_TYPE, default=0)
    p.add_argument("--num-shards", type=COUNT_TYPE, default=1)
    p.add_argument("--out", required=True, help="directory of code shards")
    p.add_argument("--batch-size", type=COUNT_TYPE, default=256)
    p.add_argument("--tokenizer-id", default=None, help="recorded in the shard (default: --model)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_tokenise)


def cmd_tokenise(args) -> None:
    from arrag.data.code_shards import tokenise_shard
    from arrag.decoding.pipeline import resolve_device
    from arrag.models.backbone import load_backbone

    source = json.loads(args.source)
    backbone = load_backbone(args.model, revision=args.revision, device=resolve_device(args.device))
    summary = tokenise_shard(
        source,
        args.shard,
        args.num_shards,
        backbone.vq,
        args.out,
        batch_size=args.batch_size,
        tokenizer_id=args.tokenizer_id or str(args.model),
    )
    print(json.dumps(summary, indent=2))


def add_hash_images(sub) -> None:
    p = sub.add_parser("hash-images", help="hash one shard of an image source (the contamination check)")
    model_args(p, help="the backbone (or a Janus VQ-VAE folder): images are hashed at its tokenizer's size")
    p.add_argument("--source", required=True, help="JSON source spec, as for `arrag tokenise`")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="directory of hash shards")
    p.set_defaults(func=cmd_hash_images)


def cmd_hash_images(args) -> None:
    from arrag.data.contamination import hash_source_shard
    from arrag.models.vq import janus_image_size

    size = janus_image_size(args.model, revision=args.revision)
    meta = hash_source_shard(json.loads(args.source), args.shard, args.num_shards, size, args.out, args.batch_size)
    print(json.dumps({k: v for k, v in meta.items() if k != "skipped"} | {"skipped": len(meta["skipped"])}, indent=2))


def add_contamination(sub) -> None:
    p = sub.add_parser("contamination", help="find benchmark images in the corpora and pairs: exclusion list + table")
    for option, what in (("--reference", "an evaluation reference set"), ("--source", "a corpus or pairs source")):
        p.add_argument(option, nargs="+", action="append", required=True, metavar="NAME SHARD", help=what)
    p.add_argument("--phash-bits", type=int, default=14, help="near duplicate: pHash Hamming distance <= this ...")
    p.add_argument("--thumbnail-rms", type=float, default=6.0, help="... and 8x8 thumbnails' RMS <= this (grey levels)")
    p.add_argument("--out", required=True, help="the exclusion list (JSON)")
    p.add_argument("--table", required=True, help="the table's prefix: PREFIX.csv, .md, .tex")
    p.set_defaults(func=cmd_contamination)


def cmd_contamination(args) -> None:
    from arrag.data.contamination import Thresholds, find_contamination
    from arrag.evaluation.tables import write_contamination_table
    from arrag.io import write_json

    def named(groups: list[list[str]], option: str) -> dict[str, list[str]]:
        if any(len(g) < 2 for g in groups) or len({g[0] for g in groups}) < len(groups):
            raise ValueError(f"{option} takes a distinct NAME and its hash shards, e.g. {option} corpus h0.npz h1.npz")
        return {g[0]: g[1:] for g in groups}

    thresholds = Thresholds(args.phash_bits, args.thumbnail_rms)
    result = find_contamination(named(args.reference, "--reference"), named(args.source, "--source"), thresholds)
    write_json(args.out, result)
    write_contamination_table(result, args.table)
    print(Path(args.table).with_suffix(".md").read_text())


def add_mini_dpg(sub) -> None:
    p = sub.add_parser("mini-dpg", help="a DPG-Bench-style prompt set and question CSV from the mini world")
    p.add_argument("--world", required=True, help="directory written by `arrag world` (uses its reference split)")
    p.add_argument("--n", type=COUNT_TYPE, default=200, help="prompts (distinct reference captions)")
    p.add_argument("--seed", type=INDEX_TYPE, default=0)
    p.add_argument("--out", required=True, help="folder: prompts/<id>.txt + dpg_bench.csv")
    p.set_defaults(func=cmd_mini_dpg)


def cmd_mini_dpg(args) -> None:
    from arrag.data.mini_dpg import write_mini_dpg

    write_mini_dpg(args.world, args.out, n=args.n, seed=args.seed)
    print(f"mini-DPG: {args.n} prompts and their questions -> {args.out}")


def add_dpg_prompts(sub) -> None:
    p = sub.add_parser("dpg-prompts", help="DPG-Bench prompt files -> JSONL records for generate-benchmark")
    p.add_argument("--prompts-dir", default=None, help="folder of <id>.txt (default: the vendored 1065)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dpg_prompts)


def cmd_dpg_prompts(args) -> None:
    from arrag.evaluation.dpg import dpg_prompts, prompt_records
    from arrag.io import write_jsonl

    records = prompt_records(dpg_prompts(args.prompts_dir))  # default: the 1065 vendored prompts
    write_jsonl(args.out, records)
    print(f"{len(records)} DPG-Bench prompts -> {args.out}")


def add_mjhq_prompts(sub) -> None:
    p = sub.add_parser("mjhq-prompts", help="MJHQ-30K prompt records (and their real images, for the metrics)")
    p.add_argument("--dataset", required=True, help="folder written by `arrag download mjhq`")
    p.add_argument("--category", action="append", default=[], help="keep these categories (default: all 10)")
    p.add_argument("--limit", type=COUNT_TYPE, default=None, help="first N prompts in id order")
    p.add_argument("--out-prompts", required=True, help="JSONL for `arrag generate-benchmark`")
    p.add_argument("--out-reference", default=None, help="folder for the real images of those prompts")
    p.set_defaults(func=cmd_mjhq_prompts)


def cmd_mjhq_prompts(args) -> None:
    from arrag.data.mjhq import extract_reference, mjhq_records
    from arrag.io import write_jsonl

    records = mjhq_records(Path(args.dataset) / "meta_data.json", args.category or None, args.limit)
    if args.out_reference:  # first: a failed extraction leaves the old prompts with their old images
        extract_reference(Path(args.dataset) / "mjhq30k_imgs.zip", records, args.out_reference)
    write_jsonl(args.out_prompts, records)
    print(f"{len(records)} MJHQ-30K prompts -> {args.out_prompts}")


def add_rehearsal_mirror(sub) -> None:
    p = sub.add_parser("rehearsal", help="the paper path rehearsed on a CPU: stand-in downloads")
    p = p.add_subparsers(dest="rehearsal", required=True).add_parser(
        "mirror", help="a downloads.mirror folder of stand-ins (random-weight Janus-Pro-1B, 384 px tars, parquet, MJHQ)"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--cc12m", type=int, default=64, help="images in the CC12M-shaped tars")
    p.add_argument("--cc12m-per-tar", type=int, default=16)
    p.add_argument("--midjourney", type=int, default=32, help="images in the midjourney-v6-llava-shaped parquet")
    p.add_argument("--mjhq", type=int, default=20, help="images in the MJHQ-30K-shaped zip")
    p.add_argument("--depth", type=int, default=2, help="layers of the language model and SigLIP (Janus-Pro-1B: 24)")
    p.add_argument("--toy", action="store_true", help="narrow widths (same 384 px, 24 x 24, 16384 x 8): tests")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model of RA-CM3's retriever ('' for none)")
    p.set_defaults(func=cmd_rehearsal_mirror)


def cmd_rehearsal_mirror(args) -> None:
    from arrag.rehearsal import build_mirror

    sizes = dict(cc12m=args.cc12m, cc12m_per_tar=args.cc12m_per_tar, midjourney=args.midjourney, mjhq=args.mjhq)
    summary = build_mirror(args.out, **sizes, depth=args.depth, toy=args.toy, clip_model=args.clip_model or None)
    print(json.dumps(summary, indent=2))


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check every byte of artefacts against their manifests (arrag.manifest)")
    p.add_argument("path", help="an artefact directory (database, model, index, FAiD...), a shard, or a shard folder")
    p.add_argument("--seal", metavar="KIND", help="instead: write a manifest of KIND (e.g. janus-model) for PATH")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args) -> None:
    from arrag.manifest import seal, verify_path

    if args.seal:
        print(json.dumps(seal(args.path, args.seal), indent=2))
        return
    for result in verify_path(args.path):
        print(json.dumps(result))
