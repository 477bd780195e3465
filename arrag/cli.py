"""`arrag` command line: a thin shell over library functions. Each Snakemake rule runs one subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def parse_overrides(pairs: list[str], cls):
    """`key=value` strings -> an instance of dataclass `cls`, values converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(
                f"error: bad setting {pair!r} for {cls.__name__}; expected key=value with key in {sorted(fields)}"
            )
        default = fields[key].default
        kind = type(default) if default is not None and default is not dataclasses.MISSING else str
        try:
            values[key] = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
        except ValueError:
            raise SystemExit(f"error: {cls.__name__}.{key} must be a {kind.__name__}, got {raw!r}") from None
    return cls(**values)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="run seed; each image's seed derives from it and its prompt")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")


def _sampling(args):
    from arrag.decoding.loop import SamplingConfig

    return SamplingConfig(
        guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k, greedy=args.greedy
    )


def cmd_world(args) -> None:
    from arrag.data.mini_world import write_world

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
    )


def cmd_train_vq(args) -> None:
    from arrag.data.mini_world import load_split
    from arrag.models.janus import MiniJanusSpec
    from arrag.models.training import VQTrainingConfig, train_vq

    images, _ = load_split(Path(args.world) / args.split)
    stats = train_vq(
        images, parse_overrides(args.spec, MiniJanusSpec), parse_overrides(args.set, VQTrainingConfig), args.out
    )
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))


def cmd_train_base(args) -> None:
    from arrag.data.mini_world import caption_vocabulary, load_split
    from arrag.models.janus import MiniJanusSpec
    from arrag.models.training import BaseTrainingConfig, train_base_model

    images, records = load_split(Path(args.world) / args.split)
    stats = train_base_model(
        images,
        [r["caption"] for r in records],
        caption_vocabulary(),
        parse_overrides(args.spec, MiniJanusSpec),
        args.vq,
        parse_overrides(args.set, BaseTrainingConfig),
        args.out,
    )
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))


def cmd_generate(args) -> None:
    from PIL import Image

    from arrag.decoding.pipeline import ImageGenerationPipeline

    pipe = ImageGenerationPipeline.from_pretrained(args.model, revision=args.revision, device=args.device)
    images, _ = pipe(args.prompt, n=args.n, sampling=_sampling(args), seed=args.seed, batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        p, s = divmod(i, args.n)
        path = out / f"prompt{p:03d}_{s:02d}.png"
        Image.fromarray(image).save(path)
        print(path)


def cmd_generate_benchmark(args) -> None:
    from arrag.decoding.pipeline import ImageGenerationPipeline, generate_prompt_set
    from arrag.io import read_jsonl, write_json

    records = read_jsonl(args.prompts)[: args.limit] if args.limit else read_jsonl(args.prompts)
    pipe = ImageGenerationPipeline.from_pretrained(args.model, revision=args.revision, device=args.device)
    t0 = time.time()
    summary = generate_prompt_set(
        pipe,
        records,
        args.out,
        n=args.n,
        sampling=_sampling(args),
        seed=args.seed,
        batch_size=args.batch_size,
        prompt_field=args.prompt_field,
        settings={"model": str(args.model), "method": "vanilla"},
    )
    summary["seconds"] = time.time() - t0
    write_json(Path(args.out) / "generation.json", summary)  # written last: marks the folder complete
    print(json.dumps(summary, indent=2))


def cmd_grid(args) -> None:
    from arrag.visualise import sample_grid

    print(sample_grid(args.images, args.out, max_prompts=args.max_prompts, upscale=args.upscale))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="render the mini world's splits and GenEval-schema prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", action="append", default=[], metavar="NAME=COUNT")
    p.add_argument("--underrepresented", action="append", default=[], metavar="COLOUR:SHAPE")
    p.add_argument("--keep-fraction", type=float, default=0.05)
    p.add_argument("--geneval-prompts", type=int, default=180)
    p.set_defaults(func=cmd_world)

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
        p.set_defaults(func=func)

    p = sub.add_parser("generate", help="generate images for your own prompts")
    p.add_argument("--model", required=True, help="model directory (save_pretrained) or hub id with --revision")
    p.add_argument("--revision", default=None)
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--out", required=True)
    _sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("generate-benchmark", help="generate a prompt set into GenEval's folder layout (resumable)")
    p.add_argument("--model", required=True)
    p.add_argument("--revision", default=None)
    p.add_argument("--prompts", required=True, help="JSONL of prompt records (GenEval metadata or split metadata)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--limit", type=int, default=None, help="use the first N records only")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--out", required=True)
    _sampling_args(p)
    p.set_defaults(func=cmd_generate_benchmark)

    p = sub.add_parser("grid", help="tile generated images (GenEval layout) with their prompts into one PNG")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-prompts", type=int, default=16)
    p.add_argument("--upscale", type=int, default=4)
    p.set_defaults(func=cmd_grid)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"arrag {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
