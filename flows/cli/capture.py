"""`sage capture`: activations of the zoo model on every task's prompts, into chunked zarr stores; `--info` prints
what a store holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli import prefect_env
from flows.cli.options import (
    Cluster,
    Home,
    Tasks,
    Tiny,
    Verbose,
    app,
    check_tasks,
    comma_list,
    console,
    fail,
    refused,
    writable_home,
)

# CaptureRequest's own choices (sage_core.model.capture, which imports torch), checked here before anything heavy
# loads; tests/unit/flows/cli/test_cli_options.py holds the two equal
POSITIONS = ("all", "roles")
DTYPES = ("float32", "float16", "bfloat16")


def check_choices(positions: str, dtype: str) -> None:
    if positions not in POSITIONS:
        fail(f"--positions {positions}: use 'all' (every position) or 'roles' (only the task's role positions)")
    if dtype not in DTYPES:
        fail(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")


@app.command("capture")
def capture_cmd(
    info: Annotated[Path | None, typer.Option("--info", help="print the contents of a store and exit")] = None,
    home: Home = None,
    tasks: Tasks = None,
    hooks: Annotated[str | None, typer.Option(help="comma-separated hook names (default: resid, attn_out, mlp_out, "
                                                   "hook_z)")] = None,
    positions: Annotated[str, typer.Option(help="'all' positions or only the task's 'roles'")] = "all",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16")] = "float32",
    shards: Annotated[int | None, typer.Option(min=1, help="parallel capture shards per store (default: 2, or one "
                                                           "per GPU)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda (every GPU), cuda:N[,cuda:M...] or auto; shards share them "
                                             "round-robin")] = "auto",
    cluster: Cluster = "threads",
    tiny: Tiny = False,
    verbose: Verbose = False,
) -> None:
    """Capture activations of the zoo model on every task's prompts into chunked zarr stores."""
    if info:
        _describe(info)
        return
    task_list = comma_list(tasks)
    check_tasks(task_list)
    check_choices(positions, dtype)
    h = writable_home(home)
    with prefect_env.flow_command(verbose, "libraries, the zoo model's hooks, Prefect's server") as start:
        from sage_core.config import ZooConfig
        from sage_core.model.capture import CaptureRequest, check_hooks, default_hooks
        from sage_core.model.devices import resolve_devices
        from storage.zoo import find_model
        from tasks import loaded

        with refused():
            cfg = ZooConfig.tiny() if tiny else ZooConfig()
            if task_list:
                cfg = cfg.model_copy(update={"tasks": task_list})
            hook_list = comma_list(hooks) or default_hooks(cfg.model.n_layers)
            request = CaptureRequest(hooks=hook_list, positions=positions, dtype=dtype)
            devices = resolve_devices(device)
            n_shards = shards or (len(devices) if devices != ("cpu",) else 2)
            # the flow's tasks reuse this read of the model (tasks.loaded): it is loaded once
            check_hooks(loaded.shared_model(h, find_model(h, cfg.model.name)), hook_list)
        from flows.capture import capture
        from flows.settings import running_in

        start(cluster, device)
        with refused(), running_in(h, cluster, device, threads=n_shards) as eng:
            stores = eng.flow(capture)(request=request, cfg=cfg, home=str(h.root), n_shards=n_shards, devices=devices)
    t = Table(title="activation stores")
    for col in ("task", "chunks", "path"):
        t.add_column(col)
    for task, store in stores.items():
        t.add_row(task, str(store.n_chunks), str(h.at(store)))
    console.print(t)


def _describe(path: Path) -> None:
    """A store's arrays, shapes, dtype and provenance; a sealed store is verified chunk by chunk first, so damage is
    named rather than reported as 'incomplete'."""
    from storage.activations import ActivationStore
    from storage.atomic import StoreError, cached_marker

    try:
        s = ActivationStore(path)
        if cached_marker(s.path) is not None:
            ActivationStore.open(path)
        text = json.dumps(s.describe())
    except (StoreError, FileNotFoundError) as exc:
        fail(exc)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        fail(f"{path} is not a readable activation store ({' '.join(str(exc).split())})")
    console.print_json(text)
