"""Issue 26 item 6: the Prefect UI looked at in a real browser after an evaluation and a watch run. Headless Chromium,
1600 px wide, loads the run's leaderboard table artifact, its summary and plots artifacts, the watch artifact and the
evaluation's flow run page; the test asserts on the rendered DOM and saves a screenshot of each page to
$SAGE_UI_SHOTS (default: a tmp dir; `make ui-shots` writes them to results/ui/), with the measured figures in
ui-figures.json. It also counts the log lines an evaluation sends to the API (issue 26 item 4).

The session's Prefect test server does not serve the UI (Prefect's SubprocessASGIServer starts it with
PREFECT_UI_ENABLED=0), so a second `prefect server start` serves the UI's pages, with PREFECT_UI_API_URL set to the
session server's API: the pages show the very runs the CLI reported there."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.browser import INSTALL_HINT, Browser, chromium_path
from tests.acceptance.cli import run, seed_zoo

pytestmark = [pytest.mark.acceptance, pytest.mark.slow, pytest.mark.skipif(chromium_path() is None,
                                                                          reason=INSTALL_HINT)]
WIDTH = 1600
# a user's default: the CLI sends INFO logs to the API (the test session's environment holds them back)
USER_LOGGING = {"PREFECT_LOGGING_LEVEL": "INFO"}
MAX_EVALUATION_LOG_LINES = 40  # "about one line per stage plus the results" (issue 26 item 4; 447 before)
FIGURES: dict = {}

# the rendered table `sel` (nth `i`): its scroll box, and the headers that lie right of what is visible at 1600 px
FIT_JS = """(() => { const t = document.querySelectorAll(%r)[%d]; const box = t.parentElement;
  const edge = Math.min(box.getBoundingClientRect().right, %d) + 1;
  const heads = [...t.querySelectorAll('th')].map(th => [th.innerText.trim(), th.getBoundingClientRect().right]);
  return {scroll_width: box.scrollWidth, client_width: box.clientWidth, table_right: t.getBoundingClientRect().right,
          headers: heads.map(h => h[0]), hidden: heads.filter(h => h[1] > edge).map(h => h[0])}; })()"""
ROWS_JS = """[...document.querySelectorAll(%r)[%d].querySelectorAll('tbody tr')]
  .map(tr => [...tr.children].map(td => td.innerText.trim()))"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_name(stdout: str) -> str:
    return Path(stdout.split("report:")[-1].split()[0]).parent.name


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_zoo):
    """`sage evaluate --tiny`: every task of the tiny zoo with the watch's settings, so the watch run ranks its SAE
    among these against the same ground truth. Not test_cli_evaluate's evaluation: that one is module-scoped, scores
    one task, and runs with the session's log level, which keeps INFO logs from the API (item 4 counts what a user's
    run sends)."""
    home = seed_zoo(tiny_zoo, tmp_path_factory.mktemp("ui-eval-home"))
    r = run(["evaluate", "--tiny"], home, env=USER_LOGGING)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return home, r


