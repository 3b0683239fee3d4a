"""`sage zoo build | schema | info`: the built-in model and its SAE zoo."""

from __future__ import annotations

import time
from pathlib import Path
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
    check_tasks,
    comma_list,
    console,
    fail,
    refused,
    writable_home,
    zoo_app,
)


@zoo_app.command("build")
def zoo_build(
    home: Home = None,
    tiny: Tiny = False,
    config: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                help="ZooConfig as JSON (see `sage zoo schema`)")] = None,
    tasks: Tasks = None,
    refresh: Annotated[bool, typer.Option(help="ignore Prefect's cache (outputs complete on disk are still "
                                               "reused)")] = False,
    cluster: Cluster = "threads",
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Build (once) the built-in model and SAE zoo, then print their metrics."""
    task_list = comma_list(tasks)
    check_tasks(task_list)
    h = writable_home(home)
    with prefect_env.flow_command(verbose, "libraries, the zoo plan, Prefect's server") as start:
        from sage_core.config import ZooConfig
        from sage_core.zoo.plan import plan_zoo

        with refused():
            cfg = ZooConfig.model_validate_json(config.read_text()) if config else \
                ZooConfig.tiny() if tiny else ZooConfig()
            if task_list:
                cfg = cfg.model_copy(update={"tasks": task_list})
            cfg = cfg.model_copy(update={"device": device})
            plan_zoo(cfg)  # bad input fails here, before Prefect starts
        console.print(f"building zoo [bold]{cfg.model.name}[/] under {h.root} ...")
        from flows.build_zoo import run_build_zoo

        start(cluster, device)
        t0 = time.perf_counter()
        with refused():
            zoo = run_build_zoo(cfg=cfg, home=str(h.root), refresh=refresh, cluster=cluster)
    console.print(f"zoo ready in {time.perf_counter() - t0:.1f}s")
    show(h, cfg.model.name, zoo)
    console.print(f"model and SAEs: {h.zoo_dir(cfg.model.name)}")


def show(h, name: str, zoo) -> None:
    """The zoo's tables, read from their files (checked against the reference's hashes)."""
    import polars as pl

    from storage.zoo import read_zoo_table

    saes = read_zoo_table(h, zoo.sae_eval) if zoo.sae_eval is not None else []
    render.zoo_tables(name, pl.DataFrame(read_zoo_table(h, zoo.model_eval)), pl.DataFrame(saes) if saes else None)


@zoo_app.command("schema")
def zoo_schema() -> None:
    """Print the JSON schema of the zoo config (for --config)."""
    import json

    from sage_core.config import ZooConfig

    print(json.dumps(ZooConfig.model_json_schema(), indent=1))


@zoo_app.command("info")
def zoo_info(
    home: Home = None,
    model: Annotated[str | None, typer.Option(help="model name (default: every model in the zoo)")] = None,
) -> None:
    """Print the zoo's task performance and SAE metrics."""
    from storage.home import SageHome
    from storage.records import checked_record
    from storage.refs import ZooRef

    h = SageHome(home)
    models = [model] if model else h.zoo_models()
    if not models:
        fail(f"no zoo under {h.root}; build one with `sage zoo build`")
    for name in models:
        with refused():  # a record that does not verify is one line, never shown as the zoo's metrics
            zoo = checked_record(h.zoo_record(name), ZooRef, "run `sage zoo build` to rewrite it")
        if zoo is None:
            console.print(f"[yellow]{name}: no finished build yet (run `sage zoo build`)[/]")
            continue
        with refused():  # a changed or damaged table: one line
            show(h, name, zoo)
        console.print(f"model and SAEs: {h.zoo_dir(name)}")
