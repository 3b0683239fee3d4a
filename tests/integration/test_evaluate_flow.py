"""The evaluate flow on the tiny zoo: the documented outputs, controls that behave, each model, SAE and task's
references loaded once, a run you can read in the Prefect UI (named task and flow runs, per-run artifacts), adding one
SAE scores only that SAE, and broken SAEs that are reported without sinking the run or touching what was written
before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from sage_core.locate.attribution import LocateConfig
from sage_core.model.hooks import short_hook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LCFG = LocateConfig(n_pairs=8, n_validate_top=2, n_validate_random=1, ig_steps=2)
SCORE_COLUMNS = ["sae", "task", "hook", "head", "role", "mapping", "metric", "value"]
# what the flow writes once per input: (label, glob under SAGE_HOME)
STORES = {
    "score parts": "scores/parts/*",
    "core metrics": "scores/core/*",
    "references": "scores/references/*",
    "activations": "activations/*/*.zarr",
    "locations": "locations/parts/*",
    "ground truth": "ground_truth/parts/*",
}


def _evaluate(home: Path, zoo_cfg, saes=(), core_sequences: int = 32) -> dict:
    from flows.evaluate import run_evaluate
    from sage_core.config import EvaluateConfig

    cfg = EvaluateConfig(zoo=zoo_cfg, saes=tuple(saes), locate=LCFG, per_group=1, core_sequences=core_sequences,
                         min_task_accuracy=0.0)
    return run_evaluate(cfg, home=str(home))


def _stores(home: Path) -> dict[str, dict[str, int]]:
    """label -> {dir: mtime of its completion marker} for every complete write-once output."""
    out = {}
    for label, pattern in STORES.items():
        out[label] = {str(p.relative_to(home)): (p / "_COMPLETE.json").stat().st_mtime_ns
                      for p in sorted(home.glob(pattern)) if (p / "_COMPLETE.json").is_file()}
    return out


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def _sections(scores: pl.DataFrame, task: str):
    """The task's cross-sections: the controls reach every one of them."""
    from sage_core.ground_truth.sections import CrossSection

    rows = scores.filter((pl.col("task") == task) & (pl.col("mapping") == "control")) \
        .select("hook", "head", "role").unique().to_dicts()
    return [CrossSection(**r) for r in rows]


def _zoo_ref(name: str):
    """Enough of a resolved zoo SAE for `plan_units` (the family comes from its name)."""
    from storage.refs import SAERef

    return SAERef(spec=f"zoo:{name}", name=name, hook=name.split("--")[0], hash=f"h-{name}", arch="?", d_sae=0,
                  d_in=0, source="zoo")


def _identity_brackets(home: Path, model_name: str, sections) -> frozenset[tuple[str, str]]:
    """The brackets of `sections` whose projector P_c is the identity (there projection == difference)."""
    from sage_core.scoring import mapping as mp
    from storage.home import SageHome
    from storage.zoo import load_model

    m = load_model(SageHome(home).model_dir(model_name))
    brackets = {mp.bracket(c.hook) for c in sections if mp.is_sublayer(c.hook)}
    return frozenset(b for b in brackets if mp.projection_is_difference(m, *b))


def _reached_units(names: list[str], sections, same=frozenset()) -> set[str]:
    """Names of the trained units `evaluate` plans for zoo SAEs `names` that reach one of `sections`."""
    from sage_core.config import EvaluateConfig
    from tasks.plan import plan_units

    units = plan_units([_zoo_ref(n) for n in names], sections, EvaluateConfig(), same)
    return {u.name for u in units if u.kind == "trained" and any(u.reaches(c) for c in sections)}


def _dictionary_keys(home: Path, task: str) -> set[tuple[str, str]]:
    """(attribute, value) pairs the task's ground-truth dictionaries have (the values seen in the train split)."""
    from storage.ground_truth import dictionary_path, load_dictionary

    keys: set[tuple[str, str]] = set()
    for part in (home / "ground_truth" / "parts").iterdir():
        if json.loads((part / "_COMPLETE.json").read_text()).get("task") == task:
            keys |= set(load_dictionary(dictionary_path(part, "mse")).matrix()[1])
    return keys


