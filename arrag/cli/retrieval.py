"""Retrieval commands: the patch database DAiD and FAiD search (build-db), RA-CM3's image-level index (CLIP
embeddings, build-image-index), and the retrieval accuracy of the paper's Figure 6."""

from __future__ import annotations

import json
import time
from pathlib import Path

from arrag.cli.args import COUNT_TYPE, INDEX_TYPE, clip_args, exclude_arg, model_args, number


def register(sub) -> None:
    for add in (add_build_db, add_embed_images, add_build_image_index, add_retrieval_accuracy):
        add(sub)


def add_embed_images(sub) -> None:
    p = sub.add_parser("embed-images", help="CLIP-embed one shard of an image source (RA-CM3's image retriever)")
    p.add_argument("--source", required=True, help='JSON source spec, e.g. \'{"type": "folder", "path": "imgs/"}\'')
    p.add_argument("--shard", type=INDEX_TYPE, default=0)
    p.add_argument("--num-shards", type=COUNT_TYPE, default=1)
    clip_args(p)
    p.add_argument("--batch-size", type=COUNT_TYPE, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="directory of embedding shards")
    p.set_defaults(func=cmd_embed_images)


def cmd_embed_images(args) -> None:
    from arrag.decoding.pipeline import resolve_device
    from arrag.retrieval.image_index import ClipTextEncoder, embed_image_shard

    encoder = ClipTextEncoder.load(args.clip_model, args.clip_pretrained, resolve_device(args.device), args.clip_sha256)
    meta = embed_image_shard(
        json.loads(args.source), args.shard, args.num_shards, encoder, args.out, batch_size=args.batch_size
    )
    print(json.dumps({k: v for k, v in meta.items() if k != "skipped"} | {"skipped": len(meta["skipped"])}, indent=2))


def add_build_image_index(sub) -> None:
    p = sub.add_parser("build-image-index", help="RA-CM3's image-level retriever over a tokenised corpus")
    model_args(p, help="the backbone whose codebook the code shards use")
    p.add_argument("--codes", nargs="+", required=True, help="code shards (.npz) of the corpus")
    p.add_argument("--embeddings", nargs="+", default=None, help="CLIP embedding shards of the same sources")
    clip_args(p)
    p.add_argument(
        "--captions",
        default=None,
        help="instead of --embeddings, the mini world's caption retriever: "
        "JSONL with one record per source image (image id = line)",
    )
    p.add_argument("--caption-field", default="caption")
    exclude_arg(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_build_image_index)


def cmd_build_image_index(args) -> None:
    from arrag.models.vq import codebook_fingerprint, load_codebook
    from arrag.retrieval.image_index import ClipTextEncoder, ImageLevelIndex

    if args.embeddings:  # the paper's CLIP retriever
        encoder = ClipTextEncoder.load(args.clip_model, args.clip_pretrained, sha256=args.clip_sha256)
        sha = codebook_fingerprint(load_codebook(args.model, args.revision))
        index = ImageLevelIndex.write_from_shards(
            args.codes, args.embeddings, encoder, args.out, sha, model=str(args.model), exclude=args.exclude
        )
        print(json.dumps({k: v for k, v in index.metadata.items() if k != "sources"}, indent=2))
        return
    if not args.captions:
        raise ValueError("give --embeddings (CLIP embedding shards of the corpus) or --captions (the mini world's)")
    sha = codebook_fingerprint(load_codebook(args.model, args.revision))
    index = ImageLevelIndex.from_captions(
        args.codes, args.captions, sha, model=args.model, caption_field=args.caption_field, exclude=args.exclude
    )
    index.save(args.out)
    print(json.dumps(index.metadata | {"encoder": index.encoder.name}, indent=2))


