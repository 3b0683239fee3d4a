"""Tables and lines the commands print: the zoo's metrics, the leaderboard (figures as `report.tables` rounds them, so
the terminal, the markdown report and the Prefect UI read the same), the ground truth's verdicts, what failed and what
could not be scored."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from flows.cli.options import console


def short_sae(name: str) -> str:
    """blocks.0.hook_resid_pre--topk-512 -> L0.resid_pre topk-512 (zoo names); other names unchanged."""
    from sage_core.model.hooks import short_hook

    if "--" in name:
        hook, rest = name.split("--", 1)
        return f"{short_hook(hook)} {rest}"
    return name


def _table(title: str, columns: list[str], left: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right")
    return t


def zoo_tables(name: str, task_metrics, sae_metrics=None) -> None:
    """The model's task performance and the SAE zoo's metrics (polars frames; `sae_metrics` None: no SAEs)."""
    from report.tables import fmt
    from sage_core.model.hooks import short_hook

    t = _table(f"{name}: task performance on held-out test prompts", ["task", "accuracy", "logit diff", "top-1", "n"],
               ("task",))
    for r in task_metrics.iter_rows(named=True):
        t.add_row(r["task"], fmt(r["accuracy"]), fmt(r["logit_diff"]), fmt(r["top1"]), str(r["n"]))
    console.print(t)
    if sae_metrics is None:
        return
    t = _table(f"{name}: SAE zoo on held-out text", ["hook", "arch", "d_sae", "expl. var", "L0", "dead", "CE rec.",
                                                      "train s"], ("hook", "arch"))
    for r in sae_metrics.iter_rows(named=True):
        t.add_row(short_hook(r["hook"]), r["architecture"], str(r["d_sae"]), fmt(r["explained_variance"]),
                  f"{r['l0']:.1f}", fmt(r["dead_share"]), fmt(r["ce_loss_recovered"]), f"{r['train_seconds'] or 0:.0f}")
    console.print(t)


def leaderboard(board, tasks: list[str] | None = None, top: int | None = None) -> None:
    """One table per task, best summary first, controls coloured (and always shown); then the controls' verdict. The
    cells are the report's (`report.tables`), less the kind column: the colour and the control:* names say it."""
    import polars as pl
    from rich import box

    from report.controls import controls_verdict
    from report.tables import HEADERS, table_cells, task_names, task_rows

    keep = [i for i, h in enumerate(HEADERS) if h != "kind"]
    for task in tasks or task_names(board):
        b = board.filter(pl.col("task") == task)
        if top:
            best = [r["sae"] for r in task_rows(b, task) if r["kind"] == "trained"][:top]
            b = b.filter((pl.col("kind") != "trained") | pl.col("sae").is_in(best))
        t = _table(f"{task}: SAEs against the ground truth (means over the cross-sections each reaches)",
                   [HEADERS[i] for i in keep], ("SAE", "mapping"))
        t.box, t.pad_edge, t.collapse_padding = box.SIMPLE_HEAD, False, True
        t.columns[keep.index(HEADERS.index("SAE"))].overflow = "fold"  # a long projection name wraps, whole
        for r, cells in zip(task_rows(b, task), table_cells(b, task), strict=True):
            style = "green" if r["kind"] == "oracle" else "red" if r["kind"] == "random" else None
            cells = [short_sae(c) if HEADERS[i] == "SAE" else c for i, c in enumerate(cells)]
            if r["status"] != "ok":
                t.add_row(cells[0], cells[1], cells[3], f"[red]{r['status'][:200]}[/]", style=style)
                continue
            t.add_row(*(cells[i] for i in keep), style=style)
        console.print(t)
        ok, text = controls_verdict(board, task)
        colour = "green" if ok else "yellow" if ok is None else "red"
        console.print(f"controls on {task}: [{colour}]{text}[/{colour}]")


