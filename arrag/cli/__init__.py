"""`arrag` command line: a thin shell over library functions. Each Snakemake rule runs one subcommand."""

from __future__ import annotations

import argparse
import sys

from arrag.cli import bench, data, downloads, evaluation, generation, models, report, retrieval, showo
from arrag.cli.args import parse_overrides

__all__ = ["build_parser", "main", "parse_overrides"]

AREAS = (
    data,
    models,
    showo,
    retrieval,
    generation,
    evaluation,
    report,
    bench,
    downloads,
)  # each registers its commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for area in AREAS:
        area.register(sub)
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
