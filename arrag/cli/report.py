"""The results document command: `arrag results-doc`, the command-line face of `arrag.report`."""

from __future__ import annotations


def cmd_results_doc(args) -> None:
    from arrag.report import write_results_document

    print(write_results_document(args.results, args.out))


def cmd_readme_section(args) -> None:
    from arrag.report import write_readme_section

    print(write_readme_section(args.readme, args.section, args.source))


def register(sub) -> None:
    p = sub.add_parser(
        "results-doc",
        help="assemble a run's tables, figures, scale table and benchmarks into one Markdown document, "
        "stamped with the commit, the machine and the date",
    )
    p.add_argument("--results", required=True, help="a profile's results folder, e.g. results/mini")
    p.add_argument("--out", required=True, help="the document to write, e.g. results/mini/RESULTS.md")
    p.set_defaults(func=cmd_results_doc)

    p = sub.add_parser(
        "readme-section",
        help="put a results file (a table a run or a bench wrote) into a Markdown file between the markers "
        "of a named section, stamped with the commit, the machine and the date",
    )
    p.add_argument("--readme", default="README.md", help="the Markdown file holding the section's markers")
    p.add_argument("--section", required=True, help="the section's name in its markers, e.g. rehearsal-scale")
    p.add_argument("--source", required=True, help="the results file, e.g. results/rehearsal/scale.md")
    p.set_defaults(func=cmd_readme_section)
