"""`python -m arrag ...` = the `arrag` command, for environments that carry the source on PYTHONPATH rather than
an installed package (the GenEval and DPG-Bench conda environments, whose pinned torch predates ours)."""

from arrag.cli import main

raise SystemExit(main())
