"""`sage evaluate`: score SAEs against the ground truth on every task; leaderboard, report, Prefect artifacts."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from flows.cli import prefect_env, render
from flows.cli.options import (
    EXIT_SOME_FAILED,
    Cluster,
    Corpus,
    CorpusTokens,
    Device,
    Home,
    Tasks,
    Tiny,
    Top,
    Verbose,
    app,
    check_corpus,
    check_run,
    check_tasks,
    check_top,
    comma_list,
    console,
    refused,
    writable_home,
)

Model = Annotated[str | None, typer.Option(help="the built-in zoo model (default: sage-tiny, or sage-test with --tiny; "
                                                "built if missing) or a TransformerLens model name for "
                                                "from_pretrained, e.g. gpt2 (then --saes is required)")]
Saes = Annotated[str | None, typer.Option(help="comma-separated SAE specs: zoo:<name>, a SAELens directory, "
                                               "<release>/<sae_id>, py:<module>:<attr> (default: every zoo SAE). "
                                               "py:<module>:<attr> IMPORTS AND RUNS that Python code (the factory "
                                               "once)")]
Run = Annotated[str | None, typer.Option(help="run name: 1-64 letters, digits, '.', '_', '-' (default: a hash of what "
                                              "was scored); a name already used by another evaluation is refused")]


@app.command("evaluate")
def evaluate_cmd(
    home: Home = None,
    model: Model = None,
    saes: Saes = None,
    tasks: Tasks = None,
    run: Run = None,
    per_group: Annotated[int, typer.Option(min=1, help="kept cross-sections per attribute and group (residual / "
                                                       "sub-layer)")] = 2,
    projections: Annotated[bool, typer.Option(help="also score residual SAE families projected onto "
                                                   "sub-layers")] = True,
    top: Top = None,
    tiny: Tiny = False,
    corpus: Corpus = None,
    corpus_tokens: CorpusTokens = None,
    min_task_accuracy: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="score a task only where the model's held-out accuracy reaches this (default 0.6; "
                               "chance is 0.5; 0 with --tiny): below it the task is reported as not done by the "
                               "model")] = None,
    cluster: Cluster = "threads",
    device: Device = "auto",
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="allow a --model whose loading runs code from its Hugging Face repository (e.g. "
                                    "Qwen/Qwen-1_8B, microsoft/phi-2)")] = False,
    verbose: Verbose = False,
) -> None:
    """Score SAEs against the ground truth on every task: leaderboard, report, Prefect artifacts.

    Exit codes: 0 done; 2 bad input or a stage that could not run (one `error:` line); 3 finished, but some SAEs or
    stages failed: every good result is written and the failures are listed."""
    check_top(top)
    check_run(run)
    check_corpus(corpus, corpus_tokens, model)
    task_list, spec_list = comma_list(tasks), comma_list(saes) or ()
    check_tasks(task_list)
    h = writable_home(home)
    with prefect_env.flow_command(verbose, "libraries, the input checks, Prefect's server") as start:
        cfg = _config(h, tiny, model, spec_list, task_list, per_group, projections, trust_remote_code, device,
                      corpus, corpus_tokens, min_task_accuracy)
        from flows.evaluate import run_evaluate

        start(cluster, device)
        t0 = time.perf_counter()
        with refused():
            out = run_evaluate(cfg=cfg, home=str(h.root), run=run, cluster=cluster)
    _print_results(cfg, out, top, listed=bool(spec_list))
    render.loads(out.get("loads"))
    console.print(f"evaluated in {time.perf_counter() - t0:.1f}s; report: {out['report']}/README.md")
    if out["n_failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _config(h, tiny: bool, model: str | None, specs: tuple[str, ...], tasks: tuple[str, ...] | None, per_group: int,
            projections: bool, trust_remote_code: bool, device: str, corpus: str | None = None,
            corpus_tokens: int | None = None, min_task_accuracy: float | None = None):
    """The evaluation's config, every check that needs the libraries passed (the model name, the tasks the zoo has,
    every SAE spec names something, the corpus's text can be read), before Prefect starts."""
    from sage_core.config import EvaluateConfig, ZooConfig
    from sage_core.prompts.corpus_spec import CorpusSpec
    from sage_core.prompts.task_status import MIN_ACCURACY
    from storage.text_corpus import absolute, check_readable

    with refused():
        zoo = ZooConfig.tiny() if tiny else ZooConfig()
        pretrained = model if model is not None and model != zoo.model.name else None
        if pretrained is not None:
            check_pretrained_name(pretrained, trust_remote_code)
        zoo.check_tasks(tasks)
        spec = None if corpus is None else str(absolute(CorpusSpec.parse(corpus)))  # a path from here, not the cwd
        cfg = EvaluateConfig(zoo=zoo, pretrained=pretrained, saes=specs, tasks=tasks, per_group=per_group,
                             projections=projections, device=device, corpus=spec,
                             # a toy model does no task: --tiny scores every task the tokenizer poses
                             min_task_accuracy=(min_task_accuracy if min_task_accuracy is not None
                                                else 0.0 if tiny else MIN_ACCURACY),
                             **({"corpus_tokens": corpus_tokens} if corpus_tokens is not None else {}))
        if corpus_tokens is not None and not cfg.core_corpus().real_text:
            raise ValueError("--corpus-tokens applies to a text: or hf: corpus; the built-in one is read as held-out "
                             "sentences")
        if any(x.startswith("py:") for x in specs):
            from storage.py_specs import PY_SPECS_ENV

            os.environ[PY_SPECS_ENV] = "1"  # the user typed these specs: their code may run (the flow checks this)
        from tasks.plan import check_inputs

        check_inputs(cfg, h, None)  # the flow's own checks (run names were checked above)
        check_readable(h, cfg.core_corpus())  # a file that is not text, a dataset out of reach: now, not mid-run
    return cfg


