"""Show-o commands: train the mini Show-o (its MAGVIT-v2 tokenizer, then its LM) into a backbone folder, or
assemble one from downloaded snapshots (showlab/show-o, showlab/magvitv2, Phi-1.5's tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

from arrag.cli.args import parse_overrides, restart_arg


def register(sub) -> None:
    p = sub.add_parser("train-showo", help="train the mini Show-o (MAGVIT-v2 tokenizer + Phi LM) on a world split")
    p.add_argument("--world", required=True, help="directory written by `arrag world`")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="the Show-o backbone folder (showo/ + magvitv2/)")
    p.add_argument("--spec", action="append", default=[], metavar="KEY=VALUE", help="MiniShowoSpec field")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ShowoTrainingConfig field")
    restart_arg(p)
    p.set_defaults(func=cmd_train_showo)
    p = sub.add_parser("assemble-showo", help="a Show-o backbone folder naming downloaded parts (backbone.json)")
    p.add_argument("--showo", required=True, help="showlab/show-o snapshot (arrag download model)")
    p.add_argument("--magvitv2", required=True, help="showlab/magvitv2 snapshot")
    p.add_argument("--tokenizer", required=True, help="microsoft/phi-1_5 snapshot (its tokenizer files)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_assemble_showo)


def cmd_train_showo(args) -> None:
    from arrag.data.mini_world import caption_vocabulary, load_split
    from arrag.models.showo_training import MiniShowoSpec, ShowoTrainingConfig, train_showo

    spec, cfg = parse_overrides(args.spec, MiniShowoSpec), parse_overrides(args.set, ShowoTrainingConfig)
    images, records = load_split(Path(args.world) / args.split)
    captions = [r["caption"] for r in records]
    stats = train_showo(images, captions, caption_vocabulary(), spec, cfg, args.out, restart=args.restart)
    print(
        json.dumps(
            {k: {n: v for n, v in s.items() if n != "log"} if isinstance(s, dict) else s for k, s in stats.items()},
            indent=2,
        )
    )


def cmd_assemble_showo(args) -> None:
    from arrag.models.backbone import assemble_showo, load_backbone

    assemble_showo(Path(args.showo), Path(args.magvitv2), Path(args.tokenizer), Path(args.out))
    backbone = load_backbone(args.out)  # every part checked now, not at the first generating job
    print(json.dumps({"out": args.out, "grid": backbone.vq.grid, "codebook_size": backbone.vq.codebook_size}))
