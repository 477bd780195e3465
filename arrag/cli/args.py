"""Flags and parsing shared by several commands: argparse types of counts and indices, `key=value` settings,
and the argument groups every command of a kind takes alike (sampling, model, method and DAiD flags, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from arrag.methods import DAID_BOUNDS, METHODS, DAiDSettings, FAiDSettings, RACM3Settings, VanillaSettings
from arrag.validation import COUNT, INDEX, POSITIVE, cli_number

COUNT_TYPE = cli_number(int, **COUNT)  # argparse types: counts >= 1, indices >= 0 (seeds, shards)
INDEX_TYPE = cli_number(int, **INDEX)


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


def sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--guidance-scale", type=cli_number(float, low=1), default=5.0, help="classifier-free guidance scale (1 = off)"
    )
    p.add_argument("--temperature", type=cli_number(float, **POSITIVE), default=1.0)
    p.add_argument("--top-k", type=COUNT_TYPE, default=None)
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument(
        "--seed", type=INDEX_TYPE, default=0, help="run seed; each image's seed derives from it and its prompt"
    )
    p.add_argument("--batch-size", type=COUNT_TYPE, default=32, help="images decoded together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")


def restart_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true", help="discard a checkpoint (<out>.partial/) and start over")


def model_args(p: argparse.ArgumentParser, help: str = "model directory (save_pretrained) or hub id") -> None:
    p.add_argument("--model", required=True, help=help)
    p.add_argument("--revision", default=None, help="pinned hub revision (commit) when --model is a hub id")


def db_devices_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db-devices",
        default=None,
        help="shard a torch_compact database's entries over these devices, e.g. cuda:0,cuda:1 (default: the model's)",
    )


def daid_args(p: argparse.ArgumentParser) -> None:
    """DAiD's flags, the same on every command that generates with DAiD (defaults and bounds: DAiDSettings)."""
    db_devices_arg(p)
    p.add_argument(
        "--daid-k", type=cli_number(int, **DAID_BOUNDS["k"]), default=DAiDSettings.k, help="retrieved patches per step"
    )
    p.add_argument(
        "--daid-weight",
        type=cli_number(float, **DAID_BOUNDS["weight"]),
        default=DAiDSettings.weight,
        help="lambda: weight of the retrieval distribution",
    )
    p.add_argument(
        "--daid-temperature",
        type=cli_number(float, **DAID_BOUNDS["temperature"]),
        default=DAiDSettings.temperature,
        help="tau: retrieval softmax temperature",
    )
    p.add_argument("--daid-unique", action="store_true", help="keep only the closest hit of each token")


def method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=list(METHODS),
        default="vanilla",
        help="racm3: --model must be an RA-CM3 model (arrag train-racm3) and --image-index its retriever",
    )
    p.add_argument("--db", default=None, help="PatchDatabase directory (arrag build-db), for daid and faid")
    p.add_argument("--faid", default=None, help="FAiD checkpoint (arrag train-faid) of --model, for --method faid")
    p.add_argument("--image-index", default=None, help="image-level index (arrag build-image-index), for racm3")
    daid_args(p)


def daid_settings(args) -> DAiDSettings:
    return DAiDSettings(
        db=args.db, k=args.daid_k, weight=args.daid_weight, temperature=args.daid_temperature, unique=args.daid_unique
    )


def method_settings(args):
    """--method and its flags -> the method's settings (arrag.methods), checked before anything loads."""
    if args.method == "daid":
        return daid_settings(args)
    if args.method == "faid":
        return FAiDSettings(db=args.db, faid=args.faid)
    if args.method == "racm3":
        return RACM3Settings(image_index=args.image_index)
    return VanillaSettings()


def sampling(args):
    """The sampling flags -> SamplingConfig (which checks them again: library users meet the same checks)."""
    from arrag.decoding.loop import SamplingConfig

    return SamplingConfig(
        guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k, greedy=args.greedy
    )


def pairs_args(p: argparse.ArgumentParser) -> None:
    pairs = p.add_mutually_exclusive_group(required=True)
    pairs.add_argument("--codes", nargs="+", help="code shards of captioned sources (arrag tokenise): the pairs")
    pairs.add_argument("--world", help="directory written by `arrag world`: the pairs are its --split")
    p.add_argument("--split", default="finetune", help="with --world: the split")
    exclude_arg(p)


def pair_source(args):
    """--codes / --world / --split / --exclude -> where the fine-tuning pairs come from (arrag.data.pairs)."""
    from arrag.data.pairs import PairSource

    return PairSource(codes=args.codes, world=args.world, split=args.split, exclude=args.exclude)


def exclude_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exclude", default=None, help="exclusion list (arrag contamination): leave its images out")


def clip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clip-model", default="ViT-B-32-quickgelu", help="open_clip model name (OpenAI ViT-B/32: the paper's 512-d)"
    )
    p.add_argument("--clip-pretrained", default="openai", help="open_clip pretrained tag or a local weights file")
    p.add_argument("--clip-sha256", default=None, help="expected SHA-256 of a local weights file")


def number(raw: str):
    """A `key=value` parameter's value: an int, else a float, else the string."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
