"""`arrag` command line: a thin shell over library functions. Each Snakemake rule runs one subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from arrag.validation import COUNT, FRACTION, INDEX, POSITIVE, cli_number

_COUNT = cli_number(int, **COUNT)  # argparse types: counts >= 1, indices >= 0 (seeds, shards)
_INDEX = cli_number(int, **INDEX)


def parse_overrides(pairs: list[str], cls):
    """`key=value` strings -> an instance of dataclass `cls`, values converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(
                f"error: bad setting {pair!r} for {cls.__name__}; expected key=value with key in {sorted(fields)}"
            )
        kinds = [t for t in typing.get_args(hints[key]) or (hints[key],) if t is not type(None)]
        if raw in ("None", "null") and type(None) in typing.get_args(hints[key]):
            values[key] = None  # an optional field left unset (YAML null)
            continue
        default = fields[key].default
        if len(kinds) == 1 and kinds[0] in (int, float, str, bool):
            kind = kinds[0]
        else:
            kind = type(default) if default is not None and default is not dataclasses.MISSING else str
        try:
            values[key] = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
        except ValueError:
            raise SystemExit(f"error: {cls.__name__}.{key} must be a {kind.__name__}, got {raw!r}") from None
    return cls(**values)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--guidance-scale", type=cli_number(float, low=1), default=5.0, help="classifier-free guidance scale (1 = off)"
    )
    p.add_argument("--temperature", type=cli_number(float, **POSITIVE), default=1.0)
    p.add_argument("--top-k", type=_COUNT, default=None)
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--seed", type=_INDEX, default=0, help="run seed; each image's seed derives from it and its prompt")
    p.add_argument("--batch-size", type=_COUNT, default=32, help="images decoded together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")


def _restart_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true", help="discard a checkpoint (<out>.partial/) and start over")


def _model_args(p: argparse.ArgumentParser, help: str = "model directory (save_pretrained) or hub id") -> None:
    p.add_argument("--model", required=True, help=help)
    p.add_argument("--revision", default=None, help="pinned hub revision (commit) when --model is a hub id")


def _db_devices_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db-devices",
        default=None,
        help="shard a torch_compact database's entries over these devices, e.g. cuda:0,cuda:1 (default: the model's)",
    )


def _daid_args(p: argparse.ArgumentParser) -> None:
    _db_devices_arg(p)
    p.add_argument("--daid-k", type=_COUNT, default=10, help="retrieved patches per step")
    p.add_argument(
        "--daid-weight",
        type=cli_number(float, **FRACTION),
        default=0.1,
        help="lambda: weight of the retrieval distribution",
    )
    p.add_argument(
        "--daid-temperature", type=cli_number(float, **POSITIVE), default=1.0, help="tau: retrieval softmax temperature"
    )
    p.add_argument("--daid-unique", action="store_true", help="keep only the closest hit of each token")


def _method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=["vanilla", "daid", "faid", "racm3"],
        default="vanilla",
        help="racm3: --model must be an RA-CM3 model (arrag train-racm3) and --image-index its retriever",
    )
    p.add_argument("--db", default=None, help="PatchDatabase directory (arrag build-db), for daid and faid")
    p.add_argument("--faid", default=None, help="FAiD checkpoint (arrag train-faid) of --model, for --method faid")
    p.add_argument("--image-index", default=None, help="image-level index (arrag build-image-index), for racm3")
    _daid_args(p)


def _pipeline(args):
    """The generation pipeline for --method: RA-CM3's retrieves a reference image per prompt."""
    from arrag.decoding.pipeline import ImageGenerationPipeline

    if args.method != "racm3":
        return ImageGenerationPipeline.from_pretrained(args.model, revision=args.revision, device=args.device)
    from arrag.baselines.racm3 import RACM3Pipeline

    if not args.image_index:
        raise ValueError("--method racm3 needs --image-index DIR (built with `arrag build-image-index`)")
    return RACM3Pipeline.from_pretrained(args.model, args.image_index, revision=args.revision, device=args.device)


def _load_db(args, device, codebook):
    """--db on `device`; with --db-devices its entries sharded over those devices."""
    from arrag.retrieval.database import PatchDatabase

    db = PatchDatabase.load(args.db, codebook=codebook, device=str(device))
    if args.db_devices:
        if db.index_name != "torch_compact":
            raise ValueError(f"--db-devices shards a torch_compact database; {args.db} is {db.index_name!r}")
        db.set_search_params(devices=args.db_devices)
    return db


def _daid_factory(args, pipe, record: bool = False):
    """A function making fresh DAiD hooks over --db with the --daid-* settings (database loaded once)."""
    from arrag.decoding.daid import DAiD
    from arrag.models.vq import VQTokenizer

    codebook = VQTokenizer.from_janus(pipe.model).codebook
    db = _load_db(args, pipe.device, codebook)
    settings = dict(
        k=args.daid_k,
        weight=args.daid_weight,
        temperature=args.daid_temperature,
        unique=args.daid_unique,
        record=record,
    )
    return lambda: [DAiD(db, codebook, **settings)]


def _faid_factory(args, pipe, record: bool = False):
    """Attach the --faid checkpoint's modules to pipe.model; return a function making fresh FAiD hooks."""
    from arrag.models.faid import FAiDHook
    from arrag.models.faid_training import load_faid
    from arrag.models.vq import VQTokenizer

    if not args.faid:
        raise ValueError("--method faid needs --faid DIR (a checkpoint written by `arrag train-faid`)")
    codebook = VQTokenizer.from_janus(pipe.model).codebook
    db = _load_db(args, pipe.device, codebook)
    faid = load_faid(args.faid, pipe.model, device=pipe.device, db=db).eval()
    faid.attach(pipe.model)
    return lambda: [FAiDHook(db, codebook, faid, record=record)]


def _hooks(args, pipe) -> list:
    """Decoding hooks for --method: none for vanilla, DAiD or FAiD hooks over --db for daid and faid."""
    if args.method in ("vanilla", "racm3"):  # RA-CM3 retrieves inside its pipeline, not through a hook
        return []
    if not args.db:
        raise ValueError(f"--method {args.method} needs --db DIR (a PatchDatabase built with `arrag build-db`)")
    if args.method == "faid":
        return _faid_factory(args, pipe, record=True)()
    # record: hits of every step, for the over-copying measurement (copying.json per prompt)
    return _daid_factory(args, pipe, record=True)()


