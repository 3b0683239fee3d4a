"""`sage fit`: the ground truth, supervised dictionaries at the located cross-sections, and how good they are."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import prefect_env, render
from flows.cli.options import (
    Cluster,
    Device,
    Home,
    Tasks,
    Tiny,
    Verbose,
    app,
    check_tasks,
    comma_list,
    console,
    refused,
    writable_home,
)


@app.command("fit")
def fit_cmd(
    home: Home = None,
    tasks: Tasks = None,
    per_group: Annotated[int, typer.Option(min=1, help="kept cross-sections per attribute and group (residual / "
                                                       "sub-layer)")] = 3,
    methods: Annotated[str, typer.Option(help="dictionary methods")] = "mean,mse,weighted",
    tiny: Tiny = False,
    cluster: Cluster = "threads",
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Fit supervised dictionaries (the ground truth) at the located cross-sections and print their quality."""
    task_list, method_list = comma_list(tasks), comma_list(methods) or ()
    check_tasks(task_list)
    h = writable_home(home)
    with prefect_env.flow_command(verbose, "libraries, the dictionary methods, Prefect's server") as start:
        from sage_core.config import ZooConfig
        from sage_core.ground_truth.dictionaries import METHODS

        with refused():
            bad = set(method_list) - set(METHODS)
            if bad or not method_list:
                raise ValueError(f"unknown dictionary methods {sorted(bad)}; use {', '.join(METHODS)}")
            cfg = (ZooConfig.tiny() if tiny else ZooConfig()).model_copy(update={"device": device})
        from flows.fit import fit_ground_truth
        from flows.settings import running_in

        start(cluster, device)
        with refused(), running_in(h, cluster, device) as eng:
            gt = eng.flow(fit_ground_truth)(cfg=cfg, home=str(h.root), per_group=per_group, methods=method_list,
                                  tasks=list(task_list) if task_list else None)
    _print_quality(h.at(gt))


def _print_quality(where) -> None:
    from rich.table import Table

    from report.tables import fmt
    from report.verdicts import ground_truth_verdicts
    from sage_core.model.hooks import short_hook
    from storage.ground_truth import read_quality

    q = read_quality(where).sort("task", "attribute", "method", "hook", "role")
    t = Table(title="ground truth: supervised dictionaries on held-out test prompts")
    figures = ("suff.", "nec.", "edit acc.", "no interv.", "n")
    for col in ("task", "attribute", "cross-section", "method", *figures):
        t.add_column(col, justify="right" if col in figures else "left")
    for r in q.iter_rows(named=True):
        head = f".H{r['head']}" if r["head"] is not None else ""
        t.add_row(r["task"], r["attribute"], f"{short_hook(r['hook'])}{head}@{r['role']}", r["method"],
                  fmt(r["sufficiency"]), fmt(r["necessity"]), fmt(r["edit_accuracy"]), fmt(r["no_intervention"]),
                  str(r["n_test"]))
    console.print(t)
    render.verdicts(ground_truth_verdicts(q))
    console.print(f"ground truth (dictionaries, quality.parquet): {where}")
