"""Training commands: the mini Janus (VQ-VAE, generation path), FAiD (its training set, then its modules) and
the RA-CM3 baseline."""

from __future__ import annotations

import json
from pathlib import Path

from arrag.cli.args import COUNT_TYPE, db_devices_arg, model_args, pair_source, pairs_args, parse_overrides, restart_arg


def register(sub) -> None:
    for add in (add_train_vq_and_base, add_faid_trainset, add_train_faid, add_train_racm3):
        add(sub)


def add_train_vq_and_base(sub) -> None:
    for name, func, helptext in [
        ("train-vq", cmd_train_vq, "train the mini Janus VQ-VAE"),
        ("train-base", cmd_train_base, "train the mini Janus generation path"),
    ]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--world", required=True, help="directory written by `arrag world`")
        p.add_argument("--split", default="train")
        p.add_argument("--out", required=True)
        p.add_argument("--spec", action="append", default=[], metavar="KEY=VALUE", help="MiniJanusSpec field")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training setting")
        if name == "train-base":
            p.add_argument("--vq", required=True, help="directory written by `arrag train-vq`")
        restart_arg(p)
        p.set_defaults(func=func)


def cmd_train_vq(args) -> None:
    from arrag.data.mini_world import load_split
    from arrag.models.janus import MiniJanusSpec
    from arrag.models.vq_training import VQTrainingConfig, train_vq

    spec, cfg = parse_overrides(args.spec, MiniJanusSpec), parse_overrides(args.set, VQTrainingConfig)  # checked first
    images, _ = load_split(Path(args.world) / args.split)
    stats = train_vq(images, spec, cfg, args.out, restart=args.restart)
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))


def cmd_train_base(args) -> None:
    from arrag.data.mini_world import caption_vocabulary, load_split
    from arrag.models.janus import MiniJanusSpec
    from arrag.models.training import BaseTrainingConfig, train_base_model

    spec, cfg = parse_overrides(args.spec, MiniJanusSpec), parse_overrides(args.set, BaseTrainingConfig)
    images, records = load_split(Path(args.world) / args.split)
    captions = [r["caption"] for r in records]
    stats = train_base_model(images, captions, caption_vocabulary(), spec, args.vq, cfg, args.out, args.restart)
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))


def add_faid_trainset(sub) -> None:
    p = sub.add_parser("faid-trainset", help="FAiD's training set: each position's candidates from the database")
    model_args(p, help="the base model")
    p.add_argument("--db", required=True, help="PatchDatabase directory (arrag build-db)")
    pairs_args(p)
    p.add_argument(
        "--k", type=COUNT_TYPE, default=10, help="candidates stored per position (training uses the first k)"
    )
    db_devices_arg(p)
    p.add_argument(
        "--exclude-self",
        action="store_true",
        help="the split is the database's own source: drop each image's own entries from its candidates",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_faid_trainset)


def cmd_faid_trainset(args) -> None:
    from arrag.data.pairs import fine_tuning_pairs, refuse_shared_sources
    from arrag.decoding.pipeline import resolve_device
    from arrag.methods import load_database
    from arrag.models.backbone import load_backbone
    from arrag.models.faid_training import build_trainset
    from arrag.models.vq import codebook_fingerprint

    if args.exclude_self and not args.world:
        raise ValueError("--exclude-self needs --world: code shards' image ids are not the database's")
    device = resolve_device(args.device)
    backbone = load_backbone(args.model, revision=args.revision, device=device)  # Janus or Show-o
    vq = backbone.vq
    db = load_database(args.db, vq.codebook, device, args.db_devices)
    codes, captions, pair_sources, codes_codebook, positions = fine_tuning_pairs(pair_source(args), lambda: vq)
    if codes_codebook != codebook_fingerprint(vq.codebook):
        raise ValueError(f"the fine-tuning codes were tokenised with another codebook than {args.model}; re-tokenise")
    refuse_shared_sources(pair_sources, db.sources, f"the database {args.db}")
    # --exclude-self: the split is the database's own source, image id = position in the split
    image_ids = positions if args.exclude_self else None
    summary = build_trainset(backbone.model, db, codes, captions, args.k, args.out, image_ids, vq=vq)
    print(json.dumps(summary, indent=2))


def add_train_faid(sub) -> None:
    p = sub.add_parser("train-faid", help="train FAiD's parameters (backbone frozen); `accelerate launch` for GPUs")
    model_args(p, help="the base model directory")
    p.add_argument("--trainset", required=True, help="directory written by `arrag faid-trainset`")
    p.add_argument("--db", default=None, help="refuse a training set built from another database than this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FAiDTrainingConfig field")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is visible")
    p.add_argument("--out", required=True)
    restart_arg(p)
    p.set_defaults(func=cmd_train_faid)


def cmd_train_faid(args) -> None:
    from arrag.manifest import identity
    from arrag.models.backbone import is_showo
    from arrag.models.faid_training import FAiDTrainingConfig, train_faid

    # only to refuse a training set built from another database: its identity, not its index
    db = identity(args.db) if args.db else None
    cfg = parse_overrides(args.set, FAiDTrainingConfig)
    if is_showo(args.model):  # modules in every layer, Show-o's masked-token objective (one process)
        from arrag.models.showo_faid import train_showo_faid

        stats = train_showo_faid(args.model, args.trainset, cfg, args.out, db=db, restart=args.restart)
        print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))
        return
    stats = train_faid(args.model, args.trainset, cfg, args.out, db=db, cpu=args.cpu, restart=args.restart)
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))


def add_train_racm3(sub) -> None:
    p = sub.add_parser("train-racm3", help="fine-tune the RA-CM3 baseline (reference image prefix)")
    model_args(p, help="the base model directory")
    pairs_args(p)
    p.add_argument("--image-index", required=True, help="directory written by `arrag build-image-index`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="RACM3TrainingConfig field")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    restart_arg(p)
    p.set_defaults(func=cmd_train_racm3)


def cmd_train_racm3(args) -> None:
    from arrag.baselines.racm3 import RACM3TrainingConfig, train_racm3
    from arrag.data.pairs import fine_tuning_pairs, refuse_shared_sources
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer
    from arrag.retrieval.image_index import ImageLevelIndex

    def vq_of():  # only a mini-world split is tokenised here; code shards are read as they are
        return VQTokenizer.from_janus(load_janus(args.model, revision=args.revision)[0])

    codes, captions, pair_sources, codes_codebook, _ = fine_tuning_pairs(pair_source(args), vq_of)
    index = ImageLevelIndex.load(args.image_index)  # train_racm3 moves its query encoder to each process' device
    refuse_shared_sources(pair_sources, index.sources, f"the image index {args.image_index}")
    stats = train_racm3(
        args.model,
        codes,
        captions,
        index,
        parse_overrides(args.set, RACM3TrainingConfig),
        args.out,
        device=args.device,
        codes_codebook_sha256=codes_codebook,
        restart=args.restart,
    )
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))