def _method_settings(args) -> dict:
    if args.method == "vanilla":
        return {"method": "vanilla"}
    if args.method == "racm3":
        return {"method": "racm3", "image_index": str(args.image_index)}
    if args.method == "faid":
        return {"method": "faid", "db": str(args.db), "faid": str(args.faid)}
    return {
        "method": "daid",
        "db": str(args.db),
        "k": args.daid_k,
        "weight": args.daid_weight,
        "temperature": args.daid_temperature,
        "unique": args.daid_unique,
    }


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


def cmd_generate(args) -> None:
    from PIL import Image

    from arrag.io import check_output_path

    check_output_path(args.out)  # now, not after every image is made
    pipe = _pipeline(args)
    images, _ = pipe(
        args.prompt,
        n=args.n,
        sampling=_sampling(args),
        seed=args.seed,
        batch_size=args.batch_size,
        hooks=_hooks(args, pipe),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        p, s = divmod(i, args.n)
        path = out / f"prompt{p:03d}_{s:02d}.png"
        Image.fromarray(image).save(path)
        print(path)


def cmd_generate_benchmark(args) -> None:
    from arrag.data.geneval_layout import finish_output
    from arrag.decoding.pipeline import generate_prompt_set, method_parameters
    from arrag.io import read_jsonl, write_json

    records = read_jsonl(args.prompts)[: args.limit] if args.limit else read_jsonl(args.prompts)
    pipe = _pipeline(args)
    hooks = _hooks(args, pipe)
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
        hooks=hooks,
        settings={"model": str(args.model), **_method_settings(args), "inputs": _input_fingerprints(args)},
        shard=args.shard,
        num_shards=args.num_shards or 1,
    )
    summary["seconds"] = time.time() - t0
    summary["parameters"] = method_parameters(pipe.model, hooks)  # the tables' Params column
    if args.num_shards is None:  # generation.json last; a staged run replaces the old images only now
        finish_output(args.out, summary)
    else:  # this shard is done; `arrag finish-benchmark` checks the whole folder and writes generation.json
        write_json(shard_marker(args.out, args.shard, args.num_shards), summary)
    print(json.dumps(summary, indent=2))


def _input_fingerprints(args) -> dict:
    """Identities (manifest digests) of the local artefacts the images come from (model, database, FAiD, image
    index): rebuilt ones with other contents invalidate the images made before, even under the same paths."""
    from arrag.manifest import identity

    paths = {"model": args.model, "db": args.db, "faid": args.faid, "image_index": args.image_index}
    return {name: identity(p) for name, p in paths.items() if p and Path(p).exists()}


def shard_marker(out: str, shard: int, num_shards: int) -> Path:
    return Path(out) / "shards" / f"{shard:05d}-of-{num_shards:05d}.json"


def cmd_finish_benchmark(args) -> None:
    """After every shard of a prompt set: check the folder is complete, then write generation.json."""
    from arrag.data.geneval_layout import SETTINGS, finish_output, output_folder, read_prompt_folders
    from arrag.evaluation.geneval import check_benchmark_folder
    from arrag.io import read_jsonl

    records = read_jsonl(args.prompts)[: args.limit] if args.limit else read_jsonl(args.prompts)
    markers = [shard_marker(args.out, i, args.num_shards) for i in range(args.num_shards)]
    missing = [str(m) for m in markers if not m.is_file()]
    if missing:
        raise ValueError(f"shards not finished: {missing}; rerun their `arrag generate-benchmark --shard` jobs")
    work = output_folder(args.out)  # a staged run's folder, or args.out
    check_benchmark_folder(work, images_per_prompt=args.n)
    folders = read_prompt_folders(work)
    if len(folders) != len(records):
        raise ValueError(f"{work} holds {len(folders)} prompt folders, {args.prompts} has {len(records)} prompts")
    current = json.loads((Path(work) / SETTINGS).read_text())
    for i, ((meta, _), record) in enumerate(zip(folders, records)):
        if meta != {**record, "prompt": record[current["prompt_field"]]}:
            raise ValueError(f"{work}/{i:05d} was made for another prompt record than {args.prompts} line {i + 1}")
    # every shard must have run with the settings the folder holds now (not a marker left by an older run)
    shards = [json.loads(m.read_text()) for m in markers]
    per_shard = ("shard", "num_shards", "generated", "reused", "seconds", "parameters")
    for marker, shard in zip(markers, shards):
        own = {k: v for k, v in shard.items() if k not in per_shard}
        if own != current or shard.get("parameters") != shards[0].get("parameters"):
            raise ValueError(f"{marker} was written under other settings than {work}/{SETTINGS}: rerun that shard")
    summary = dict(current) | {"parameters": shards[0].get("parameters")}
    summary |= {k: sum(s[k] for s in shards) for k in ("generated", "reused", "seconds")}
    summary |= {"num_shards": args.num_shards}
    finish_output(args.out, summary, carry=("shards",))  # the markers go along: the workflow expects them
    print(json.dumps(summary, indent=2))


def cmd_build_image_index(args) -> None:
    import torch

    from arrag.data.code_shards import load_code_shards, require_codebook, shard_digests
    from arrag.data.contamination import kept_rows
    from arrag.io import read_jsonl
    from arrag.models.vq import codebook_fingerprint
    from arrag.retrieval.image_index import BagOfWordsEncoder, ClipTextEncoder, ImageLevelIndex

    if args.embeddings:  # the paper's CLIP retriever
        encoder = ClipTextEncoder.load(args.clip_model, args.clip_pretrained, sha256=args.clip_sha256)
        index = ImageLevelIndex.from_shards(args.codes, args.embeddings, encoder, exclude=args.exclude)
        index.check_codebook(codebook_fingerprint(_load_codebook(args.model, args.revision)), str(args.model))
        index.save(args.out)
        print(json.dumps({k: v for k, v in index.metadata.items() if k != "sources"}, indent=2))
        return
    if not args.captions:
        raise ValueError("give --embeddings (CLIP embedding shards of the corpus) or --captions (the mini world's)")
    records = read_jsonl(args.captions)
    codes, image_ids, metas = load_code_shards(args.codes)
    keep = torch.from_numpy(kept_rows(args.exclude, image_ids, metas))
    codes, image_ids = codes[keep], image_ids[keep]
    if int(image_ids.max()) >= len(records):
        raise ValueError(
            f"{args.captions} has {len(records)} records but the code shards hold image id {image_ids.max()}: "
            "give the metadata of the split the shards were tokenised from"
        )
    try:
        captions = [records[i][args.caption_field] for i in image_ids.tolist()]
    except KeyError:
        raise ValueError(f"{args.captions}: records lack the field {args.caption_field!r} (--caption-field)") from None
    sha = codebook_fingerprint(_load_codebook(args.model, args.revision))
    require_codebook(args.codes, metas, sha, args.model)
    index = ImageLevelIndex.build(
        captions,
        codes.numpy(),
        image_ids.numpy(),
        BagOfWordsEncoder.from_captions(captions),
        sha,
        tokenizer_id=metas[0].get("tokenizer_id", ""),
        code_shards=shard_digests(metas),
    )
    index.save(args.out)
    print(json.dumps(index.metadata | {"encoder": index.encoder.name}, indent=2))


