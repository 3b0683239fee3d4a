"""`sage` command line: thin wrappers over the flows, with readable tables."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="SAGE: score sparse autoencoders against ground-truth features on real tasks.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="The built-in model and SAE zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console(width=None if sys.stdout.isatty() else 140)


def short_hook(hook: str) -> str:
    """blocks.1.attn.hook_z -> L1.attn.z ; blocks.0.hook_resid_pre -> L0.resid_pre"""
    parts = hook.split(".")
    if parts[0] != "blocks":
        return hook
    return f"L{parts[1]}." + ".".join(p.removeprefix("hook_") for p in parts[2:])


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens' per-SAE bars interleave badly across parallel tasks
    # the temporary local server can take >20 s to start on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def print_zoo(home_dir: str | None, model: str | None = None) -> None:
    import polars as pl

    from storage.home import SageHome

    h = SageHome(home_dir)
    models = [model] if model else sorted(p.name for p in (h.root / "zoo").glob("*") if p.is_dir())
    if not models:
        _fail(FileNotFoundError(f"no zoo under {h.root}; build one with `sage zoo build`"))
    for name in models:
        report = h.zoo_report(name)
        tm, sm = report / "task_metrics.parquet", report / "sae_metrics.parquet"
        if not tm.exists():
            console.print(f"[yellow]{name}: no evaluation yet (run `sage zoo build`)[/]")
            continue
        t = Table(title=f"{name}: task performance on held-out test prompts")
        for col in ("task", "accuracy", "logit diff", "top-1", "n"):
            t.add_column(col, justify="left" if col == "task" else "right")
        for r in pl.read_parquet(tm).iter_rows(named=True):
            t.add_row(r["task"], f"{r['accuracy']:.3f}", f"{r['logit_diff']:.2f}", f"{r['top1']:.3f}", str(r["n"]))
        console.print(t)
        if sm.exists():
            t = Table(title=f"{name}: SAE zoo on held-out text")
            for col in ("hook", "arch", "d_sae", "expl. var", "L0", "dead", "CE rec.", "train s"):
                t.add_column(col, justify="left" if col in ("hook", "arch") else "right")
            for r in pl.read_parquet(sm).iter_rows(named=True):
                t.add_row(short_hook(r["hook"]), r["architecture"], str(r["d_sae"]), f"{r['explained_variance']:.3f}",
                          f"{r['l0']:.1f}", f"{r['dead_share']:.2f}", f"{r['ce_loss_recovered']:.3f}",
                          f"{r['train_seconds'] or 0:.0f}")
            console.print(t)
        console.print(f"model and SAEs: {h.zoo_dir(name)}")


@zoo_app.command("build")
def zoo_build(
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    tiny: bool = typer.Option(False, help="toy sizes, for a smoke test in seconds"),
    refresh: bool = typer.Option(False, help="ignore Prefect's cache (outputs complete on disk are still reused)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's task-run logs"),
) -> None:
    """Build (once) the built-in model and SAE zoo, then print their metrics."""
    _quiet_prefect(verbose)
    from flows.build_zoo import run_build_zoo
    from sage_core.config import ZooConfig

    cfg = ZooConfig.tiny() if tiny else ZooConfig()
    console.print(f"building zoo [bold]{cfg.model.name}[/] under {Path(home or './sage-data').resolve()} ...")
    t0 = time.perf_counter()
    try:
        out = run_build_zoo(cfg=cfg, home=home, refresh=refresh)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"zoo ready in {time.perf_counter() - t0:.1f}s")
    print_zoo(out["home"], cfg.model.name)


@zoo_app.command("info")
def zoo_info(
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    model: str = typer.Option(None, help="model name (default: every model in the zoo)"),
) -> None:
    """Print the zoo's task performance and SAE metrics."""
    print_zoo(home, model)


def main() -> None:  # pragma: no cover
    app(prog_name="sage")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
