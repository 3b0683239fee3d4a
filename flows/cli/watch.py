"""`sage watch`: list what is new in the watched sources, evaluate only that, record the outcome in the ledger."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from flows.cli import prefect_env
from flows.cli.options import (
    EXIT_SOME_FAILED,
    Cluster,
    Corpus,
    CorpusTokens,
    Device,
    Home,
    Tiny,
    Verbose,
    app,
    check_corpus,
    console,
    fail,
    refused,
)

Sources = Annotated[list[str] | None, typer.Option(
    "--source", help="where to look (repeat for several): registry:<model>[:<release>] (the SAELens registry, fnmatch "
                     "patterns), dir:<path or fsspec URL> (a folder of SAE directories in SAELens' layout), "
                     "yaml:<path or URL> (a registry-format YAML of your own releases), hub:author=<name> or "
                     "hub:library=saelens [,repo=<pattern>][,model=<pattern>] (Hugging Face repos of SAEs in SAELens' "
                     "layout, read from the Hub's API, HF_ENDPOINT honoured)")]


@app.command("watch")
def watch_cmd(
    source: Sources = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what is new and why; evaluate and record "
                                                            "nothing")] = False,
    home: Home = None,
    tiny: Tiny = False,
    max_new: Annotated[int | None, typer.Option(min=1, help="evaluate at most N new SAEs this run; the rest wait "
                                                            "for the next")] = None,
    corpus: Corpus = None,
    corpus_tokens: CorpusTokens = None,
    cluster: Cluster = "threads",
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Evaluate the SAEs that are new since the last watch run (never seen, or their weights changed) and record
    each one's outcome in SAGE_HOME/ledger.sqlite; `sage leaderboard` then ranks them among all.

    An SAE whose model cannot be loaded here is skipped with the reason, not failed. Exit codes: 0 done (nothing new
    is done too); 2 bad input; 3 finished, but some SAEs or sources failed (each is listed)."""
    if not source:
        fail("no --source given: pass --source dir:<folder>, --source registry:<model>, --source yaml:<file> or "
             "--source hub:author=<name> (repeat for several)")
    check_corpus(corpus, corpus_tokens, "any")  # a published model's SAEs may come: --corpus-tokens applies then
    from sage_core.watch.sources import parse_source

    with refused():
        for s in source:
            _check_local(parse_source(s))
    from storage.home import SageHome

    h = SageHome(home)
    if not dry_run:
        with refused():
            h.ensure_writable()
    with prefect_env.flow_command(verbose, "libraries, the sources, Prefect's server") as start:
        from sage_core.config import EvaluateConfig, WatchConfig, ZooConfig
        from sage_core.prompts.corpus_spec import CorpusSpec
        from sage_core.prompts.task_status import MIN_ACCURACY

        with refused():
            from storage.text_corpus import absolute

            # the core metrics' text for every evaluation (offline, a published model's default hub dataset cannot be
            # read: --corpus text:FILE)
            text = {} if corpus is None else {"corpus": str(absolute(CorpusSpec.parse(corpus)))}
            cfg = WatchConfig(evaluate=EvaluateConfig(zoo=ZooConfig.tiny() if tiny else ZooConfig(), device=device,
                                                      min_task_accuracy=0.0 if tiny else MIN_ACCURACY, **text,
                                                      **({"corpus_tokens": corpus_tokens} if corpus_tokens else {})),
                              max_new=max_new)
            from flows.engine import check_cluster
            from flows.watch import run_watch

            check_cluster(cluster, device)
        if not dry_run:  # a dry run starts no server and writes nothing to Prefect's API
            start(cluster, device)
        t0 = time.perf_counter()
        with refused():
            out = run_watch(list(source), cfg=cfg, dry_run=dry_run, home=str(h.root), cluster=cluster)
    _print(out)
    console.print(f"watched in {time.perf_counter() - t0:.1f}s; ledger: {h.ledger_path()}"
                  + ("" if dry_run else "; `sage leaderboard` ranks them among all"))
    if out["counts"]["failed"] or out["source_errors"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _check_local(src) -> None:
    """A local folder or file the user typed that is not there: one line now, not a failed source after start-up."""
    from pathlib import Path

    url = getattr(src, "url", None)
    if url is None or "://" in url:
        return
    path = Path(url).expanduser()
    want_dir = src.kind == "dir"
    if not (path.is_dir() if want_dir else path.is_file()):
        what = "folder" if want_dir else "YAML file"
        raise ValueError(f"{src.kind}:{url}: no {what} there; check the path (a {what} of SAEs in SAELens' layout"
                         + (")" if want_dir else " in the SAELens registry format)"))


def _print(out: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = out["counts"]
    head = "would evaluate" if out["dry_run"] else "evaluated"
    console.print(f"{out['listed']} SAE(s) listed, {out['new']} new"
                  + ("" if out["dry_run"] else f": {c['evaluated']} evaluated, {c['failed']} failed, "
                                               f"{c['skipped']} skipped")
                  + f"; {c['unchanged']} unchanged, {c['same-weights']} with weights already scored, {c['busy']} "
                    f"busy in another watch run, {c['deferred']} deferred", highlight=False)
    rows = out["outcomes"] + [o for o in out["not_new"] if o["status"] in ("evaluate", "same-weights", "busy",
                                                                           "deferred")]
    if rows:
        t = Table(title=f"SAEs {head} this run" if not out["dry_run"] else "what a run would do")
        for col in ("SAE", "model", "status", "run", "why"):
            t.add_column(col)
        for o in rows:
            status = "new" if o["status"] == "evaluate" else o["status"]
            t.add_row(escape(_label(o)), escape(o["model"]), status, o["run"] or "", escape(o["reason"] or ""))
        console.print(t)
    for u in out["unreadable"]:
        console.print(f"[yellow]not read:[/] {escape(u['path'])} ({escape(u['reason'])})", highlight=False)
    for e in out["source_errors"]:
        console.print(f"[red]source failed:[/] {escape(e['source'])}: {escape(e['error'])}", highlight=False)


def _label(o: dict[str, Any]) -> str:
    """How the source names the SAE: release/sae_id, or the directory's name."""
    return f"{o['release']}/{o['sae_id']}" if o["release"] else o["sae_id"].rstrip("/").rsplit("/", 1)[-1]
