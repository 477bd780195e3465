"""Generation commands: images for your own prompts (generate) and for prompt sets in GenEval's folder layout
(generate-benchmark, one job or shards finished by finish-benchmark), with any method of arrag.methods."""

from __future__ import annotations

import json
import time
from pathlib import Path

from arrag.cli.args import COUNT_TYPE, INDEX_TYPE, method_args, method_settings, model_args, sampling, sampling_args


def register(sub) -> None:
    for add in (add_generate, add_generate_benchmark, add_finish_benchmark):
        add(sub)


def built_method(args):
    """--method built over --model; its hooks record every step's hits, for the over-copying measurement."""
    from arrag.methods import build_method

    settings = method_settings(args)
    return build_method(
        settings, args.model, revision=args.revision, device=args.device, db_devices=args.db_devices, record=True
    )


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate images for your own prompts")
    model_args(p)
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--n", type=COUNT_TYPE, default=4, help="images per prompt")
    p.add_argument("--out", required=True)
    sampling_args(p)
    method_args(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> None:
    from PIL import Image

    from arrag.io import check_output_path

    check_output_path(args.out)  # now, not after every image is made
    method = built_method(args)
    images, _ = method.pipe(
        args.prompt,
        n=args.n,
        sampling=sampling(args),
        seed=args.seed,
        batch_size=args.batch_size,
        hooks=method.make_hooks(),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        p, s = divmod(i, args.n)
        path = out / f"prompt{p:03d}_{s:02d}.png"
        Image.fromarray(image).save(path)
        print(path)


def add_generate_benchmark(sub) -> None:
    p = sub.add_parser("generate-benchmark", help="generate a prompt set into GenEval's folder layout (resumable)")
    model_args(p)
    p.add_argument("--prompts", required=True, help="JSONL of prompt records (GenEval metadata or split metadata)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--limit", type=COUNT_TYPE, default=None, help="use the first N records only")
    p.add_argument("--n", type=COUNT_TYPE, default=4)
    p.add_argument("--out", required=True)
    sampling_args(p)
    method_args(p)
    p.add_argument("--shard", type=INDEX_TYPE, default=0, help="make only prompts with index %% num-shards == shard")
    p.add_argument(
        "--num-shards",
        type=COUNT_TYPE,
        default=None,
        help="shards of this prompt set run as separate jobs; each marks itself done in OUT/shards/ and "
        "`arrag finish-benchmark` writes generation.json (without it: one job, generation.json at once)",
    )
    p.set_defaults(func=cmd_generate_benchmark)


def cmd_generate_benchmark(args) -> None:
    from arrag.data.geneval_layout import finish_output, shard_marker
    from arrag.decoding.pipeline import generate_prompt_set, method_parameters
    from arrag.io import read_jsonl, write_json

    records = read_jsonl(args.prompts)[: args.limit]  # --limit: the first N (None: all)
    method = built_method(args)
    hooks = method.make_hooks()
    t0 = time.time()
    summary = generate_prompt_set(
        method.pipe,
        records,
        args.out,
        n=args.n,
        sampling=sampling(args),
        seed=args.seed,
        batch_size=args.batch_size,
        prompt_field=args.prompt_field,
        hooks=hooks,
        settings=method.record(),
        shard=args.shard,
        num_shards=args.num_shards or 1,
    )
    summary["seconds"] = time.time() - t0
    summary["parameters"] = method_parameters(method.pipe.model, hooks)  # the tables' Params column
    if args.num_shards is None:  # generation.json last; a staged run replaces the old images only now
        finish_output(args.out, summary)
    else:  # this shard is done; `arrag finish-benchmark` checks the whole folder and writes generation.json
        write_json(shard_marker(args.out, args.shard, args.num_shards), summary)
    print(json.dumps(summary, indent=2))


def add_finish_benchmark(sub) -> None:
    p = sub.add_parser("finish-benchmark", help="after all shards: check the prompt-set folder, write generation.json")
    p.add_argument("--prompts", required=True)
    p.add_argument("--limit", type=COUNT_TYPE, default=None)
    p.add_argument("--n", type=COUNT_TYPE, required=True, help="images per prompt")
    p.add_argument("--num-shards", type=COUNT_TYPE, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_finish_benchmark)


def cmd_finish_benchmark(args) -> None:
    """After every shard of a prompt set: check the folder is complete, then write generation.json."""
    from arrag.data.geneval_layout import finish_prompt_set
    from arrag.io import read_jsonl

    records = read_jsonl(args.prompts)[: args.limit]  # --limit: the first N (None: all)
    summary = finish_prompt_set(args.out, records, args.n, args.num_shards, prompts=args.prompts)
    print(json.dumps(summary, indent=2))