@pytest.fixture(scope="module")
def watched(evaluated, tmp_path_factory):
    """A watch run that finds one new SAE: a zoo SAE with changed weights, in a folder."""
    import torch
    from safetensors.torch import load_file, save_file

    home, _ = evaluated
    zoo_sae = home / "zoo" / "sage-test" / "saes" / "blocks.0.hook_resid_post--topk-64"
    new = tmp_path_factory.mktemp("ui-inbox") / "lab-topk-64"
    new.mkdir()
    shutil.copy(zoo_sae / "cfg.json", new / "cfg.json")
    weights = load_file(zoo_sae / "sae_weights.safetensors")
    torch.manual_seed(0)
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in weights.items()}, new / "sae_weights.safetensors")
    r = run(["watch", "--tiny", "--source", f"dir:{new.parent}"], home, env=USER_LOGGING)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return new.name, r


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The Prefect UI's pages on 127.0.0.1, reading the session server's API; stopped by its pid."""
    from prefect.settings import PREFECT_API_URL

    api, port, d = PREFECT_API_URL.value(), _free_port(), tmp_path_factory.mktemp("ui-server")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(d / "prefect"), PREFECT_UI_API_URL=api, PREFECT_UI_STATIC_DIRECTORY=str(d / "ui"),
               PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{d / 'ui.db'}",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    url = f"http://127.0.0.1:{port}"
    with open(d / "server.log", "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port), "--no-services"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ui-settings", timeout=5) as r:
                        if json.load(r)["api_url"] == api:
                            break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < end, (d / "server.log").read_text()[-3000:]
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser():
    with Browser(width=WIDTH) as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = Path(os.environ.get("SAGE_UI_SHOTS") or tmp_path_factory.mktemp("ui-shots"))
    d.mkdir(parents=True, exist_ok=True)
    yield d
    (d / "ui-figures.json").write_text(json.dumps(FIGURES, indent=1, sort_keys=True) + "\n")


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                 sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key!r} in the API"
    return found[0]


def _open(browser, url: str, ready_js: str, what: str) -> None:
    browser.goto(url)
    browser.wait_for(ready_js, timeout=90, what=what)
    time.sleep(1)  # fonts and the layout settle after the first draw


def _fit(browser, sel: str, i: int = 0) -> dict:
    return browser.eval(FIT_JS % (sel, i, WIDTH))


def test_the_leaderboard_artifact_is_ranked_with_controls_apart_and_fits_1600_px(evaluated, ui, browser, shots):
    from report.artifacts import artifact_key

    _, r = evaluated
    art = _artifact(artifact_key(_run_name(r.stdout), "leaderboard"))
    rows = json.loads(art.data)
    _open(browser, f"{ui}/artifacts/artifact/{art.id}",
          f"document.querySelectorAll('table tbody tr').length >= {len(rows)}", f"the table's {len(rows)} rows")
    browser.screenshot(shots / "leaderboard.png")
    fit = _fit(browser, "table")
    shown = browser.eval(ROWS_JS % ("table", 0))
    FIGURES["leaderboard"] = {**fit, "rows": len(shown)}
    heads = fit["headers"]
    assert "rank" in heads and "sae" in heads, heads
    assert "task" in heads, heads
    tasks = list(dict.fromkeys(row[heads.index("task")] for row in shown))
    assert len(shown) == len(rows) and tasks == list(dict.fromkeys(r["task"] for r in rows)), shown
    for task in tasks:  # per task: the trained SAEs ranked from 1, then the controls, marked apart by having no rank
        these = [row for row in shown if row[heads.index("task")] == task]
        ranks = [row[heads.index("rank")] for row in these]
        names = [row[heads.index("sae")] for row in these]
        controls = [i for i, n in enumerate(names) if n.startswith("control:")]
        assert controls and controls == list(range(len(names) - len(controls), len(names))), (task, names)
        assert all(ranks[i] == "" for i in controls), (task, ranks)
        ranked = [int(x) for x in ranks[: controls[0]]]
        assert ranked[0] == 1 and ranked == sorted(ranked), (task, ranks)
    # the rows of one task are together
    assert [row[heads.index("task")] for row in shown] == sorted((r[heads.index("task")] for r in shown),
                                                                 key=tasks.index), shown
    # item 3: every column of the ranked table visible at 1600 px, no horizontal scroll
    assert not fit["hidden"] and fit["scroll_width"] <= fit["client_width"], (
        f"the leaderboard table is {fit['scroll_width']} px wide in a {fit['client_width']} px box at {WIDTH} px: "
        f"columns {fit['hidden']} are scrolled out of view (see {shots / 'leaderboard.png'})")


def test_the_summary_artifact_shows_the_ranked_table_and_the_plots_artifact_its_plots(evaluated, ui, browser, shots):
    from report.artifacts import artifact_key
    from storage.reports import report_plots

    home, r = evaluated
    run_name = _run_name(r.stdout)
    summary = _artifact(artifact_key(run_name, "summary"))
    _open(browser, f"{ui}/artifacts/artifact/{summary.id}",
          "[...document.querySelectorAll('h1')].some(h => h.innerText.startsWith('SAGE report'))", "the report's title")
    browser.screenshot(shots / "summary.png")
    n_tables = browser.eval("document.querySelectorAll('table').length")
    fits = [_fit(browser, "table", i) for i in range(n_tables)]
    # per task its ranked table (rank, SAE, the summary and its parts), then one of the other metrics
    ranked = [i for i, f in enumerate(fits) if f["headers"][:1] == ["rank"] and "summary" in f["headers"]]
    FIGURES["summary"] = {"tables": fits, "ranked_tables": ranked}
    tasks = {r["task"] for r in json.loads(_artifact(artifact_key(run_name, "leaderboard")).data)}
    assert len(ranked) == len(tasks), (tasks, fits)
    for i in ranked:
        assert "SAE" in fits[i]["headers"], fits[i]
        ranks = [row[0] for row in browser.eval(ROWS_JS % ("table", i))]
        assert "ctrl" in ranks and set(ranks[ranks.index("ctrl"):]) == {"ctrl"}, ranks  # the controls, after the ranks
        assert ranks[0] == "1", ranks
    assert all(not f["hidden"] and f["scroll_width"] <= f["client_width"] for f in fits), fits

    plots = report_plots(home / "reports" / run_name)
    art = _artifact(artifact_key(run_name, "plots"))
    _open(browser, f"{ui}/artifacts/artifact/{art.id}",
          f"[...document.images].filter(i => i.complete && i.naturalWidth > 0).length >= {len(plots)}",
          f"{len(plots)} loaded plots")
    browser.screenshot(shots / "plots.png")
    imgs = browser.eval("""[...document.images].filter(i => i.src.startsWith('data:image/png')).map(i => ({alt: i.alt,
        natural: i.naturalWidth, shown: i.clientWidth, right: i.getBoundingClientRect().right}))""")
    FIGURES["plots"] = imgs
    assert sorted(i["alt"] for i in imgs) == sorted(Path(p).stem for p in plots), imgs
    assert all(i["natural"] > 0 and i["shown"] > 0 and i["right"] <= WIDTH for i in imgs), imgs


def test_the_watch_artifact_ranks_the_new_sae(watched, ui, browser, shots):
    from report.watch import WATCH_ARTIFACT_KEY

    name, _ = watched
    art = _artifact(WATCH_ARTIFACT_KEY)
    _open(browser, f"{ui}/artifacts/artifact/{art.id}",
          "[...document.querySelectorAll('h1')].some(h => h.innerText.startsWith('SAEs new this run'))",
          "the watch artifact's title")
    browser.screenshot(shots / "watch.png")
    fit = _fit(browser, "table")
    shown = browser.eval(ROWS_JS % ("table", 0))
    FIGURES["watch"] = {**fit, "rows": shown}
    heads = fit["headers"]
    assert heads[:1] == ["SAE"] and "rank" in heads, heads
    assert shown and all(row[0] == name and re.fullmatch(r"\d+ of \d+", row[heads.index("rank")]) for row in shown), \
        shown
    assert not fit["hidden"] and fit["scroll_width"] <= fit["client_width"], fit


def _flow_run_tree(c, root_id) -> list:
    """The flow run `root_id` and every subflow run under it."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentTaskRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    out, todo = [], [root_id]
    while todo:
        out += c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=todo)))
        tasks = c.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=todo)))
        subs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks]))) if tasks else []
        todo = [f.id for f in subs]
    return out