@pytest.fixture(scope="module")
def full_run(tiny_zoo):
    from tasks import loaded

    home, cfg, *_ = tiny_zoo
    loaded.clear()  # what earlier tests loaded in this process does not count
    out = _evaluate(home, cfg)
    return home, cfg, out, dict(loaded.LOADS)


def test_full_run_outputs(full_run):
    state = _last_evaluate_run().state
    assert state.type.value == "COMPLETED"
    # who won, at a glance: the state message names each task's best SAE, its summary and the controls
    assert state.message.startswith("run ") and "ioi: best " in state.message and "controls" in state.message, \
        state.message
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    home, cfg, out, _ = full_run
    assert out["n_failed"] == 0
    scores = pl.read_parquet(out["scores"])
    board = pl.read_parquet(out["leaderboard"])
    assert scores.columns == SCORE_COLUMNS
    assert scores.height and scores["value"].is_not_null().any()

    assert not board.select("sae", "task").is_duplicated().any()
    assert set(board["kind"].unique()) == {"trained", "oracle", "random"}
    assert board["status"].to_list() == ["ok"] * board.height, board.filter(pl.col("status") != "ok")
    assert set(board["task"].unique()) == set(cfg.tasks)
    for task in cfg.tasks:
        tb = board.filter(pl.col("task") == task)
        assert {"control:oracle", "control:random"} <= set(tb["sae"]), task

    # one row per planned unit that reaches a cross-section of the task; the tiny zoo's topk family has resid_pre and
    # resid_mid SAEs, so every task whose search kept a sub-layer place (attn_out / a head) gets projection units
    names = list_zoo_saes(SageHome(home), cfg.model.name)
    sublayer = {}
    for task in cfg.tasks:
        sections = _sections(scores, task)
        assert sections, task
        same = _identity_brackets(home, cfg.model.name, sections)
        expected = _reached_units(names, sections, same)
        trained = set(board.filter((pl.col("task") == task) & (pl.col("kind") == "trained"))["sae"])
        assert trained == expected, (task, trained ^ expected)
        sublayer[task] = [c for c in sections if c.hook.endswith(("attn_out", "mlp_out", "hook_z"))]
        mappings = set(board.filter(pl.col("task") == task)["mapping"])
        if sublayer[task]:
            assert {"native", "projection", "control"} <= mappings, (task, mappings)
            # a bracket whose projector is the identity is scored once, as projection: no difference row repeats it
            diff = board.filter((pl.col("task") == task) & (pl.col("mapping") == "difference"))["sae"].to_list()
            assert not [d for d in diff if any(f"[{short_hook(b)}->{short_hook(a)}]" in d for b, a in same)], \
                (diff, same)
            assert "projection" in set(scores.filter(pl.col("task") == task)["mapping"])
    assert any(sublayer.values()), f"no sub-layer cross-section was kept on any task: {sublayer}"
    assert {"native", "projection"} <= set(scores["mapping"].unique())

    report = Path(out["report"])
    assert (report / "README.md").is_file() and "control:oracle" in (report / "README.md").read_text()
    pngs = list((report / "plots").glob("*.png"))
    assert pngs and all(p.stat().st_size > 0 for p in pngs)

    for task in cfg.tasks:
        oracle = board.filter((pl.col("task") == task) & (pl.col("sae") == "control:oracle")).row(0, named=True)
        random = board.filter((pl.col("task") == task) & (pl.col("sae") == "control:random")).row(0, named=True)
        assert oracle["mcc"] == pytest.approx(1.0, abs=1e-6), task
        assert random["mcc"] < oracle["mcc"], task
        # the oracle's codes are the labels: every value its dictionary has is found with F1 = 1; a test value the
        # train split never showed has no ground-truth vector (zero code), so only then may f1_mean fall below 1
        keys = _dictionary_keys(home, task)
        f1 = scores.filter((pl.col("task") == task) & (pl.col("sae") == "control:oracle")
                           & pl.col("metric").str.starts_with("f1:"))
        assert f1.height
        covered = [r for r in f1.iter_rows(named=True) if tuple(r["metric"][3:].split("=", 1)) in keys]
        assert covered and all(r["value"] == pytest.approx(1.0) for r in covered), task
        if len(covered) == f1.height:
            assert oracle["f1_mean"] == pytest.approx(1.0), task