def run_header(run: str, meta: dict[str, Any], board) -> None:
    """Which run this is: its name, model, SAEs (named, the first few), tasks and when it was made."""
    from rich.markup import escape

    names = list(dict.fromkeys(str(s) for s in (board["sae"].to_list() if "sae" in board.columns else [])
                               if not str(s).startswith("control:")))
    names = names or [str(c.get("sae")) for c in meta.get("core", [])]
    shown = ", ".join(short_sae(n) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    tasks = ", ".join(meta.get("tasks", [])) or "none"
    console.print(f"run [bold]{escape(run)}[/]: model {escape(str(meta.get('model', '?')))}, "
                  f"{meta.get('n_saes', len(names))} SAE(s) ({escape(shown) or 'none'}), tasks {escape(tasks)}, "
                  f"made {escape(str(meta.get('created', '?')))}", highlight=False, soft_wrap=True)


def verdicts(rows) -> None:
    """The ground truth's verdict per attribute (`report.verdicts.ground_truth_verdicts`), one line each."""
    from report.verdicts import BAR_TEXT, verdict_line

    if rows.is_empty():
        return
    console.print(f"ground truth per attribute ({BAR_TEXT}):")
    for r in rows.iter_rows(named=True):
        style = "green" if r["verdict"] == "holds" else "yellow"
        console.print(f"  {r['task']} [{style}]{verdict_line(r)}[/{style}]")


def failures(n_failed: int, table) -> None:
    console.print(f"[yellow]{n_failed} SAE(s) or stage(s) failed (the rest completed):[/]")
    for f in table.iter_rows(named=True):
        console.print(f"  failed: {f['sae']} ({f['stage']}): {f['error']}", soft_wrap=True, highlight=False)


def unreached(items: list[dict[str, Any]], sections: dict[str, list[str]], listed: bool) -> None:
    """SAEs a task could not score: their hook holds none of its kept cross-sections (named when the user chose the
    SAEs, counted for the whole zoo)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for u in items:
        by_task.setdefault(u["task"], []).append(u)
    for task, those in by_task.items():
        kept = ", ".join(sections.get(task, [])) or "none"
        if listed:
            for u in those:
                console.print(f"not scored on {task}: {u['sae']} (no kept cross-section at {u['hook']}; kept hooks: "
                              f"{kept})", soft_wrap=True, highlight=False)
        else:
            console.print(f"{task}: {len(those)} SAE(s) sit at hooks without a kept cross-section (kept hooks: {kept})",
                          soft_wrap=True, highlight=False)


def task_status(model: str, rows: list[dict[str, Any]]) -> None:
    """Which tasks ran on the model and why the others did not (the tokenizer cannot pose it, or the model does not do
    it), with the words fitting each task to the tokenizer dropped."""
    from rich.markup import escape

    from sage_core.prompts.task_status import TaskStatus

    for row in rows:
        s = TaskStatus.model_validate(row)
        colour = "" if s.runs else "[yellow]"
        console.print(f"{colour}{escape(s.line(model))}{'[/]' if colour else ''}", soft_wrap=True, highlight=False)
        if s.vocabulary.startswith("dropped"):
            console.print(f"  vocabulary: {escape(s.vocabulary)}", soft_wrap=True, highlight=False)


def core_metrics(model: str, rows: list[dict[str, Any]]) -> None:
    """Every SAE's core metrics on the run's text: the result of a run where no task ran on the model."""
    from report.summary import CORE_COLUMNS
    from report.tables import fmt

    t = _table(f"core metrics of the SAEs of {model} (no task ran on it)", ["SAE", *(h for _, h in CORE_COLUMNS)],
               ("SAE",))
    for r in sorted(rows, key=lambda r: str(r.get("sae"))):
        t.add_row(str(r.get("sae")), *(fmt(r.get(k)) for k, _ in CORE_COLUMNS))
    console.print(t)


def loads(counts: dict[str, int] | None) -> None:
    """What the run read from disk, on how many worker processes (each reads the model and an SAE at most once)."""
    if not counts:
        return
    console.print(f"loads: model {counts['model']}, SAEs {counts['sae']}, section references {counts['references']} "
                  f"on {counts['processes']} worker process(es)", highlight=False)


def across_runs(result, top: int | None = None) -> None:
    """`storage.boards.AcrossRuns`: per (model, task) one table per ground truth (the most recent run's first; a note
    when there are several: their summaries are not comparable), each with its ranked SAEs (best `top`), the ones
    without a rank and the controls of its latest run as reference lines; then SAEs with no result on any task, and
    the warnings."""
    import polars as pl
    from rich.markup import escape

    rows, ctrl, groups = result.rows, result.controls, result.groups
    for model, task in groups.select("model", "task").unique(maintain_order=True).iter_rows():
        these = groups.filter((pl.col("model") == model) & (pl.col("task") == task))
        if these.height > 1:
            console.print(f"{model} on {task}: {these.height} ground truths; scores against different ground truths "
                          "are not comparable; each table ranks its own (the most recent run's first)",
                          highlight=False)
        for key, runs in these.select("ground_truth", "runs").iter_rows():
            mine = (pl.col("model") == model) & (pl.col("task") == task) & pl.col("ground_truth").eq_missing(key)
            _across_table(model, task, key, runs, rows.filter(mine), ctrl.filter(mine), top)
    for r in rows.filter(pl.col("task").is_null()).iter_rows(named=True):
        console.print(f"no result: {r['model']} {escape(r['sae'])} ({r['content_hash'][:10]}, {escape(r['source'])}, "
                      f"run {escape(r['run'])}): [red]{escape(str(r['status'])[:200])}[/]", soft_wrap=True,
                      highlight=False)
    for line in result.not_run:  # a task the latest run of a model could not pose or the model does not do
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True, highlight=False)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True, highlight=False)


def _runs(runs: list[str]) -> str:
    """The runs a table shows, oldest first; a long list keeps the first and the latest two."""
    shown = runs if len(runs) <= 4 else [runs[0], "...", *runs[-2:]]
    return ("run " if len(runs) == 1 else "runs ") + ", ".join(shown) + (f"; {len(runs)} in all" if len(runs) > 4
                                                                          else "")


def _across_table(model: str, task: str, key: str | None, runs: list[str], here, refs, top: int | None) -> None:
    """One ground truth's table of `across_runs`: `here` its SAE rows, `refs` its controls."""
    import polars as pl
    from rich import box
    from rich.markup import escape

    from report.tables import RANK_COLUMNS, fmt
    from sage_core.model.hooks import short_hook

    gt = f"ground truth {key or 'unknown'}"
    metrics = [(c, h) for c, h in RANK_COLUMNS if c != "n_sections"]  # the summary and its parts, as defined
    heads = ["rank", "SAE", "hash", "source", "hook / mapping", *(h for _, h in metrics), "run", "evaluated"]
    ranked = here.filter(pl.col("rank").is_not_null())
    t = _table(escape(f"{model} on {task}, {gt} ({_runs(runs)}): latest result per SAE weights"), heads,
               ("SAE", "hash", "source", "hook / mapping", "run", "evaluated"))
    t.box, t.pad_edge, t.collapse_padding = box.SIMPLE_HEAD, False, True
    for col in ("SAE", "source"):
        t.columns[heads.index(col)].overflow = "fold"
    for r in ranked.head(top or ranked.height).iter_rows(named=True):
        where = f"{short_hook(r['hook'])} {r['mapping']}" if r.get("hook") else str(r["mapping"])
        t.add_row(str(r["rank"]), escape(short_sae(r["sae"])), r["content_hash"][:10], escape(r["source"] or ""),
                  escape(where), *(fmt(r.get(c)) for c, _ in metrics), escape(r["run"]), _when(r["evaluated_at"]))
    console.print(t)
    if top and ranked.height > top:
        console.print(f"best {top} of {ranked.height} ranked SAEs shown", highlight=False)
    for r in here.filter(pl.col("rank").is_null()).iter_rows(named=True):
        console.print(f"  not ranked on {task}: {escape(r['sae'])} ({r['content_hash'][:10]}, run "
                      f"{escape(r['run'])}): [red]{escape(str(r['status'])[:200])}[/]", soft_wrap=True,
                      highlight=False)
    if not refs.is_empty():
        parts = ", ".join(f"{k} {fmt(s)}" for k, s in refs.select("kind", "summary").iter_rows())
        console.print(f"controls on {task}, {gt} (run {escape(refs['run'][0])}): {parts}", highlight=False)


def _when(stamp: str | None) -> str:
    """2024-06-01T03:12:45.123456+00:00 -> 2024-06-01 03:12 (UTC)."""
    return (stamp or "")[:16].replace("T", " ")
