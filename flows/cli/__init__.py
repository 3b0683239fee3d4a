"""`sage` command line: thin wrappers over the flows, with readable tables and progress from the first second.

One module per command (zoo, capture, locate, fit, evaluate, report, schema); `options` holds what they share (the
apps, data root, --tiny, --verbose, comma lists, one-line errors), `render` the tables, `view` the progress view,
`prefect_env` how Prefect runs under the CLI. Importing this package loads typer and rich only: every command refuses
bad arguments before torch, TransformerLens, SAELens or Prefect are imported.
"""

from __future__ import annotations

from flows.cli import capture, evaluate, fit, leaderboard, locate, report, schema, serve, watch, zoo  # noqa: F401  (each registers its commands)
from flows.cli.options import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    app(prog_name="sage")