def test_no_cache_record_holds_a_number_the_results_show(full_run):
    """Issue #27 item 3: a Prefect cache record (or a flow record) holds references only; every metric, task accuracy
    and core metric is read from its checked file, so an edited record cannot change a result."""
    from sage_core.scoring import definitions as defs
    from storage.home import SageHome
    from tasks.common import result_dir

    home, *_ = full_run
    h = SageHome(home)
    # task cache records are named by their 16-hex cache key; a flow run's persisted return value (a uuid) is that
    # run's outputs for the caller, never read back as a result
    cached = [p for p in result_dir(h).iterdir() if p.is_file() and len(p.name) == 16]
    records = cached + [h.zoo_record(n) for n in h.zoo_models()]
    assert len(cached) > 10
    names = [*defs.METRICS, "accuracy", "logit_diff", "ce_clean", "ce_with_sae"]
    for p in records:
        text = p.read_text(errors="replace")
        assert not [n for n in names if f'"{n}"' in text], (p, [n for n in names if f'"{n}"' in text])


def test_a_run_loads_the_model_each_sae_and_each_tasks_references_once(full_run):
    """Issue #16 item 4: within one process a run reads the model from disk once, each SAE once (when it is resolved;
    every scoring unit and its core metrics reuse it) and each task's references once (shared by its units)."""
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    home, cfg, out, loads = full_run
    n_saes = len(list_zoo_saes(SageHome(home), cfg.model.name))
    n_tasks = sum(1 for hooks in out["sections"].values() if hooks)
    assert n_saes and n_tasks
    assert loads["model"] == 1, loads
    assert loads["sae"] == n_saes, loads
    assert loads["references"] == n_tasks, loads
    assert loads.get("model-copy", 0) <= 1, loads  # two worker threads: at most one more instance, copied in memory


def _flow_run_named(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0]


def _task_run_names(flow_run_id, must: set[str], timeout_s: float = 60) -> set[str]:
    """The names of the flow run's task runs (the server records them from events: wait until `must` are there)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        names = {r.name for r in runs}
        if must <= names or time.monotonic() > deadline:
            return names
        time.sleep(1)


def test_the_run_reads_in_the_prefect_ui(full_run):
    """Issue #16 item 6: the flow run carries the run's name, task runs say what they do, artifacts are keyed per run
    (plus a stable latest key), the table is rounded and complete, and the plots travel in an artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from report.artifacts import artifact_key, latest_key
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    home, cfg, out, _ = full_run
    run = out["run"]
    flow_run = _flow_run_named(run)  # named from its results at the end (no --run given)
    saes = list_zoo_saes(SageHome(home), cfg.model.name)
    kept = [t for t, hooks in out["sections"].items() if hooks]
    must = ({f"resolve zoo:{n}" for n in saes} | {f"references {t}" for t in kept}
            | {f"plan-units {len(cfg.tasks)} tasks", f"verdicts {len(cfg.tasks)} tasks", f"report {run}",
               f"publish {run}", f"leaderboard {cfg.model.name}, {len(saes)} SAEs"})
    names = _task_run_names(flow_run.id, must)
    assert must <= names, sorted(must - names)
    # one task run per SAE, its tasks and core metrics in its name, and one for the controls
    scored = sorted(n for n in names if n.startswith("score "))
    assert len(scored) == len(saes) + 1, scored
    assert sum(n.endswith(" + core") for n in scored) == len(saes), scored
    assert all(set(n.removesuffix(" + core").rsplit(" on ", 1)[1].split(", ")) <= set(kept)
               for n in scored if " on " in n), scored
    assert any(n.startswith("score L") and "--" in n for n in scored), scored  # native SAEs by their short hook
    assert f"score controls on {', '.join(sorted(kept))}" in scored, scored
    assert not [n for n in names if n.startswith(("score-unit", "score-sae-", "resolve-sae-", "core-metrics"))], names

    keys = {what: (artifact_key(run, what), latest_key(what)) for what in ("leaderboard", "summary", "plots")}
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[k for pair in keys.values() for k in pair])))
    by_key = {a.key: a for a in arts if a.flow_run_id == flow_run.id}
    assert {k for pair in keys.values() for k in pair} <= set(by_key), sorted(by_key)
    rows = json.loads(by_key[keys["leaderboard"][0]].data)
    assert rows and {"rank", "n", "faith.", "summary"} <= set(rows[0]), rows[0]
    floats = [v for r in rows for v in r.values() if isinstance(v, float)]
    assert floats and all(round(v, 3) == v for v in floats)
    assert "data:image/png;base64," in by_key[keys["plots"][0]].data
    assert run in by_key[keys["summary"][0]].data


