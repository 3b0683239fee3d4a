"""`sage` command line: thin wrappers over the flows, with readable tables."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from report.verdicts import short_hook

EXIT_CODES = ("Exit codes: 0 done; 2 bad input or a stage that could not run (one `error:` line says what to do); "
              "3 sage evaluate finished but some SAEs or stages failed (every good result is written; the failures "
              "are listed).")
EXIT_SOME_FAILED = 3
app = typer.Typer(help=f"SAGE: score sparse autoencoders against ground-truth features on real tasks.\n\n{EXIT_CODES}",
                  no_args_is_help=True, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="The built-in model and SAE zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console(width=None if sys.stdout.isatty() else 140)


def short_sae(name: str) -> str:
    """blocks.0.hook_resid_pre--topk-512 -> L0.resid_pre topk-512 (zoo names); other names unchanged."""
    if "--" in name:
        hook, rest = name.split("--", 1)
        return f"{short_hook(hook)} {rest}"
    return name


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    msg = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the exception's text holds
    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _writable_home(home: str | None):
    """The data root, checked (a writable directory, created if missing) before any compute; else one line."""
    from storage.atomic import StoreError
    from storage.home import SageHome

    h = SageHome(home)
    try:
        h.ensure_writable()
    except StoreError as exc:
        _fail(exc)
    return h


def _check_top(top: int | None) -> None:
    if top is not None and top < 1:
        _fail(ValueError(f"--top {top}: give a number of SAEs of at least 1, or leave --top out to print all of them"))


# The temporary Prefect server (uvicorn) is a child of this process; started as Prefect starts it, it outlives a
# `kill -9` of the CLI. This launcher asks Linux to SIGTERM it when its parent dies, then runs uvicorn as `-m` would.
_DEATHSIG_LAUNCHER = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the parent died before prctl took effect\n"
    "sys.argv = ['uvicorn', *sys.argv[2:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def _server_dies_with_cli() -> None:
    """Start Prefect's temporary server now, from the main thread (the thread PR_SET_PDEATHSIG watches), through the
    launcher above; Prefect reuses this one instance for the whole run. Nothing to do when PREFECT_API_URL names a
    server, or off Linux (the server then stops only through Prefect's atexit hook)."""
    if not sys.platform.startswith("linux"):
        return
    from types import SimpleNamespace

    from prefect.server.api import server as srv
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    instance = srv.SubprocessASGIServer()
    if instance.running:
        return
    plain = instance._run_uvicorn_command
    real_popen = srv.subprocess.Popen

    def popen(args, **kw):
        if list(args[:3]) == [sys.executable, "-m", "uvicorn"]:
            args = [sys.executable, "-c", _DEATHSIG_LAUNCHER, str(os.getpid()), *args[3:]]
        return real_popen(args, **kw)

    def run_uvicorn():
        saved = srv.subprocess
        srv.subprocess = SimpleNamespace(Popen=popen)  # only server.py's name, only for this call
        try:
            return plain()
        finally:
            srv.subprocess = saved

    instance._run_uvicorn_command = run_uvicorn
    instance.start()


class _NoTracebackFormatter:
    """Wraps the console handler's formatter: the record's first line, no traceback. The UI's handler (APILogHandler)
    runs first on the same record and still sends the traceback; the record is restored afterwards."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def format(self, record):
        import logging

        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            text = (self.inner or logging.Formatter()).format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return text.splitlines()[0] if text else text


def _console_without_tracebacks(verbose: bool) -> None:
    """Prefect logs every failed task with its full traceback on the console; without --verbose the console keeps one
    line per failure (the CLI lists the failures itself), while the Prefect UI still gets the tracebacks."""
    if verbose:
        return
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for name in (None, "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTracebackFormatter):
                handler.setFormatter(_NoTracebackFormatter(handler.formatter))


def _prefect_run_setup(verbose: bool) -> None:
    """Before a flow runs from the CLI: tracebacks off the console, the temporary server tied to this process."""
    _console_without_tracebacks(verbose)
    try:
        _server_dies_with_cli()
    except (AttributeError, TypeError, ImportError) as exc:
        # it leans on Prefect internals; where they differ, Prefect starts (and at exit stops) its server itself
        console.print(f"[yellow]note:[/] the temporary Prefect server is not tied to this process ({exc}); a kill -9 "
                      "may leave it running")


def _zoo_config(tiny: bool, tasks: str | None):
    """The built-in (or --tiny) zoo config, restricted to `tasks`; unknown task names raise a one-line error."""
    from sage_core.config import ZooConfig
    from sage_core.prompts.library import get_task

    cfg = ZooConfig.tiny() if tiny else ZooConfig()
    if tasks:
        cfg = cfg.model_copy(update={"tasks": tuple(t.strip() for t in tasks.split(",") if t.strip())})
    for t in cfg.tasks:
        get_task(t)
    return cfg


def _quiet_prefect(verbose: bool) -> None:
    import warnings

    warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    # the temporary server logs its own shutdown races (events still in flight) as errors; they are not ours
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
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
    config: Path = typer.Option(None, exists=True, dir_okay=False, help="ZooConfig as JSON (see `sage zoo schema`)"),
    tasks: str = typer.Option(None, help="comma-separated task names (default: all built-in tasks)"),
    refresh: bool = typer.Option(False, help="ignore Prefect's cache (outputs complete on disk are still reused)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's task-run logs"),
) -> None:
    """Build (once) the built-in model and SAE zoo, then print their metrics."""
    _quiet_prefect(verbose)
    from pydantic import ValidationError

    from flows.build_zoo import run_build_zoo
    from sage_core.config import ZooConfig

    try:
        cfg = ZooConfig.model_validate_json(config.read_text()) if config else ZooConfig.tiny() if tiny else ZooConfig()
        if tasks:
            cfg = cfg.model_copy(update={"tasks": tuple(t.strip() for t in tasks.split(",") if t.strip())})
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(ValueError(f"invalid config {config}: {'.'.join(map(str, err['loc']))}: {err['msg']}"))
    h = _writable_home(home)
    console.print(f"building zoo [bold]{cfg.model.name}[/] under {h.root} ...")
    t0 = time.perf_counter()
    try:
        from sage_core.zoo.plan import plan_zoo

        plan_zoo(cfg)  # bad input fails here, before Prefect starts
        _prefect_run_setup(verbose)
        out = run_build_zoo(cfg=cfg, home=home, refresh=refresh)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    console.print(f"zoo ready in {time.perf_counter() - t0:.1f}s")
    print_zoo(out["home"], cfg.model.name)


@zoo_app.command("schema")
def zoo_schema() -> None:
    """Print the JSON schema of the zoo config (for --config)."""
    import json

    from sage_core.config import ZooConfig

    print(json.dumps(ZooConfig.model_json_schema(), indent=1))


@zoo_app.command("info")
def zoo_info(
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    model: str = typer.Option(None, help="model name (default: every model in the zoo)"),
) -> None:
    """Print the zoo's task performance and SAE metrics."""
    print_zoo(home, model)


def _watch_progress(root: Path, since: float, done_event, label: str) -> None:
    """Poll the stores being written (their _progress records) and draw one bar; Prefect runs the work."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from storage.activations import ActivationStore

    def counts() -> tuple[int, int]:
        done = total = 0
        for z in (root / "activations").glob("*/*.zarr"):
            meta = z / "zarr.json"
            recs = list((z / "_progress").glob("*.json")) if (z / "_progress").is_dir() else []
            if not meta.exists() or (meta.stat().st_mtime < since and not any(r.stat().st_mtime >= since
                                                                                for r in recs)):
                continue
            try:
                s = ActivationStore(z)
                total += s.n_chunks
                done += len(recs)
            except Exception:
                continue
        return done, total

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        t = bar.add_task(label, total=None)
        while not done_event.wait(0.5):
            d, n = counts()
            bar.update(t, completed=d, total=n or None)
        d, n = counts()
        bar.update(t, completed=d, total=n or d or 1)


@app.command("capture")
def capture_cmd(
    info: Path = typer.Option(None, "--info", help="print the contents of a store and exit"),
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    tasks: str = typer.Option(None, help="comma-separated task names (default: all built-in tasks)"),
    hooks: str = typer.Option(None, help="comma-separated hook names (default: resid, attn_out, mlp_out, hook_z)"),
    positions: str = typer.Option("all", help="'all' positions or only the task's 'roles'"),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16"),
    shards: int = typer.Option(None, min=1, help="parallel capture shards per store (default: 2, or one per GPU)"),
    device: str = typer.Option("cpu", help="cpu, cuda (every GPU), cuda:N[,cuda:M...] or auto; shards share them "
                                           "round-robin"),
    tiny: bool = typer.Option(False, help="use the --tiny zoo"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Capture activations of the zoo model on every task's prompts into chunked zarr stores."""
    _quiet_prefect(verbose)
    import json
    import threading

    from pydantic import ValidationError

    from sage_core.config import ZooConfig
    from sage_core.model.capture import CaptureRequest
    from storage.activations import ActivationStore
    from storage.atomic import StoreError, cached_marker

    if info:
        try:
            s = ActivationStore(info)
            if cached_marker(s.path) is not None:  # sealed: verify every chunk, so damage is named, not "incomplete"
                ActivationStore.open(info)
            console.print_json(json.dumps(s.describe()))
        except (StoreError, FileNotFoundError) as exc:
            _fail(exc)
        except Exception as exc:
            _fail(ValueError(f"{info} is not a readable activation store ({exc})"))
        return
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.capture import capture
    from flows.settings import results_in
    from sage_core.model.capture import default_hooks

    cfg = ZooConfig.tiny() if tiny else ZooConfig()
    if tasks:
        cfg = cfg.model_copy(update={"tasks": tuple(t.strip() for t in tasks.split(","))})
    try:
        from sage_core.prompts.library import get_task

        for t in cfg.tasks:
            get_task(t)
        hook_list = tuple(h.strip() for h in hooks.split(",")) if hooks else default_hooks(cfg.model.n_layers)
        request = CaptureRequest(hooks=hook_list, positions=positions, dtype=dtype)
        h = _writable_home(home)
        from sage_core.model.capture import check_hooks
        from sage_core.model.devices import resolve_devices
        from storage.zoo import load_model

        devices = resolve_devices(device)
        n_shards = shards or (len(devices) if devices != ("cpu",) else 2)
        check_hooks(load_model(h.model_dir(cfg.model.name)), hook_list)
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"))
    except (ValueError, StoreError) as exc:
        _fail(exc)
    done = threading.Event()
    since = time.time() - 1
    _prefect_run_setup(verbose)
    watcher = threading.Thread(target=_watch_progress, args=(h.root, since, done, "capturing"), daemon=True)
    watcher.start()
    try:
        with results_in(h):
            flow = capture if n_shards <= 2 else capture.with_options(task_runner=ThreadPoolTaskRunner(n_shards))
            out = flow(request=request, cfg=cfg, home=str(h.root), n_shards=n_shards, devices=devices)
    except (ValueError, RuntimeError, OSError) as exc:
        done.set()
        watcher.join()
        _fail(exc)
    done.set()
    watcher.join()
    t = Table(title="activation stores")
    for col in ("task", "chunks", "path"):
        t.add_column(col)
    for r in out:
        t.add_row(r["task"], str(r["n_chunks"]), str(h.at(r["path"])))
    console.print(t)


@app.command("locate")
def locate_cmd(
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    tasks: str = typer.Option(None, help="comma-separated task names (default: all built-in tasks)"),
    attributes: str = typer.Option(None, help="comma-separated attribute names (default: all)"),
    kinds: str = typer.Option(None, help="component kinds: head,attn_out,mlp_out,resid_pre,resid_post"),
    share: float = typer.Option(0.8, help="keep the smallest set covering this share of |AtP|"),
    cap: int = typer.Option(8, help="at most this many kept components per group"),
    ig_steps: int = typer.Option(4, help="1 = plain AtP; more = integrated-gradient AtP"),
    top: int = typer.Option(5, help="components to print per attribute and group (at least 1)"),
    tiny: bool = typer.Option(False, help="use the --tiny zoo"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Find where each task attribute lives (attribution patching), validated by real activation patching."""
    _quiet_prefect(verbose)
    _check_top(top)
    import polars as pl
    from pydantic import ValidationError

    from sage_core.locate.attribution import LocateConfig, LocateError
    from sage_core.prompts.library import get_task

    try:
        cfg = _zoo_config(tiny, tasks)
        lcfg = LocateConfig(share=share, cap=cap, ig_steps=ig_steps,
                            **({"kinds": tuple(k.strip() for k in kinds.split(","))} if kinds else {}))
        from sage_core.locate.attribution import RESID_KINDS, SUBLAYER_KINDS

        bad = set(lcfg.kinds) - set(SUBLAYER_KINDS + RESID_KINDS)
        if bad:
            raise LocateError(f"component filter {sorted(bad)} matches nothing; use {SUBLAYER_KINDS + RESID_KINDS}")
        attrs = [a.strip() for a in attributes.split(",")] if attributes else None
        known = {a for t in cfg.tasks for a in get_task(t).attribute_names()}
        if attrs and not set(attrs) & known:
            raise LocateError(f"no attribute {attrs} in tasks {list(cfg.tasks)}; they have {sorted(known)}")
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"))
    except ValueError as exc:
        _fail(exc)
    from flows.locate import locate
    from flows.settings import results_in

    h = _writable_home(home)
    try:
        _prefect_run_setup(verbose)
        with console.status("attribution patching and validation ..."), results_in(h):
            out = locate(cfg=cfg, locate_cfg=lcfg, home=str(h.root), attributes=attrs)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    from storage import locations as loc_store

    ranking = loc_store.read_ranking(h.at(out["path"]))
    val = loc_store.read_validation(h.at(out["path"]))
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
    console.print(f"ranking: {out['ranking']}\nheatmaps: {out['path']}/heatmaps/")


@app.command("fit")
def fit_cmd(
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    tasks: str = typer.Option(None, help="comma-separated task names (default: all built-in tasks)"),
    per_group: int = typer.Option(3, help="kept cross-sections per attribute and group (residual / sub-layer)"),
    methods: str = typer.Option("mean,mse,weighted", help="dictionary methods"),
    tiny: bool = typer.Option(False, help="use the --tiny zoo"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Fit supervised dictionaries (the ground truth) at the located cross-sections and print their quality."""
    _quiet_prefect(verbose)

    from sage_core.ground_truth.dictionaries import METHODS

    try:
        cfg = _zoo_config(tiny, tasks)
        method_list = tuple(m.strip() for m in methods.split(","))
        bad = set(method_list) - set(METHODS)
        if bad:
            raise ValueError(f"unknown dictionary methods {sorted(bad)}; use {', '.join(METHODS)}")
    except ValueError as exc:
        _fail(exc)
    from flows.fit import fit_ground_truth
    from flows.settings import results_in

    h = _writable_home(home)
    try:
        _prefect_run_setup(verbose)
        with console.status("locating, capturing and fitting dictionaries ..."), results_in(h):
            out = fit_ground_truth(cfg=cfg, home=str(h.root), per_group=per_group, methods=method_list)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    from storage.ground_truth import read_quality

    q = read_quality(h.at(out["path"])).sort("task", "attribute", "method", "hook", "role")
    t = Table(title="ground truth: supervised dictionaries on held-out test prompts")
    for col in ("task", "attribute", "cross-section", "method", "suff.", "nec.", "edit acc.", "no interv.", "n"):
        t.add_column(col, justify="right" if col in ("suff.", "nec.", "edit acc.", "no interv.", "n") else "left")
    for r in q.iter_rows(named=True):
        head = f".H{r['head']}" if r["head"] is not None else ""
        t.add_row(r["task"], r["attribute"], f"{short_hook(r['hook'])}{head}@{r['role']}", r["method"],
                  f"{r['sufficiency']:.2f}", f"{r['necessity']:.2f}", f"{r['edit_accuracy']:.2f}",
                  f"{r['no_intervention']:.2f}", str(r["n_test"]))
    console.print(t)
    from report.verdicts import ground_truth_verdicts

    print_verdicts(ground_truth_verdicts(q))
    console.print(f"quality table: {out['quality']}")


def print_leaderboard(board, tasks: list[str] | None = None, top: int | None = None) -> None:
    """One rich table per task, best summary first, controls marked; then the controls verdict."""
    import polars as pl

    from report.summary import controls_verdict

    cols = [("summary", "summary"), ("explained_variance", "EV"), ("sufficiency", "suff."), ("faithfulness", "faith."),
            ("necessity", "nec."),
            ("edit_accuracy_k4", "edit@4"), ("f1_mean", "F1"), ("mcc", "MCC"), ("ce_loss_recovered", "CE rec."),
            ("l0", "L0")]
    for task in tasks or sorted(board["task"].unique().to_list()):
        b = board.filter(pl.col("task") == task).sort("summary", descending=True, nulls_last=True)
        if top:
            b = pl.concat([b.filter(pl.col("kind") != "trained"), b.filter(pl.col("kind") == "trained").head(top)]) \
                .sort("summary", descending=True, nulls_last=True)
        t = Table(title=f"{task}: SAEs against the ground truth (means over the cross-sections each reaches)")
        t.add_column("#", justify="right")
        t.add_column("SAE")
        t.add_column("mapping")
        t.add_column("n", justify="right")
        for _, label in cols:
            t.add_column(label, justify="right")
        for i, r in enumerate(b.iter_rows(named=True), 1):
            style = "green" if r["kind"] == "oracle" else "red" if r["kind"] == "random" else None
            if r["status"] != "ok":
                t.add_row(str(i), r["sae"], r["mapping"], "-", f"[red]{r['status'][:200]}[/]", style=style)
                continue
            vals = [r[c] for c, _ in cols]
            t.add_row(str(i), short_sae(r["sae"]), r["mapping"], str(r["n_sections"]),
                      *["–" if v is None or v != v else f"{v:.3f}" for v in vals], style=style)
        console.print(t)
        ok, text = controls_verdict(board, task)
        console.print(f"controls on {task}: {'[green]' if ok else '[red]'}{text}[/]")


def print_verdicts(verdicts) -> None:
    """The per-attribute verdicts of the ground truth (`sage_core.results.ground_truth_verdicts`), one line each."""
    from report.verdicts import BAR_TEXT, verdict_line

    if verdicts.is_empty():
        return
    console.print(f"ground truth per attribute ({BAR_TEXT}):")
    for r in verdicts.iter_rows(named=True):
        style = "green" if r["verdict"] == "holds" else "yellow"
        console.print(f"  {r['task']} [{style}]{verdict_line(r)}[/{style}]")


def _latest_report(h) -> Path:
    from storage.reports import latest_report

    return latest_report(h.reports_root())


def _units_scored(root: Path, since: float) -> int:
    """Scoring units whose parts were written since `since` (cached ones write nothing)."""
    from storage.home import SageHome
    from storage.scores import parts_written_since

    return parts_written_since(SageHome(root).score_parts(), since)


def _watch_scoring(root: Path, since: float, done_event) -> None:
    """A bar of scoring units finished (their parts written) while Prefect runs the flow; transient, so a failed run
    leaves only its one-line error."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        t = bar.add_task("zoo, location search, ground truth, then scoring ...")
        while not done_event.wait(0.5):
            n = _units_scored(root, since)
            if n:
                bar.update(t, description=f"scoring: {n} SAE x task units done")


def _check_pretrained_name(name: str, trust_remote_code: bool = False) -> None:
    """Fail in a line, before Prefect starts, on a name TransformerLens cannot load (with the closest names), or one
    whose loading runs the model repository's code unless the user said so."""
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


@app.command("evaluate")
def evaluate_cmd(
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    model: str = typer.Option(None, help="the built-in zoo model (default: sage-tiny, or sage-test with --tiny; built "
                                         "if missing) or a TransformerLens model name for from_pretrained, e.g. "
                                         "gpt2 (then --saes is required)"),
    saes: str = typer.Option(None, help="comma-separated SAE specs: zoo:<name>, a SAELens directory, "
                                        "<release>/<sae_id>, py:<module>:<attr> (default: every zoo SAE). "
                                        "py:<module>:<attr> IMPORTS AND RUNS that Python code (the factory once)"),
    tasks: str = typer.Option(None, help="comma-separated task names (default: all the zoo's tasks)"),
    run: str = typer.Option(None, help="run name: 1-64 letters, digits, '.', '_', '-' (default: a hash of what was "
                                       "scored); a name already used by another evaluation is refused"),
    per_group: int = typer.Option(2, help="kept cross-sections per attribute and group (residual / sub-layer)"),
    projections: bool = typer.Option(True, help="also score residual SAE families projected onto sub-layers"),
    top: int = typer.Option(None, help="print only the best N (>= 1) trained SAEs per task (the report has all)"),
    tiny: bool = typer.Option(False, help="use the --tiny zoo (toy sizes)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="allow a --model whose loading runs code from its Hugging Face "
                                                "repository (e.g. Qwen/Qwen-1_8B, microsoft/phi-2)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score SAEs against the ground truth on every task: leaderboard, report, Prefect artifacts.

    Exit codes: 0 done; 2 bad input or a stage that could not run (one `error:` line); 3 finished, but some SAEs or
    stages failed: every good result is written and the failures are listed."""
    _quiet_prefect(verbose)
    _check_top(top)
    import threading

    from sage_core.config import EvaluateConfig, ZooConfig
    from sage_core.prompts.library import get_task
    from storage.home import check_run_name

    try:
        if run is not None:
            check_run_name(run)
        zoo = ZooConfig.tiny() if tiny else ZooConfig()
        pretrained = model if model is not None and model != zoo.model.name else None
        if pretrained is not None:
            _check_pretrained_name(pretrained, trust_remote_code)
            if not saes:
                raise ValueError(f"--model {pretrained} needs --saes (a SAELens release/sae_id or directory): the "
                                 "zoo's SAEs belong to the built-in model")
        task_list = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else None
        for t in task_list or ():
            get_task(t)
            if t not in zoo.tasks:
                raise ValueError(f"task {t!r} is not one of the zoo's tasks {list(zoo.tasks)}")
        spec_list = tuple(x.strip() for x in saes.split(",") if x.strip()) if saes else ()
        cfg = EvaluateConfig(zoo=zoo, pretrained=pretrained, saes=spec_list, tasks=task_list, per_group=per_group,
                             projections=projections)
    except ValueError as exc:
        _fail(exc)
    h = _writable_home(home)
    if any(x.startswith("py:") for x in spec_list):
        from storage.sae_sources import PY_SPECS_ENV

        os.environ[PY_SPECS_ENV] = "1"  # the user typed these specs: their code may run (the flow checks this)
    try:
        _check_specs(cfg, h)
    except ValueError as exc:
        _fail(exc)
    from flows.evaluate import run_evaluate

    t0 = time.perf_counter()
    try:
        _prefect_run_setup(verbose)
    except (RuntimeError, OSError) as exc:
        _fail(exc)
    done = threading.Event()
    since = time.time()
    watcher = threading.Thread(target=_watch_scoring, args=(h.root, since, done), daemon=True)
    watcher.start()
    try:
        out = run_evaluate(cfg=cfg, home=str(h.root), run=run)
    except (ValueError, RuntimeError, OSError) as exc:
        done.set()
        watcher.join()
        _fail(exc)
    done.set()
    watcher.join()
    import polars as pl

    console.print(f"scoring: {_units_scored(h.root, since)} SAE x task units computed (the rest were cached)")
    board = pl.read_parquet(out["leaderboard"])
    print_leaderboard(board, list(cfg.tasks or cfg.zoo.tasks), top)
    from report.verdicts import VERDICT_SCHEMA

    print_verdicts(pl.DataFrame(out["verdicts"], schema=VERDICT_SCHEMA))
    if out["n_failed"]:
        failures = pl.read_parquet(Path(out["leaderboard"]).with_name("failures.parquet"))
        console.print(f"[yellow]{out['n_failed']} SAE(s) or stage(s) failed (the rest completed):[/]")
        for f in failures.iter_rows(named=True):
            console.print(f"  failed: {f['sae']} ({f['stage']}): {f['error']}", soft_wrap=True, highlight=False)
    _print_unreached(out, listed=bool(spec_list))
    for row in out.get("model_eval", []):  # a pretrained model: can it do the task at all?
        weak = row["accuracy"] < 0.6
        console.print(f"{cfg.pretrained} on {row['task']}: accuracy {row['accuracy']:.2f}, logit difference "
                      f"{row['logit_diff']:.2f} on held-out prompts"
                      + (" [yellow](too weak for its ground truth to mean much)[/]" if weak else ""), highlight=False)
    console.print(f"evaluated in {time.perf_counter() - t0:.1f}s; report: {out['report']}/README.md")
    if out["n_failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _check_specs(cfg, h) -> None:
    """Every --saes spec names something (the zoo's SAEs as built or as the zoo build will make them, a directory, a
    registry entry, an importable module), before Prefect starts; no weights are loaded."""
    if not cfg.saes:
        return
    from storage.sae_sources import check_specs, list_zoo_saes

    name = cfg.model_zoo().model.name
    zoo_names: list[str] = []
    if not cfg.pretrained:
        from sage_core.zoo.plan import plan_zoo

        zoo_names = sorted({s.name for s in plan_zoo(cfg.zoo).specs} | set(list_zoo_saes(h, name)))
    check_specs(list(cfg.saes), h, name, zoo_names)


def _print_unreached(out: dict, listed: bool) -> None:
    """SAEs a task could not score: their hook holds none of its kept cross-sections (named when the user chose the
    SAEs, counted for the whole zoo)."""
    by_task: dict[str, list[dict]] = {}
    for u in out.get("unreached", []):
        by_task.setdefault(u["task"], []).append(u)
    for task, items in by_task.items():
        kept = ", ".join(out.get("sections", {}).get(task, [])) or "none"
        if listed:
            for u in items:
                console.print(f"not scored on {task}: {u['sae']} (no kept cross-section at {u['hook']}; kept hooks: "
                              f"{kept})", soft_wrap=True, highlight=False)
        else:
            console.print(f"{task}: {len(items)} SAE(s) sit at hooks without a kept cross-section (kept hooks: {kept})",
                          soft_wrap=True, highlight=False)


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON schemas of evaluation results (ScoreRow, LeaderboardRow) and of EvaluateConfig."""
    import json

    from sage_core.config import EvaluateConfig
    from sage_core.scoring.leaderboard import json_schemas

    print(json.dumps({**json_schemas(), "EvaluateConfig": EvaluateConfig.model_json_schema()}, indent=1))


@app.command("report")
def report_cmd(
    run: str = typer.Argument(None, help="run name (default: the latest report)"),
    home: str = typer.Option(None, envvar="SAGE_HOME", help="data root (default ./sage-data)"),
    top: int = typer.Option(None, help="print only the best N (>= 1) trained SAEs per task"),
) -> None:
    """Print an evaluation's leaderboard and where its report (markdown, parquet, plots) is."""
    _check_top(top)
    from storage.atomic import StoreError
    from storage.home import SageHome
    from storage.reports import read_report

    h = SageHome(home)
    try:
        d = h.report_dir(run) if run else _latest_report(h)
        _, board = read_report(d)
    except (StoreError, ValueError, OSError) as exc:
        _fail(exc)
    print_leaderboard(board, None, top)
    console.print(f"report: {d}/README.md")


def main() -> None:  # pragma: no cover
    app(prog_name="sage")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