def _pairs_args(p: argparse.ArgumentParser) -> None:
    pairs = p.add_mutually_exclusive_group(required=True)
    pairs.add_argument("--codes", nargs="+", help="code shards of captioned sources (arrag tokenise): the pairs")
    pairs.add_argument("--world", help="directory written by `arrag world`: the pairs are its --split")
    p.add_argument("--split", default="finetune", help="with --world: the split")
    _exclude_arg(p)


def _exclude_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exclude", default=None, help="exclusion list (arrag contamination): leave its images out")


def fine_tuning_pairs(args, vq_of) -> tuple:
    """The fine-tuning pairs as (codes LongTensor [N, H, W], captions [N], their source specs, the fingerprint
    of the codebook the codes were made with, each pair's position in its split (int64 [N]; --world only)):
    code shards of captioned sources (--codes, read as they are), or a mini-world split (--world/--split),
    tokenised here by the VQTokenizer `vq_of()` returns. Pairs the --exclude list names are left out."""
    import numpy as np

    from arrag.data.contamination import Exclusions, kept_rows
    from arrag.models.vq import codebook_fingerprint

    if args.codes:
        from arrag.data.code_shards import load_code_shards, shard_captions

        codes, image_ids, metas = load_code_shards(args.codes)
        specs = {json.dumps(m["source"], sort_keys=True) for m in metas}
        keep = kept_rows(args.exclude, image_ids, metas)
        captions = [c for c, k in zip(shard_captions(args.codes, metas), keep) if k]
        return codes[keep], captions, [json.loads(s) for s in sorted(specs)], metas[0]["codebook_sha256"], None
    from arrag.data.mini_world import load_split
    from arrag.models.training import encode_images

    vq = vq_of()
    split = Path(args.world) / args.split
    images, records = load_split(split)
    positions = np.arange(len(records))
    if args.exclude:
        spec = {"type": "mini_world", "path": str(split)}
        keep = Exclusions.load(args.exclude).keep_local(spec, positions, [str(r["id"]) for r in records])
        images, records, positions = images[keep], [r for r, k in zip(records, keep) if k], positions[keep]
    codes = encode_images(vq, images).cpu()
    return codes, [r["caption"] for r in records], [], codebook_fingerprint(vq.codebook), positions


def refuse_shared_sources(pair_sources: list[dict], sources: list[dict], what: str) -> None:
    """Fine-tuning pairs read from files the retrieval corpus also reads would retrieve their own patches (the
    answer), and code shards carry no database ids to leave them out by: refuse, naming the files."""
    from arrag.data.sources import shared_locations

    for spec in pair_sources:
        for entry in sources:
            shared = shared_locations(spec, entry["source"]) if entry.get("source") else []
            if shared:
                raise ValueError(
                    f"the fine-tuning pairs and {what} read the same data ({', '.join(shared[:3])}"
                    f"{', ...' if len(shared) > 3 else ''}): take the pairs from files the corpus does not use"
                )


def cmd_faid_trainset(args) -> None:
    from arrag.decoding.pipeline import resolve_device
    from arrag.models.faid_training import build_trainset
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer, codebook_fingerprint

    if args.exclude_self and not args.world:
        raise ValueError("--exclude-self needs --world: code shards' image ids are not the database's")
    device = resolve_device(args.device)
    model, _ = load_janus(args.model, revision=args.revision, device=device)
    vq = VQTokenizer.from_janus(model)
    db = _load_db(args, device, vq.codebook)
    codes, captions, pair_sources, codes_codebook, positions = fine_tuning_pairs(args, lambda: vq)
    if codes_codebook != codebook_fingerprint(vq.codebook):
        raise ValueError(f"the fine-tuning codes were tokenised with another codebook than {args.model}; re-tokenise")
    refuse_shared_sources(pair_sources, db.sources, f"the database {args.db}")
    # --exclude-self: the split is the database's own source, image id = position in the split
    image_ids = positions if args.exclude_self else None
    summary = build_trainset(model, db, codes, captions, args.k, args.out, image_ids)
    print(json.dumps(summary, indent=2))


def cmd_train_faid(args) -> None:
    from arrag.manifest import identity
    from arrag.models.faid_training import FAiDTrainingConfig, train_faid

    # only to refuse a training set built from another database: its identity, not its index
    db = identity(args.db) if args.db else None
    cfg = parse_overrides(args.set, FAiDTrainingConfig)
    stats = train_faid(args.model, args.trainset, cfg, args.out, db=db, cpu=args.cpu, restart=args.restart)
    print(json.dumps({k: v for k, v in stats.items() if k != "log"}, indent=2))


def cmd_train_racm3(args) -> None:
    from arrag.baselines.racm3 import RACM3TrainingConfig, train_racm3
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer
    from arrag.retrieval.image_index import ImageLevelIndex

    def vq_of():  # only a mini-world split is tokenised here; code shards are read as they are
        return VQTokenizer.from_janus(load_janus(args.model, revision=args.revision)[0])

    codes, captions, pair_sources, codes_codebook, _ = fine_tuning_pairs(args, vq_of)
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


def _load_codebook(model_dir: str, revision: str | None = None):
    """The L2-normalised VQ codebook [K, D] of a Janus model directory (or hub id + revision)."""
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer

    model, _ = load_janus(model_dir, revision=revision)
    return VQTokenizer.from_janus(model).codebook


def cmd_embed_images(args) -> None:
    from arrag.decoding.pipeline import resolve_device
    from arrag.retrieval.image_index import ClipTextEncoder, embed_image_shard

    encoder = ClipTextEncoder.load(args.clip_model, args.clip_pretrained, resolve_device(args.device), args.clip_sha256)
    meta = embed_image_shard(
        json.loads(args.source), args.shard, args.num_shards, encoder, args.out, batch_size=args.batch_size
    )
    print(json.dumps({k: v for k, v in meta.items() if k != "skipped"} | {"skipped": len(meta["skipped"])}, indent=2))


def _clip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clip-model", default="ViT-B-32-quickgelu", help="open_clip model name (OpenAI ViT-B/32: the paper's 512-d)"
    )
    p.add_argument("--clip-pretrained", default="openai", help="open_clip pretrained tag or a local weights file")
    p.add_argument("--clip-sha256", default=None, help="expected SHA-256 of a local weights file")


