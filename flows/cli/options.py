"""What every command shares: the typer apps, the options (data root, --tiny, --verbose), comma-separated lists, the
checks that need nothing heavy, and the one-line error with its exit code.

Light by design: typer and rich only at import; a check imports what it needs, and nothing here imports torch,
TransformerLens, SAELens or Prefect, so bad arguments are refused in about a second.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 3
EXIT_CODES = ("Exit codes: 0 done; 2 bad input or a stage that could not run (one `error:` line says what to do); "
              "3 sage evaluate finished but some SAEs or stages failed (every good result is written; the failures "
              "are listed).")

app = typer.Typer(help=f"SAGE: score sparse autoencoders against ground-truth features on real tasks.\n\n{EXIT_CODES}",
                  no_args_is_help=True, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="The built-in model and SAE zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

# results (tables, the error line) on stdout; progress and Prefect's logs on stderr. Without a terminal (a log file)
# the leaderboard's 14 columns get the width they need. No emoji codes: `local:-1:` is not a thumbs-down
console = Console(width=None if sys.stdout.isatty() else 200, emoji=False)

Home = Annotated[str | None, typer.Option(envvar="SAGE_HOME", help="data root (default ./sage-data)")]
Tiny = Annotated[bool, typer.Option(help="the --tiny zoo: toy sizes, for a smoke test in seconds")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs on the console (the Prefect UI "
                                                                  "gets them anyway)")]
Tasks = Annotated[str | None, typer.Option(help="comma-separated task names (default: all the zoo's tasks)")]


def _cluster_form(value: str) -> str:
    """--cluster, checked as it is parsed (before any heavy import): its form, and that a named scheduler's address
    answers (`flows.cluster_spec`: the standard library only); else one line."""
    from flows.cluster_spec import check_form

    with refused():
        check_form(value)
    return value


Cluster = Annotated[str, typer.Option(callback=_cluster_form,
                                      help="where tasks run: threads (this process), local[:N] (a Dask cluster of N "
                                           "worker processes here; with GPUs one per GPU) or tcp://HOST:PORT (a "
                                           "running Dask scheduler; SAGE_HOME must be shared with its workers). "
                                           "Work on a worker that dies runs again on another or its restarted "
                                           "one; a cluster left with no worker for SAGE_WORKER_WAIT_S seconds "
                                           "(600) fails the run's remaining SAEs in one line each")]
Device = Annotated[str, typer.Option(help="cpu, cuda (every GPU), cuda:N[,cuda:M...] or auto (every visible GPU, "
                                          "else the CPU)")]
Top = Annotated[int | None, typer.Option(help="print only the best N (>= 1) trained SAEs per task (the report has "
                                              "all)")]
Corpus = Annotated[str | None, typer.Option(help="the text of the core metrics (CE loss recovered, KL, EV, L0, dead "
                                                 "share): builtin, text:PATH (a UTF-8 file) or hf:DATASET[:SPLIT[:COLUMN]]"
                                                 " (a Hugging Face dataset, streamed; split train, column text). "
                                                 "Default: builtin for the built-in model, hf:NeelNanda/pile-10k for a "
                                                 "--model")]
CorpusTokens = Annotated[int | None, typer.Option(help="tokens of a text: or hf: corpus the core metrics read: its "
                                                       "first N, in sequences of 128 (at most the model's n_ctx), BOS "
                                                       "first (default 131072)")]


def comma_list(text: str | None) -> tuple[str, ...] | None:
    """'a, b,,c' -> ('a', 'b', 'c'); None (or only commas) -> None: the option was not given."""
    items = tuple(x.strip() for x in (text or "").split(",") if x.strip())
    return items or None


def one_line(exc: BaseException) -> str:
    """An exception as one line; a pydantic ValidationError as 'field: message' of its first error."""
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ == "ValidationError" and callable(errors):
        first = errors()[0]
        where = ".".join(map(str, first.get("loc", ())))
        return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", exc))
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(exc: BaseException | str) -> NoReturn:
    """Stop the progress view, print one `error:` line on stdout, exit 2."""
    from rich.markup import escape

    from flows.cli import view

    view.stop()
    msg = exc if isinstance(exc, str) else one_line(exc)
    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def refused() -> Iterator[None]:
    """Bad input and stages that cannot run end as one line: every SAGE error is a ValueError (pydantic's
    ValidationError too), a StoreError (a RuntimeError) or an OSError."""
    try:
        yield
    except (ValueError, RuntimeError, OSError) as exc:
        fail(exc)


def check_top(top: int | None) -> None:
    if top is not None and top < 1:
        fail(f"--top {top}: give a number of SAEs of at least 1, or leave --top out to print all of them")


def check_tasks(names: tuple[str, ...] | None) -> None:
    """Unknown task names, with the closest one and the list (the task library: no model, no torch)."""
    from sage_core.prompts.library import get_task

    with refused():
        for t in names or ():
            get_task(t)


def check_corpus(corpus: str | None, tokens: int | None, model: str | None) -> None:
    """A malformed --corpus, or --corpus-tokens where the corpus is the built-in one (no torch: the spec is pure)."""
    from sage_core.prompts.corpus_spec import CorpusSpec

    with refused():
        spec = CorpusSpec.parse(corpus) if corpus is not None else None
    if tokens is not None and tokens < 2:
        fail(f"--corpus-tokens {tokens}: give a number of tokens, at least one sequence's")
    if tokens is not None and model is None and (spec is None or not spec.real_text):
        fail("--corpus-tokens applies to a text: or hf: corpus; the built-in one is read as held-out sentences")


def check_run(run: str | None) -> None:
    from storage.home import check_run_name

    if run is not None:
        with refused():
            check_run_name(run)


def writable_home(home: str | None):
    """The data root, checked (a writable directory, created if missing) before any compute; else one line."""
    from storage.home import SageHome

    h = SageHome(home)
    with refused():
        h.ensure_writable()
    return h