def _category(log) -> str:
    """A log line's kind: its logger, task or flow run, and its first words (figures and names stripped)."""
    words = re.sub(r"\S*/\S*|[\d.:'()\[\]]+", "#", log.message.split("\n")[0]).split()[:3]
    return f"{log.name} {'task' if log.task_run_id else 'flow'}: {' '.join(words)}"


def test_an_evaluation_logs_about_one_line_per_stage_plus_its_results(evaluated, ui, browser, shots):
    """Issue 26 item 4, counted where a user reads it: the logs of the evaluation's flow run, its task runs and its
    subflow runs in Prefect's API; its flow run page shows them."""
    from collections import Counter

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    _, r = evaluated
    with get_client(sync_client=True) as c:
        (root,) = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[_run_name(r.stdout)])))
        runs = _flow_run_tree(c, root.id)
        where, logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[f.id for f in runs])), []
        while not logs or len(logs) % 200 == 0:  # the API gives at most 200 a call
            page = c.read_logs(log_filter=where, sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(logs))
            logs += page
            if not page:
                break
    kinds = Counter(_category(log) for log in logs)
    FIGURES["evaluation_logs"] = {"lines": len(logs), "flow_runs": sorted(f.name for f in runs), "by_kind": kinds}
    assert any("report:" in log.message for log in logs), [log.message[:100] for log in logs]  # the results are there
    assert len(logs) <= MAX_EVALUATION_LOG_LINES, kinds.most_common()

    _open(browser, f"{ui}/runs/flow-run/{root.id}",
          "document.body.innerText.includes('Finished in state')", "the flow run's logs")
    browser.screenshot(shots / "flow-run.png")
    assert "report:" in browser.eval("document.body.innerText")