def add_build_db(sub) -> None:
    p = sub.add_parser("build-db", help="build a PatchDatabase from code shards")
    model_args(p, help="the backbone whose codebook the keys use")
    p.add_argument("--codes", nargs="+", required=True, help="code shards (.npz)")
    exclude_arg(p)
    p.add_argument("--hops", type=COUNT_TYPE, default=1)
    p.add_argument("--full", action="store_true", help="full-ring keys (masked models) instead of causal")
    p.add_argument("--index", default="compact")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="index parameter")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_build_db)


def cmd_build_db(args) -> None:
    from arrag.models.vq import load_codebook
    from arrag.retrieval.database import PatchDatabase

    codebook = load_codebook(args.model, args.revision)
    params = {k: number(v) for k, v in (p.split("=", 1) for p in args.param)}
    t0 = time.time()
    db = PatchDatabase.from_code_shards(
        args.codes,
        codebook,
        exclude=args.exclude,
        model=args.model,
        hops=args.hops,
        causal=not args.full,
        index=args.index,
        **params,
    )
    db.save(args.out)
    print(
        json.dumps(
            {
                "entries": len(db),
                "seconds": time.time() - t0,
                "bytes_per_entry": db.bytes_per_entry(),
                "metadata": db.metadata,
            },
            indent=2,
        )
    )


def add_retrieval_accuracy(sub) -> None:
    p = sub.add_parser("retrieval-accuracy", help="paper Figure 6: retrieved vs ground-truth token distances")
    model_args(p)
    p.add_argument("--db", required=True)
    p.add_argument(
        "--queries",
        choices=["heldout", "train"],
        default="heldout",
        help="heldout: --codes of images not in the database; train: FAiD's --trainset (the paper's appendix C.1)",
    )
    p.add_argument("--codes", nargs="+", default=None, help="held-out code shards (--queries heldout)")
    p.add_argument("--trainset", default=None, help="directory of `arrag faid-trainset` (--queries train)")
    p.add_argument("--k", type=COUNT_TYPE, default=10)
    p.add_argument("--max-queries", type=COUNT_TYPE, default=20000)
    p.add_argument("--seed", type=INDEX_TYPE, default=0)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)
    p.add_argument("--out-json", default=None)
    p.set_defaults(func=cmd_retrieval_accuracy)


def cmd_retrieval_accuracy(args) -> None:
    from arrag.data.code_shards import load_code_shards, require_codebook
    from arrag.evaluation import retrieval_accuracy as ra
    from arrag.evaluation.tables import RETRIEVAL_ACCURACY, retrieval_accuracy_rows, write_rows
    from arrag.io import write_json
    from arrag.models.vq import load_codebook
    from arrag.retrieval.database import PatchDatabase

    codebook = load_codebook(args.model, args.revision)
    if args.queries == "train":  # the paper's: FAiD's training set with the candidates retrieved for it
        from arrag.manifest import identity
        from arrag.models.faid_training import load_trainset

        if not args.trainset:
            raise ValueError("--queries train needs --trainset DIR (written by `arrag faid-trainset`)")
        # refuses another database's candidates
        codes, candidates, _, _ = load_trainset(args.trainset, identity(args.db))
        result = ra.trainset_accuracy(codes, candidates, codebook, args.k, args.max_queries, args.seed)
    else:
        if not args.codes:
            raise ValueError("--queries heldout needs --codes SHARDS (held-out images' code shards)")
        db = PatchDatabase.load(args.db, codebook=codebook)
        codes, _, metas = load_code_shards(args.codes)
        require_codebook(args.codes, metas, db.codebook_sha256, args.model)
        result = ra.retrieval_accuracy(db, codes, codebook, k=args.k, max_queries=args.max_queries, seed=args.seed)
    note = f"Queries: {result['queries']} positions of {ra.QUERY_SETS[args.queries]}."
    write_rows(RETRIEVAL_ACCURACY, retrieval_accuracy_rows(result), Path(args.out_csv).with_suffix(""), note)
    ra.plot_accuracy(result, args.out_png)
    if args.out_json:
        write_json(args.out_json, result)
    print(json.dumps(result, indent=2))