def cmd_tokenise(args) -> None:
    from arrag.data.code_shards import tokenise_shard
    from arrag.decoding.pipeline import resolve_device
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer

    source = json.loads(args.source)
    model, _ = load_janus(args.model, revision=args.revision, device=resolve_device(args.device))
    summary = tokenise_shard(
        source,
        args.shard,
        args.num_shards,
        VQTokenizer.from_janus(model),
        args.out,
        batch_size=args.batch_size,
        tokenizer_id=args.tokenizer_id or str(args.model),
    )
    print(json.dumps(summary, indent=2))


def cmd_hash_images(args) -> None:
    from transformers import JanusConfig

    from arrag.data.contamination import hash_source_shard
    from arrag.models.vq import vq_image_size

    size = vq_image_size(JanusConfig.from_pretrained(args.model, revision=args.revision).vq_config)
    meta = hash_source_shard(json.loads(args.source), args.shard, args.num_shards, size, args.out, args.batch_size)
    print(json.dumps({k: v for k, v in meta.items() if k != "skipped"} | {"skipped": len(meta["skipped"])}, indent=2))


def cmd_contamination(args) -> None:
    from arrag.data.contamination import Thresholds, find_contamination, write_contamination_table
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


def cmd_build_db(args) -> None:
    from arrag.retrieval.database import PatchDatabase

    codebook = _load_codebook(args.model, args.revision)
    params = {k: _number(v) for k, v in (p.split("=", 1) for p in args.param)}
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


def cmd_verify(args) -> None:
    from arrag.manifest import seal, verify_path

    if args.seal:
        print(json.dumps(seal(args.path, args.seal), indent=2))
        return
    for result in verify_path(args.path):
        print(json.dumps(result))


def _number(raw: str):
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def cmd_retrieval_accuracy(args) -> None:
    from arrag.data.code_shards import load_code_shards, require_codebook
    from arrag.evaluation import retrieval_accuracy as ra
    from arrag.evaluation.tables import RETRIEVAL_ACCURACY, retrieval_accuracy_rows, write_rows
    from arrag.io import write_json
    from arrag.retrieval.database import PatchDatabase

    codebook = _load_codebook(args.model, args.revision)
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


def cmd_bench_encoders(args) -> None:
    from arrag.bench.encoders import run_encoder_bench, write_results
    from arrag.decoding.pipeline import resolve_device

    result = run_encoder_bench(str(resolve_device(args.device)), args.batch_size, args.batches, args.repeats)
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


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


def cmd_download_file(args) -> None:
    from arrag.data.downloads import fetch, sha256_of

    path = fetch(args.url, args.out, sha256=args.sha256, mirror=args.mirror)
    print(f"{path}  sha256 {sha256_of(path)}" + ("" if args.sha256 else "  (not pinned: pin this digest)"))


def cmd_download_model(args) -> None:
    from arrag.data.downloads import download_model

    pins = dict(pin.partition("=")[::2] for pin in args.sha256)
    print(download_model(args.hub_id, args.revision, args.out, args.mirror, args.include, args.lock, pins))


def cmd_download_dataset(args) -> None:
    from arrag.data.downloads import download_dataset

    print(download_dataset(args.repo, args.revision, args.include, args.out, mirror=args.mirror, lock=args.lock))


def cmd_download_modelscope(args) -> None:
    from arrag.data.downloads import download_modelscope

    print(download_modelscope(args.model_id, args.revision, args.out, mirror=args.mirror, lock=args.lock))


def cmd_download_geneval_detector(args) -> None:
    from arrag.data.downloads import fetch
    from arrag.evaluation.geneval_mask2former import CHECKPOINT_SHA256_PREFIX, CHECKPOINT_URL

    print(fetch(CHECKPOINT_URL, args.out, sha256=CHECKPOINT_SHA256_PREFIX, mirror=args.mirror))


def cmd_download_inception(args) -> None:
    from arrag.evaluation.features import download_inception

    print(download_inception(args.out, mirror=args.mirror))


def cmd_download_mjhq(args) -> None:
    from arrag.data.mjhq import download_mjhq

    print(json.dumps(download_mjhq(args.out, revision=args.revision, mirror=args.mirror), indent=2))


def cmd_mjhq_prompts(args) -> None:
    from arrag.data.mjhq import extract_reference, mjhq_records
    from arrag.io import write_jsonl

    records = mjhq_records(Path(args.dataset) / "meta_data.json", args.category or None, args.limit)
    if args.out_reference:  # first: a failed extraction leaves the old prompts with their old images
        extract_reference(Path(args.dataset) / "mjhq30k_imgs.zip", records, args.out_reference)
    write_jsonl(args.out_prompts, records)
    print(f"{len(records)} MJHQ-30K prompts -> {args.out_prompts}")


def cmd_bench_retrieval(args) -> None:
    from arrag.bench.retrieval import AUTHORS_BASELINE, run_retrieval_bench, write_results
    from arrag.data.code_shards import load_code_shards

    codebook = _load_codebook(args.model, args.revision)
    codes, _, _ = load_code_shards(args.codes)
    queries, _, _ = load_code_shards(args.query_codes)
    entries = codes.shape[0] * codes.shape[1] * codes.shape[2]
    if entries < args.min_entries:
        raise ValueError(
            f"the database would hold {entries:,} entries, fewer than --min-entries {args.min_entries:,}; "
            "pass more code shards (e.g. a larger mini-world corpus)"
        )
    backends = []
    for spec in args.backend:
        name, _, rest = spec.partition(":")
        params = {k: _number(v) for k, v in (p.split("=", 1) for p in rest.split(",") if p)}
        backends.append((name, params))
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


def cmd_bench_generate(args) -> None:
    from arrag.bench.generate import run_generation_bench, write_results
    from arrag.decoding.pipeline import ImageGenerationPipeline
    from arrag.io import read_jsonl

    pipe = ImageGenerationPipeline.from_pretrained(args.model, revision=args.revision, device=args.device)
    prompts = [r[args.prompt_field] for r in read_jsonl(args.prompts)] if args.prompts else ["a photo of a circle"]
    methods = {"vanilla": (pipe, list)}
    if args.db:
        methods["daid"] = (pipe, _daid_factory(args, pipe))
    if args.faid:  # its own copy of the model: attached FAiD hooks must not touch the vanilla rows
        if not args.db:
            raise ValueError("--faid needs --db DIR (the database FAiD retrieves from)")
        faid_pipe = ImageGenerationPipeline.from_pretrained(args.model, revision=args.revision, device=args.device)
        methods["faid"] = (faid_pipe, _faid_factory(args, faid_pipe))
    if args.racm3_model:
        from arrag.baselines.racm3 import RACM3Pipeline

        if not args.image_index:
            raise ValueError("--racm3-model needs --image-index DIR (its image-level retriever)")
        racm3 = RACM3Pipeline.from_pretrained(args.racm3_model, args.image_index, device=str(pipe.device))
        methods["racm3"] = (racm3, list)
    result = run_generation_bench(
        methods, prompts, batch_size=args.batch_size, repeats=args.repeats, sampling=_sampling(args)
    )
    write_results(result, args.out_json, args.out_md)
    print(Path(args.out_md).read_text())