def check_pretrained_name(name: str, trust_remote_code: bool = False) -> None:
    """A name TransformerLens cannot load fails in a line (with the closest names), and so does one whose loading runs
    the model repository's code unless the user said so."""
    import difflib

    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, make_model_alias_map

    aliases = make_model_alias_map()
    if name.lower() not in aliases:
        close = difflib.get_close_matches(name, list(OFFICIAL_MODEL_NAMES) + list(aliases), n=3)
        raise ValueError(f"unknown model {name!r}: not the built-in zoo model and not a TransformerLens model name"
                         + (f"; closest: {', '.join(close)}" if close else "; see `sage zoo info` for the zoo model"))
    from sage_core.model.pretrained import TRUST_ENV, check_remote_code

    check_remote_code(name, trust_remote_code)
    if trust_remote_code:
        os.environ[TRUST_ENV] = "1"  # the flow's own check (tasks.zoo.import_model) reads it


def _print_results(cfg, out: dict, top: int | None, listed: bool) -> None:
    from pathlib import Path

    import polars as pl

    from report.verdicts import VERDICT_SCHEMA

    board = pl.read_parquet(out["leaderboard"])
    ran = [s["task"] for s in out.get("task_status", []) if s["status"] == "ran"]
    if ran:
        render.leaderboard(board, ran, top)
    else:  # no task ran on this model: its SAEs' core metrics are the run's result
        from storage.scores import read_run_meta

        render.core_metrics(cfg.pretrained or cfg.zoo.model.name,
                            read_run_meta(Path(out["leaderboard"]).parent).get("core", []))
    render.verdicts(pl.DataFrame(out["verdicts"], schema=VERDICT_SCHEMA))
    if out["n_failed"]:
        from storage.reports import read_failures

        render.failures(out["n_failed"], read_failures(out["report"]))
    render.unreached(out.get("unreached", []), out.get("sections", {}), listed)
    render.task_status(cfg.pretrained or cfg.zoo.model.name, out.get("task_status", []))
    _print_corpus(out)


def _print_corpus(out: dict) -> None:
    """Which text the core metrics were computed on (the run's record holds it; the report names it too)."""
    from pathlib import Path

    from report.summary import corpus_line
    from storage.scores import read_run_meta

    about = read_run_meta(Path(out["leaderboard"]).parent).get("corpus")
    if about:
        console.print(f"core metrics on: {corpus_line(about)}", soft_wrap=True, highlight=False)
