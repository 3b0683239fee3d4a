"""`sage locate`: where each task attribute lives (attribution patching), validated by real activation patching."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli import prefect_env
from flows.cli.options import (
    Cluster,
    Device,
    Home,
    Tasks,
    Tiny,
    Verbose,
    app,
    check_tasks,
    check_top,
    comma_list,
    console,
    refused,
    writable_home,
)


@app.command("locate")
def locate_cmd(
    home: Home = None,
    tasks: Tasks = None,
    attributes: Annotated[str | None, typer.Option(help="comma-separated attribute names (default: all)")] = None,
    kinds: Annotated[str | None, typer.Option(help="component kinds: head,attn_out,mlp_out,resid_pre,"
                                                   "resid_post")] = None,
    share: Annotated[float, typer.Option(help="keep the smallest set covering this share of |AtP|")] = 0.8,
    cap: Annotated[int, typer.Option(help="at most this many kept components per group")] = 8,
    ig_steps: Annotated[int, typer.Option(help="1 = plain AtP; more = integrated-gradient AtP")] = 4,
    top: Annotated[int, typer.Option(help="components to print per attribute and group (at least 1)")] = 5,
    tiny: Tiny = False,
    cluster: Cluster = "threads",
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Find where each task attribute lives (attribution patching), validated by real activation patching."""
    check_top(top)
    task_list, attrs, kind_list = comma_list(tasks), comma_list(attributes), comma_list(kinds)
    check_tasks(task_list)
    from sage_core.config import ZooConfig  # pure: no Prefect, no torch model

    zoo = ZooConfig.tiny() if tiny else ZooConfig()
    if attrs:  # an attribute filter that matches nothing: refused before Prefect or torch start
        from sage_core.prompts.library import task_attributes

        with refused():
            task_attributes(list(task_list or zoo.tasks), list(attrs))
    h = writable_home(home)
    with prefect_env.flow_command(verbose, "libraries, the location settings, Prefect's server") as start:
        from sage_core.locate.attribution import RESID_KINDS, SUBLAYER_KINDS, LocateConfig, LocateError

        with refused():  # the tasks and attributes: the flow's own checks answer (in one line too)
            cfg = zoo.model_copy(update={"device": device})
            lcfg = LocateConfig(share=share, cap=cap, ig_steps=ig_steps, **({"kinds": kind_list} if kind_list else {}))
            bad = set(lcfg.kinds) - set(SUBLAYER_KINDS + RESID_KINDS)
            if bad:
                raise LocateError(f"component filter {sorted(bad)} matches nothing; use {SUBLAYER_KINDS + RESID_KINDS}")
        from flows.locate import locate
        from flows.settings import running_in

        start(cluster, device)
        with refused(), running_in(h, cluster, device) as eng:
            out = eng.flow(locate)(cfg=cfg, locate_cfg=lcfg, home=str(h.root), attributes=list(attrs) if attrs else None,
                         tasks=list(task_list) if task_list else None)
    _print_locations(h.at(out), top)


def _print_locations(where, top: int) -> None:
    """Per attribute: the top components of each group, then how well AtP agrees with real patching."""
    import polars as pl

    from storage import locations as loc_store

    ranking, val = loc_store.read_ranking(where), loc_store.read_validation(where)
    for v in val.iter_rows(named=True):
        t = Table(title=f"{v['task']} / {v['attribute']}  ({v['n_pairs']} pairs, LD clean {v['ld_clean']:.2f}, "
                        f"counterfactual {v['ld_cf']:.2f})")
        for col in ("group", "rank", "component", "role", "AtP", "patched", "kept"):
            t.add_column(col, justify="right" if col in ("rank", "AtP", "patched") else "left")
        for group in ("sublayer", "residual"):
            sub = ranking.filter((pl.col("task") == v["task"]) & (pl.col("attribute") == v["attribute"])
                                 & (pl.col("group") == group)).sort("rank").head(top)
            for r in sub.iter_rows(named=True):
                comp = f"L{r['layer']}H{r['head']}" if r["kind"] == "head" else f"L{r['layer']}.{r['kind']}"
                pe = "" if r["patch_effect"] is None else f"{r['patch_effect']:.2f}"
                t.add_row(group, str(r["rank"]), comp, r["role"], f"{r['atp']:.2f}", pe, "yes" if r["selected"] else "")
        console.print(t)
        rec = v["sublayer_recovered"]
        recovered = (f"recovering {rec:.2f} of the full effect ({v['full_effect']:.2f})" if rec == rec else
                     f"full counterfactual effect negligible ({v['full_effect']:.2f})")
        console.print(f"  sub-layer: Spearman(AtP, patching) {v['sublayer_spearman']:.2f}, top-5 agreement "
                      f"{v['sublayer_top5_agreement']:.2f}, {v['sublayer_n_selected']} kept covering "
                      f"{v['sublayer_covered_share']:.0%} of |AtP|, {recovered}")
        console.print(f"  residual : Spearman {v['residual_spearman']:.2f}, top-5 agreement "
                      f"{v['residual_top5_agreement']:.2f}, {v['residual_n_selected']} kept")
    console.print(f"locations (ranking, validation, heatmaps): {where}")