def _labelled(labels: list[str], paths: list[str], option: str) -> dict[str, str]:
    """--label L1 ... with --<option> P1 ...  ->  {L1: P1, ...}, refusing unequal counts."""
    if len(labels) != len(paths):
        raise ValueError(f"give one --label per --{option} (got {len(labels)} labels and {len(paths)} --{option})")
    return dict(zip(labels, paths))


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


def cmd_mini_dpg(args) -> None:
    from arrag.data.mini_dpg import write_mini_dpg

    write_mini_dpg(args.world, args.out, n=args.n, seed=args.seed)
    print(f"mini-DPG: {args.n} prompts and their questions -> {args.out}")


def cmd_dpg_prompts(args) -> None:
    from arrag.evaluation.dpg import dpg_prompts, prompt_records
    from arrag.io import write_jsonl

    records = prompt_records(dpg_prompts(args.prompts_dir))  # default: the 1065 vendored prompts
    write_jsonl(args.out, records)
    print(f"{len(records)} DPG-Bench prompts -> {args.out}")


def cmd_dpg_tiles(args) -> None:
    from arrag.evaluation.dpg import write_tiled_folder

    print(f"{write_tiled_folder(args.images, args.out)} 2x2 tiles -> {args.out}")


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


def cmd_table(args) -> None:
    from arrag.evaluation import tables

    spec = tables.TABLES[args.kind]
    if args.kind == "inference_time":
        if len(args.result) != 1 or args.label:
            raise ValueError("the inference_time table takes one --result, the JSON of `arrag bench generate`")
        measured = tables.inference_rows(tables.read_summary(args.result[0]))
    else:
        results = _labelled(args.label, args.result, "result")
        measured = {label: tables.measured_row(args.kind, path, label) for label, path in results.items()}
        if args.params:  # the generation.json of each result's images: the Params column
            for label, path in _labelled(args.label, args.params, "params").items():
                measured[label]["params"] = tables.generation_parameters(path)
    tables.write_table(spec, measured, args.out, note=args.note, paper=args.paper_rows)
    print(Path(args.out).with_suffix(".md").read_text())


def cmd_sweep_table(args) -> None:
    from arrag.evaluation.tables import best_sweep_row, read_summary, write_sweep

    summaries = {path: read_summary(path) for path in args.summary}
    rows = write_sweep(summaries, args.out_csv, args.out_png, args.x, args.y, args.title, args.metric)
    best = best_sweep_row(rows, args.metric)
    print(json.dumps({"runs": len(rows), "best": best}, indent=2))


def _feature_network(spec: str | None, device: str):
    """--fid-network / --cmmd-network: mini:DIR (arrag train-features), inception:FILE, clip:WEIGHTS
    (a local file or an open_clip tag of CMMD's CLIP model), or none."""
    from arrag.evaluation import features

    if not spec or spec == "none":
        return None
    kind, _, where = spec.partition(":")
    if kind == "mini" and where:
        return features.load_feature_network(where, device=device)
    if kind == "inception" and where:
        return features.inception_extractor(where, device=device)
    if kind == "clip" and where:
        return features.clip_embedder(pretrained=where, device=device)
    raise ValueError(f"feature network {spec!r}: expected mini:DIR, inception:FILE, clip:WEIGHTS or none")


def cmd_fidelity(args) -> None:
    from arrag.decoding.pipeline import resolve_device
    from arrag.evaluation.fidelity import fidelity_scores
    from arrag.io import write_json

    device = str(resolve_device(args.device))
    result = fidelity_scores(
        args.images,
        args.reference,
        fid_network=(fid_net := _feature_network(args.fid_network, device)),
        cmmd_network=fid_net if args.cmmd_network == args.fid_network else _feature_network(args.cmmd_network, device),
        fwd_level=args.fwd_level,
        fwd_size=args.fwd_size,
        batch_size=args.batch_size,
    )
    if args.out_json:
        write_json(args.out_json, result)
    print(json.dumps({k: result[k] for k in ("fid", "cmmd", "fwd", "images") if k in result}, indent=2))


def cmd_train_features(args) -> None:
    from arrag.data.mini_world import load_split
    from arrag.evaluation.features import MiniFeatureConfig, train_feature_network

    images, records = load_split(Path(args.world) / args.split)
    _, summary = train_feature_network(images, records, parse_overrides(args.set, MiniFeatureConfig), args.out)
    print(json.dumps(summary, indent=2))


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


def cmd_rehearsal_mirror(args) -> None:
    from arrag.rehearsal import build_mirror

    sizes = dict(cc12m=args.cc12m, cc12m_per_tar=args.cc12m_per_tar, midjourney=args.midjourney, mjhq=args.mjhq)
    summary = build_mirror(args.out, **sizes, depth=args.depth, toy=args.toy, clip_model=args.clip_model or None)
    print(json.dumps(summary, indent=2))


def cmd_scale_table(args) -> None:
    from arrag.bench.scale import scale_markdown, scale_rows
    from arrag.io import write_json, write_text

    rows = scale_rows(args.results)
    write_text(args.out, scale_markdown(rows, args.results))
    write_json(Path(args.out).with_suffix(".json"), rows)
    print(Path(args.out).read_text())


def cmd_grid(args) -> None:
    from arrag.visualise import sample_grid

    print(sample_grid(args.images, args.out, max_prompts=args.max_prompts, upscale=args.upscale))


