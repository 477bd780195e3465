"""The results document command: `arrag results-doc`, the command-line face of `arrag.report`."""

from __future__ import annotations


def cmd_results_doc(args) -> None:
    from arrag.report import write_results_document

    print(write_results_document(args.results, args.out))


def register(sub) -> None:
    p = sub.add_parser(
        "results-doc",
        help="assemble a run's tables, figures, scale table and benchmarks into one Markdown document, "
        "stamped with the commit, the machine and the date",
    )
    p.add_argument("--results", required=True, help="a profile's results folder, e.g. results/mini")
    p.add_argument("--out", required=True, help="the document to write, e.g. results/mini/RESULTS.md")
    p.set_defaults(func=cmd_results_doc)