def _native_saes_at_sections(home: Path, cfg, scores: pl.DataFrame) -> list[str]:
    from sage_core.scoring import mapping as mp
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    hooks = {mp.canonical_hook(h) for h in scores.filter(pl.col("mapping") == "control")["hook"].unique()}
    return [n for n in list_zoo_saes(SageHome(home), cfg.model.name) if mp.canonical_hook(n.split("--")[0]) in hooks]


@pytest.fixture(scope="module")
def subset(full_run):
    """Two zoo SAEs at kept cross-sections, and a third whose addition plans no new projection unit."""
    home, cfg, out, _ = full_run
    scores = pl.read_parquet(out["scores"])
    cands = _native_saes_at_sections(home, cfg, scores)
    first = cands[:2]
    for extra in cands[2:]:
        if all(_reached_units([*first, extra], _sections(scores, t)) - {extra} == _reached_units(first, _sections(
                scores, t)) for t in cfg.tasks):
            return first, extra
    pytest.fail(f"no three zoo SAEs at kept cross-sections without projection pairs: {cands}")


def test_adding_one_sae_scores_only_that_sae(full_run, subset):
    home, cfg, full, _ = full_run
    first, extra = subset
    full_scores = pl.read_parquet(full["scores"])
    out1 = _evaluate(home, cfg, [f"zoo:{n}" for n in first], core_sequences=16)
    before = _stores(home)
    out2 = _evaluate(home, cfg, [f"zoo:{n}" for n in [*first, extra]], core_sequences=16)
    after = _stores(home)
    assert out1["n_failed"] == out2["n_failed"] == 0 and out1["run"] != out2["run"]
    # re-evaluations read the fit flow's record instead of walking its cached tasks
    from flows.fit import ground_truth_if_whole
    from storage.home import SageHome

    record = ground_truth_if_whole(cfg, LCFG, SageHome(home), per_group=1)
    assert record is not None and record.path == out2["ground_truth"] == full["ground_truth"]

    new = {label: sorted(set(after[label]) - set(before[label])) for label in STORES}
    gone = {label: sorted(set(before[label]) - set(after[label])) for label in STORES}
    assert not any(gone.values()), gone
    for label in STORES:
        changed = [d for d in before[label] if after[label][d] != before[label][d]]
        assert not changed, (label, changed)
    for label in ("activations", "locations", "ground truth", "references"):
        assert not new[label], (label, new[label])

    reached_tasks = {t for t in cfg.tasks if extra in _reached_units([extra], _sections(full_scores, t))}
    assert reached_tasks
    assert len(new["score parts"]) == len(reached_tasks), new["score parts"]
    for d in new["score parts"]:
        part = pl.read_parquet(home / d / "scores.parquet")
        assert set(part["sae"]) == {extra} and set(part["mapping"]) == {"native"}
    assert set(pl.concat([pl.read_parquet(home / d / "scores.parquet") for d in new["score parts"]])["task"]) \
        == reached_tasks
    assert len(new["core metrics"]) == 1
    assert json.loads((home / new["core metrics"][0] / "_COMPLETE.json").read_text())["sae"] == extra

    board = pl.read_parquet(out2["leaderboard"])
    assert set(board.filter(pl.col("kind") == "trained")["sae"]) == set(first) | {extra}
    assert board["status"].to_list() == ["ok"] * board.height