LOCK_HELP = "lock file: written by the first download (commit + SHA-256 of each file), enforced by every later one"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="render the mini world's splits and GenEval-schema prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=_COUNT, default=32)
    p.add_argument("--seed", type=_INDEX, default=0)
    p.add_argument("--split", action="append", default=[], metavar="NAME=COUNT")
    p.add_argument("--underrepresented", action="append", default=[], metavar="COLOUR:SHAPE")
    p.add_argument("--keep-fraction", type=cli_number(float, **FRACTION), default=0.05)
    p.add_argument("--geneval-prompts", type=_COUNT, default=180)
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
        _restart_arg(p)
        p.set_defaults(func=func)

    p = sub.add_parser("build-image-index", help="RA-CM3's image-level retriever over a tokenised corpus")
    _model_args(p, help="the backbone whose codebook the code shards use")
    p.add_argument("--codes", nargs="+", required=True, help="code shards (.npz) of the corpus")
    p.add_argument("--embeddings", nargs="+", default=None, help="CLIP embedding shards of the same sources")
    _clip_args(p)
    p.add_argument(
        "--captions",
        default=None,
        help="instead of --embeddings, the mini world's caption retriever: "
        "JSONL with one record per source image (image id = line)",
    )
    p.add_argument("--caption-field", default="caption")
    _exclude_arg(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_build_image_index)

    p = sub.add_parser("faid-trainset", help="FAiD's training set: each position's candidates from the database")
    _model_args(p, help="the base model")
    p.add_argument("--db", required=True, help="PatchDatabase directory (arrag build-db)")
    _pairs_args(p)
    p.add_argument("--k", type=_COUNT, default=10, help="candidates stored per position (training uses the first k)")
    _db_devices_arg(p)
    p.add_argument(
        "--exclude-self",
        action="store_true",
        help="the split is the database's own source: drop each image's own entries from its candidates",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_faid_trainset)

    p = sub.add_parser("train-faid", help="train FAiD's parameters (backbone frozen); `accelerate launch` for GPUs")
    _model_args(p, help="the base model directory")
    p.add_argument("--trainset", required=True, help="directory written by `arrag faid-trainset`")
    p.add_argument("--db", default=None, help="refuse a training set built from another database than this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FAiDTrainingConfig field")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is visible")
    p.add_argument("--out", required=True)
    _restart_arg(p)
    p.set_defaults(func=cmd_train_faid)

    p = sub.add_parser("train-racm3", help="fine-tune the RA-CM3 baseline (reference image prefix)")
    _model_args(p, help="the base model directory")
    _pairs_args(p)
    p.add_argument("--image-index", required=True, help="directory written by `arrag build-image-index`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="RACM3TrainingConfig field")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    _restart_arg(p)
    p.set_defaults(func=cmd_train_racm3)

    p = sub.add_parser("generate", help="generate images for your own prompts")
    _model_args(p)
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--n", type=_COUNT, default=4, help="images per prompt")
    p.add_argument("--out", required=True)
    _sampling_args(p)
    _method_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("generate-benchmark", help="generate a prompt set into GenEval's folder layout (resumable)")
    _model_args(p)
    p.add_argument("--prompts", required=True, help="JSONL of prompt records (GenEval metadata or split metadata)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--limit", type=_COUNT, default=None, help="use the first N records only")
    p.add_argument("--n", type=_COUNT, default=4)
    p.add_argument("--out", required=True)
    _sampling_args(p)
    _method_args(p)
    p.add_argument("--shard", type=_INDEX, default=0, help="make only prompts with index %% num-shards == shard")
    p.add_argument(
        "--num-shards",
        type=_COUNT,
        default=None,
        help="shards of this prompt set run as separate jobs; each marks itself done in OUT/shards/ and "
        "`arrag finish-benchmark` writes generation.json (without it: one job, generation.json at once)",
    )
    p.set_defaults(func=cmd_generate_benchmark)

    p = sub.add_parser("finish-benchmark", help="after all shards: check the prompt-set folder, write generation.json")
    p.add_argument("--prompts", required=True)
    p.add_argument("--limit", type=_COUNT, default=None)
    p.add_argument("--n", type=_COUNT, required=True, help="images per prompt")
    p.add_argument("--num-shards", type=_COUNT, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_finish_benchmark)

    p = sub.add_parser("embed-images", help="CLIP-embed one shard of an image source (RA-CM3's image retriever)")
    p.add_argument("--source", required=True, help='JSON source spec, e.g. \'{"type": "folder", "path": "imgs/"}\'')
    p.add_argument("--shard", type=_INDEX, default=0)
    p.add_argument("--num-shards", type=_COUNT, default=1)
    _clip_args(p)
    p.add_argument("--batch-size", type=_COUNT, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="directory of embedding shards")
    p.set_defaults(func=cmd_embed_images)

    p = sub.add_parser("tokenise", help="encode one shard of an image source into a code shard")
    _model_args(p)
    p.add_argument("--source", required=True, help='JSON source spec, e.g. \'{"type": "folder", "path": "imgs/"}\'')
    p.add_argument("--shard", type=_INDEX, default=0)
    p.add_argument("--num-shards", type=_COUNT, default=1)
    p.add_argument("--out", required=True, help="directory of code shards")
    p.add_argument("--batch-size", type=_COUNT, default=256)
    p.add_argument("--tokenizer-id", default=None, help="recorded in the shard (default: --model)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_tokenise)

    p = sub.add_parser("hash-images", help="hash one shard of an image source (the contamination check)")
    _model_args(p, help="the backbone: images are hashed at its tokenizer's size")
    p.add_argument("--source", required=True, help="JSON source spec, as for `arrag tokenise`")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="directory of hash shards")
    p.set_defaults(func=cmd_hash_images)

    p = sub.add_parser("contamination", help="find benchmark images in the corpora and pairs: exclusion list + table")
    for option, what in (("--reference", "an evaluation reference set"), ("--source", "a corpus or pairs source")):
        p.add_argument(option, nargs="+", action="append", required=True, metavar="NAME SHARD", help=what)
    p.add_argument("--phash-bits", type=int, default=14, help="near duplicate: pHash Hamming distance <= this ...")
    p.add_argument("--thumbnail-rms", type=float, default=6.0, help="... and 8x8 thumbnails' RMS <= this (grey levels)")
    p.add_argument("--out", required=True, help="the exclusion list (JSON)")
    p.add_argument("--table", required=True, help="the table's prefix: PREFIX.csv, .md, .tex")
    p.set_defaults(func=cmd_contamination)

    p = sub.add_parser("build-db", help="build a PatchDatabase from code shards")
    _model_args(p, help="the backbone whose codebook the keys use")
    p.add_argument("--codes", nargs="+", required=True, help="code shards (.npz)")
    _exclude_arg(p)
    p.add_argument("--hops", type=_COUNT, default=1)
    p.add_argument("--full", action="store_true", help="full-ring keys (masked models) instead of causal")
    p.add_argument("--index", default="compact")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="index parameter")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_build_db)

    p = sub.add_parser("verify", help="check every byte of artefacts against their manifests (arrag.manifest)")
    p.add_argument("path", help="an artefact directory (database, model, index, FAiD...), a shard, or a shard folder")
    p.add_argument("--seal", metavar="KIND", help="instead: write a manifest of KIND (e.g. janus-model) for PATH")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("retrieval-accuracy", help="paper Figure 6: retrieved vs ground-truth token distances")
    _model_args(p)
    p.add_argument("--db", required=True)
    p.add_argument(
        "--queries",
        choices=["heldout", "train"],
        default="heldout",
        help="heldout: --codes of images not in the database; train: FAiD's --trainset (the paper's appendix C.1)",
    )
    p.add_argument("--codes", nargs="+", default=None, help="held-out code shards (--queries heldout)")
    p.add_argument("--trainset", default=None, help="directory of `arrag faid-trainset` (--queries train)")
    p.add_argument("--k", type=_COUNT, default=10)
    p.add_argument("--max-queries", type=_COUNT, default=20000)
    p.add_argument("--seed", type=_INDEX, default=0)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)
    p.add_argument("--out-json", default=None)
    p.set_defaults(func=cmd_retrieval_accuracy)

    download = sub.add_parser("download", help="pinned downloads (resumable, verified, atomic)")
    download = download.add_subparsers(dest="download", required=True)
    p = download.add_parser("file", help="one file by URL, checked against its SHA-256 (or published prefix)")
    p.add_argument("--url", required=True)
    p.add_argument("--sha256", default=None, help="expected SHA-256, full or a published prefix")
    p.add_argument("--mirror", default=None, help="local folder holding the file under its URL's name")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_file)
    p = download.add_parser("model", help="a hub model snapshot at a pinned commit (safetensors and configs only)")
    p.add_argument("--hub-id", required=True, help="e.g. deepseek-community/Janus-Pro-1B")
    p.add_argument("--revision", required=True, help="40-hex-digit commit, or a branch locked by --lock")
    p.add_argument("--include", nargs="+", default=None, help="file patterns (default: safetensors and configs)")
    p.add_argument("--sha256", action="append", default=[], help="FILE=DIGEST: a file's pinned SHA-256")
    p.add_argument("--lock", default=None, help=LOCK_HELP)
    p.add_argument("--mirror", default=None, help="local folder holding <org>--<name>/ snapshots")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_model)
    p = download.add_parser(
        "dataset", help="hub dataset files (WebDataset tars, parquet) at a pinned commit, hash-checked"
    )
    p.add_argument("--repo", required=True, help="e.g. pixparse/cc12m-wds")
    p.add_argument("--revision", required=True, help="40-hex-digit commit")
    p.add_argument("--include", nargs="+", required=True, help="file patterns, e.g. 'cc12m-train-00*.tar'")
    p.add_argument("--lock", default=None, help=LOCK_HELP)
    p.add_argument("--mirror", default=None, help="local folder holding <org>--<name>/ copies")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_dataset)
    p = download.add_parser("modelscope", help="every file of a ModelScope model (DPG-Bench's mPLUG), locked")
    p.add_argument("--model-id", required=True, help="e.g. damo/mplug_visual-question-answering_coco_large_en")
    p.add_argument("--revision", required=True, help="a ModelScope tag or branch, e.g. master")
    p.add_argument("--lock", default=None, help=LOCK_HELP)
    p.add_argument("--mirror", default=None, help="local folder holding <org>--<name>/ copies")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_modelscope)
    p = download.add_parser("geneval-detector", help="GenEval's Mask2Former checkpoint (OpenMMLab, SHA-256 prefix)")
    p.add_argument("--mirror", default=None, help="local folder holding the checkpoint under its URL's file name")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_geneval_detector)
    p = download.add_parser("inception", help="FID's Inception weights (clean-fid's file, SHA-256 pinned)")
    p.add_argument("--mirror", default=None, help="local folder holding inception-2015-12-05.pt")
    p.add_argument("--out", required=True, help="file path or folder")
    p.set_defaults(func=cmd_download_inception)
    p = download.add_parser("mjhq", help="MJHQ-30K's metadata and images from the Hugging Face Hub")
    p.add_argument("--revision", default=None, help="dataset commit (default: resolve main now and record it)")
    p.add_argument("--mirror", default=None, help="local folder holding meta_data.json and mjhq30k_imgs.zip")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download_mjhq)

    p = sub.add_parser("mjhq-prompts", help="MJHQ-30K prompt records (and their real images, for the metrics)")
    p.add_argument("--dataset", required=True, help="folder written by `arrag download mjhq`")
    p.add_argument("--category", action="append", default=[], help="keep these categories (default: all 10)")
    p.add_argument("--limit", type=_COUNT, default=None, help="first N prompts in id order")
    p.add_argument("--out-prompts", required=True, help="JSONL for `arrag generate-benchmark`")
    p.add_argument("--out-reference", default=None, help="folder for the real images of those prompts")
    p.set_defaults(func=cmd_mjhq_prompts)

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
    p = sub.add_parser("scale-table", help="per-rule cost per item of a run, extrapolated to the paper's counts")
    p.add_argument("--results", required=True, help="results/<profile> of a finished run (its benchmarks/*.tsv)")
    p.add_argument("--out", required=True, help="Markdown file (a .json of the rows beside it)")
    p.set_defaults(func=cmd_scale_table)

    bench = sub.add_parser("bench", help="performance benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("retrieval", help="index backends side by side: build time, bytes/entry, QPS, recall")
    _model_args(p)
    p.add_argument("--codes", nargs="+", required=True, help="code shards forming the database")
    p.add_argument("--query-codes", nargs="+", required=True, help="held-out code shards for queries")
    p.add_argument("--backend", action="append", required=True, metavar="NAME[:k=v,...]")
    p.add_argument("--authors-baseline", action="store_true", help="add OPQ8+IVF800+PQ8 with nprobe 1")
    p.add_argument("--hops", type=_COUNT, default=1)
    p.add_argument("--queries", type=_COUNT, default=2048)
    p.add_argument("--min-entries", type=_COUNT, default=2_000_000)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_bench_retrieval)

    p = bench.add_parser(
        "encoders", help="images/s of the corpus encoders (Janus-Pro VQ, CLIP ViT-B/32), random weights"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_COUNT, default=8)
    p.add_argument("--batches", type=_COUNT, default=2)
    p.add_argument("--repeats", type=_COUNT, default=2)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_bench_encoders)

    p = bench.add_parser("scoring", help="images/s of the benchmark scorers on generated folders (CPU in the mini)")
    p.add_argument("--geneval", required=True, help="GenEval-layout folder")
    p.add_argument("--dpg-tiles", default=None, help="DPG tile folder (arrag dpg-tiles)")
    p.add_argument("--dpg-csv", default=None, help="its question CSV")
    p.add_argument("--fidelity-images", default=None, help="generated folder for the fidelity metrics")
    p.add_argument("--reference", default=None, help="reference images (.npy or folder)")
    p.add_argument("--features", default=None, help="mini feature network (arrag train-features)")
    p.add_argument("--fwd-level", type=_COUNT, default=4)
    p.add_argument("--fwd-size", type=_COUNT, default=256)
    p.add_argument("--repeats", type=_COUNT, default=3)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_bench_scoring)

    p = bench.add_parser("generate", help="images/s and time per step: vanilla, DAiD, FAiD, RA-CM3 side by side")
    _model_args(p)
    p.add_argument("--db", default=None, help="PatchDatabase: adds the DAiD row")
    p.add_argument("--faid", default=None, help="FAiD checkpoint of --model: adds the FAiD row (needs --db)")
    p.add_argument("--racm3-model", default=None, help="RA-CM3 model (arrag train-racm3): adds the RA-CM3 row")
    p.add_argument("--image-index", default=None, help="RA-CM3's image-level index")
    _daid_args(p)
    p.add_argument("--prompts", default=None, help="JSONL of prompt records")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--repeats", type=_COUNT, default=3)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    _sampling_args(p)
    p.set_defaults(func=cmd_bench_generate, batch_size=16)

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
    p.add_argument("--images-per-prompt", type=_COUNT, default=None, help="refuse folders with another sample count")
    p.add_argument("--workers", type=_COUNT, default=1, help="processes scoring prompt folders in parallel")
    p.add_argument("--out-jsonl", required=True, help="per-image records, the official evaluator's schema")
    p.add_argument("--out-json", required=True, help="per-tag accuracies and the overall score")
    p.set_defaults(func=cmd_geneval)

    p = sub.add_parser("mini-dpg", help="a DPG-Bench-style prompt set and question CSV from the mini world")
    p.add_argument("--world", required=True, help="directory written by `arrag world` (uses its reference split)")
    p.add_argument("--n", type=_COUNT, default=200, help="prompts (distinct reference captions)")
    p.add_argument("--seed", type=_INDEX, default=0)
    p.add_argument("--out", required=True, help="folder: prompts/<id>.txt + dpg_bench.csv")
    p.set_defaults(func=cmd_mini_dpg)

    p = sub.add_parser("dpg-prompts", help="DPG-Bench prompt files -> JSONL records for generate-benchmark")
    p.add_argument("--prompts-dir", default=None, help="folder of <id>.txt (default: the vendored 1065)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dpg_prompts)

    p = sub.add_parser("dpg-tiles", help="4 images per prompt -> <id>.png 2x2 tiles, as DPG-Bench's evaluator reads")
    p.add_argument("--images", required=True, help="GenEval-layout folder generated from `arrag dpg-prompts`")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dpg_tiles)

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

    p = sub.add_parser("table", help="one of the paper's tables as CSV, Markdown and LaTeX (OUT.csv/.md/.tex)")
    p.add_argument("kind", choices=["geneval", "dpg", "fidelity", "inference_time", "over_copying"])
    p.add_argument(
        "--result",
        action="append",
        default=[],
        help="per method: summary JSON (geneval, dpg), fidelity JSON, or GenEval-layout folder (over_copying); "
        "inference_time: the one JSON of `arrag bench generate`",
    )
    p.add_argument("--label", action="append", default=[], help="method name of each --result")
    p.add_argument(
        "--params",
        action="append",
        default=[],
        help="per --result: the generation.json of its images, whose parameter count fills the Params column",
    )
    p.add_argument("--paper-rows", action="store_true", help="add the paper's published rows for reference")
    p.add_argument("--note", default="", help="sentence appended to the caption")
    p.add_argument("--out", required=True, help="output prefix, e.g. results/mini/tables/geneval")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("sweep-table", help="a 2-D hyper-parameter sweep's scores: CSV + heatmap")
    p.add_argument("--summary", nargs="+", required=True, help="score records under .../name~value/ folders")
    p.add_argument(
        "--metric",
        choices=["geneval", "fid"],
        default="geneval",
        help="geneval: GenEval summaries' overall; fid: `arrag fidelity` records' FID (the paper's Figure 7)",
    )
    p.add_argument("--x", required=True, help="parameter across the heatmap")
    p.add_argument("--y", required=True, help="parameter down the heatmap")
    p.add_argument("--title", default="")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=cmd_sweep_table)

    p = sub.add_parser("fidelity", help="Table 3's metrics against real images: FID, CMMD (with a network), FWD")
    p.add_argument("--images", required=True, help="generated images: GenEval-layout folder")
    p.add_argument("--reference", required=True, help="real images: a folder of images or an images .npy")
    p.add_argument("--fid-network", default=None, help="mini:DIR (arrag train-features), inception:FILE, or none")
    p.add_argument("--cmmd-network", default=None, help="clip:WEIGHTS (file or open_clip tag), mini:DIR, or none")
    p.add_argument("--fwd-level", type=_COUNT, default=4, help="wavelet packet level (paper: 4)")
    p.add_argument("--fwd-size", type=_COUNT, default=256, help="images resized to this for FWD (paper: 256)")
    p.add_argument("--batch-size", type=_COUNT, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-json", default=None)
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("train-features", help="the mini world's feature network for mini-FID / mini-CMMD")
    p.add_argument("--world", required=True, help="directory written by `arrag world`")
    p.add_argument("--split", default="train")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="MiniFeatureConfig field")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train_features)

    p = sub.add_parser("attribution", help="generated images beside the corpus images they copied most from")
    p.add_argument("--images", action="append", required=True, help="GenEval-layout folder with copying.json")
    p.add_argument("--label", action="append", required=True, help="method name of each --images folder")
    p.add_argument("--db", default=None, help="the PatchDatabase: its images through its source table")
    p.add_argument("--source", default=None, help="or: JSON source spec of a one-source corpus (arrag tokenise)")
    p.add_argument("--size", type=_COUNT, default=32, help="pixel side the corpus images are shown at")
    p.add_argument("--n", type=_COUNT, default=4, help="images per method: those with the largest copied region")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attribution)

    p = sub.add_parser("grid", help="tile generated images (GenEval layout) with their prompts into one PNG")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-prompts", type=_COUNT, default=16)
    p.add_argument("--upscale", type=_COUNT, default=4)
    p.set_defaults(func=cmd_grid)

    from arrag.report_cli import add_results_doc_parser

    add_results_doc_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "download":  # only download rules reach the network; every other job loads local files
        from arrag.data.downloads import go_offline

        go_offline()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        # bad input: one clear line, no traceback
        print(f"arrag {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