def _last_evaluate_run():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["evaluate"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0]


def _nan_copy(src: Path, dst: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = dst / "sae_weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(weights))
    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, str(weights), metadata=metadata)
    return dst


def _wrong_width(dst: Path, hook: str, d_in: int) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in,
                                        metadata=SAEMetadata(hook_name=hook, model_name="sage-test")))
    sae.save_model(str(dst))
    return dst


def test_broken_saes_are_reported_and_do_not_sink_the_run(full_run, subset, tmp_path):
    from storage.home import SageHome

    home, cfg, full, _ = full_run
    first, _ = subset
    h = SageHome(home)
    nan_dir = _nan_copy(h.sae_dir(cfg.model.name, first[0]), tmp_path / "nan-sae")
    wide_dir = _wrong_width(tmp_path / "wide-sae", "blocks.0.hook_resid_pre", cfg.model.d_model + 16)
    bad = {str(nan_dir): "NaN", str(wide_dir): "d_in"}
    written = {**_files(home / "scores"), **_files(home / "reports")}
    assert any(Path(p).is_relative_to(Path(full["report"])) for p in written)

    out = _evaluate(home, cfg, [*(f"zoo:{n}" for n in first), *bad], core_sequences=16)

    assert out["n_failed"] >= len(bad)
    board = pl.read_parquet(out["leaderboard"])
    ok = board.filter(pl.col("sae").is_in(first))
    assert set(ok["sae"]) == set(first) and ok["status"].to_list() == ["ok"] * ok.height
    assert set(board.filter(pl.col("kind") != "trained")["status"]) == {"ok"}
    failures = pl.read_parquet(Path(out["leaderboard"]).parent / "failures.parquet")
    for spec, cause in bad.items():
        rows = failures.filter(pl.col("sae") == spec)
        assert rows.height == 1, (spec, failures)
        err = rows["error"][0]
        assert rows["stage"][0] == "load" and "\n" not in err and cause in err, (spec, err)
        st = board.filter(pl.col("sae") == spec)["status"].to_list()
        assert st and all(s.startswith("failed:") and cause in s for s in st), (spec, st)
    readme = (Path(out["report"]) / "README.md").read_text()
    assert str(wide_dir) in readme
    # the flow run itself is not shown as a success: Failed, with the count in its message (issue #15 item 9)
    state = _last_evaluate_run().state
    assert state.type.value == "FAILED" and f"{out['n_failed']} SAE(s) or stage(s) failed" in state.message, state

    now = {**_files(home / "scores"), **_files(home / "reports")}
    missing = sorted(set(written) - set(now))
    changed = sorted(p for p in written if p in now and now[p] != written[p])
    assert not missing and not changed, (missing, changed)


def test_a_spec_that_names_nothing_fails_before_any_work(full_run):
    """check_specs runs at the start of the flow: no SAE is resolved, nothing is scored or written."""
    home, cfg, *_ = full_run
    written = {**_files(home / "scores"), **_files(home / "reports")}
    with pytest.raises(ValueError, match="no-such-release"):
        _evaluate(home, cfg, ["no-such-release/foo"], core_sequences=16)
    assert {**_files(home / "scores"), **_files(home / "reports")} == written
