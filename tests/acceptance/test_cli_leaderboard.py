"""`sage leaderboard` (issue #18 item 4) on a data root whose runs are written by `storage.scores.write_run` and whose
ledger is written through `storage.ledger.Ledger`, as `sage evaluate` and `sage watch` record them."""

from __future__ import annotations

import polars as pl
import pytest

from tests.acceptance.cli import one_line_error, run, run_in_process

pytestmark = [pytest.mark.acceptance]

A = "blocks.0.hook_resid_pre--topk-64"
B = "blocks.1.hook_mlp_out--relu-128"
HOOKS = {A: "blocks.0.hook_resid_pre", B: "blocks.1.hook_mlp_out", "D": "blocks.0.hook_resid_pre"}
# the ioi parts of each ground truth; keys by hand: sha256("p-ioi-1\np-ioi-2")[:8], sha256("p-ioi-9")[:8]
GROUND_TRUTHS = {"ground_truth/gt-1": ["p-ioi-1", "p-ioi-2"], "ground_truth/gt-2": ["p-ioi-2", "p-ioi-1"],
                 "ground_truth/gt-9": ["p-ioi-9"]}
KEY_12, KEY_9 = "2f88f530", "12c7be9a"


def _record_ground_truths(home):
    """The fit flow's records, by its own writer."""
    from sage_core.ground_truth.sections import CrossSection
    from storage.ground_truth import write_gt_record
    from storage.refs import GroundTruthPartRef, GroundTruthRef

    for i, (path, parts) in enumerate(GROUND_TRUTHS.items()):
        refs = tuple(GroundTruthPartRef(path=f"ground_truth/parts/{p}", hash=p, task="ioi",
                                        section=CrossSection(hook="blocks.0.hook_resid_pre", role="END"))
                     for p in parts)
        write_gt_record(home, f"fit-{i}", GroundTruthRef(path=path, hash=f"h{i}", parts=refs))


def _write_run(home, run, trained, controls, failures=(), ground_truth="ground_truth/gt-1"):
    from sage_core.scoring.leaderboard import LeaderboardRow
    from sage_core.scoring.rows import SCORE_SCHEMA
    from storage.scores import write_run

    rows = [LeaderboardRow(sae=s, task="ioi", kind="trained", mapping="native", status="ok", n_sections=1, summary=v,
                           explained_variance=v / 2, l0=8.0, f1_mean=0.5, mcc=0.25).model_dump() for s, v in trained]
    rows += [LeaderboardRow(sae=f"control:{k}", task="ioi", kind=k, mapping="control", status="ok", n_sections=1,
                            summary=v).model_dump() for k, v in controls]
    scores = pl.DataFrame([{"sae": s, "task": "ioi", "hook": HOOKS[s], "head": None, "role": "END",
                            "mapping": "native", "metric": "summary", "value": v} for s, v in trained],
                          schema=SCORE_SCHEMA)
    fails = pl.DataFrame(list(failures), schema={"sae": pl.String, "stage": pl.String, "error": pl.String},
                         orient="row")
    write_run(home.scores_dir(run), scores, pl.DataFrame(rows), fails,
              {"run": run, "model": "sage-tiny", "ground_truth": ground_truth})


@pytest.fixture()
def home(tmp_path):
    """`nightly-1` scored the zoo's A and B; `nightly-2` a copy of A with changed weights (same name), and failed C;
    both against the same ioi cross-sections (two ground-truth records, the same ioi parts)."""
    from storage.home import SageHome
    from storage.ledger import Ledger

    h = SageHome(tmp_path / "home")
    _record_ground_truths(h)
    _write_run(h, "nightly-1", [(A, 0.40), (B, 0.60)], [("oracle", 0.90), ("random", 0.10)])
    _write_run(h, "nightly-2", [(A, 0.70)], [("oracle", 0.95), ("random", 0.20)],
               [("C", "resolve", "cfg.json is missing")], "ground_truth/gt-2")
    ledger = Ledger.of(h)
    ledger.record_run("nightly-1", "sage-tiny", [
        {"content_hash": "aaaa0000old", "sae": A, "spec": f"zoo:{A}", "status": "evaluated"},
        {"content_hash": "bbbb0000", "sae": B, "spec": f"zoo:{B}", "status": "evaluated"}])
    ledger.record_run("nightly-2", "sage-tiny", [
        {"content_hash": "aaaa1111new", "sae": A, "spec": "/lab/saes/a", "status": "evaluated", "source": "dir:/lab"},
        {"content_hash": "cccc0000", "sae": "C", "spec": "/lab/saes/c", "status": "failed", "source": "dir:/lab",
         "reason": "cfg.json is missing"}])
    return h


def _table_rows(stdout: str) -> list[list[str]]:
    """The ranked rows of the printed tables: lines that start with a rank."""
    return [ln.split() for ln in stdout.splitlines() if ln.strip() and ln.split()[0].isdigit()]


def test_both_the_old_and_the_new_weights_are_listed_and_ranked(home):
    r = run(["leaderboard"], home.root, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _table_rows(r.stdout)
    # rank, SAE (2 words: L0.resid_pre topk-64), hash, source, hook / mapping (2 words), summary and its 5 parts, run
    assert [(x[0], x[3], x[4], x[7], x[13]) for x in rows] == [("1", "aaaa1111ne", "dir:/lab", "0.700", "nightly-2"),
                                                               ("2", "bbbb0000", "evaluate", "0.600", "nightly-1"),
                                                               ("3", "aaaa0000ol", "evaluate", "0.400", "nightly-1")], \
        r.stdout
    assert f"sage-tiny on ioi, ground truth {KEY_12} (runs nightly-1, nightly-2)" in r.stdout
    assert "not comparable" not in r.stdout, "one ground truth: no note"
    assert f"controls on ioi, ground truth {KEY_12} (run nightly-2): oracle 0.950, random 0.200" in r.stdout
    assert ("no result: sage-tiny C (cccc0000, dir:/lab, run nightly-2): failed: resolve: cfg.json is missing"
            in r.stdout)


def test_top_model_and_task(home):
    r = run_in_process(["leaderboard", "--top", "1", "--model", "sage-tiny", "--task", "ioi"], home.root)
    assert r.returncode == 0, r.stdout
    assert [x[0] for x in _table_rows(r.stdout)] == ["1"] and "best 1 of 3 ranked SAEs shown" in r.stdout


def test_another_ground_truth_gets_its_own_table_first_and_a_note(home):
    from storage.ledger import Ledger

    # nightly-3 (the latest) scored D against other ioi cross-sections: its own table, first, its own rank 1
    _write_run(home, "nightly-3", [("D", 0.30)], [("oracle", 0.80), ("random", 0.05)], ground_truth="ground_truth/gt-9")
    Ledger.of(home).record_run("nightly-3", "sage-tiny", [
        {"content_hash": "dddd0000", "sae": "D", "spec": "/lab/saes/d", "status": "evaluated", "source": "dir:/lab"}])
    r = run_in_process(["leaderboard"], home.root)
    assert r.returncode == 0, r.stdout
    out = r.stdout
    note = ("sage-tiny on ioi: 2 ground truths; scores against different ground truths are not comparable; each table "
            "ranks its own (the most recent run's first)")
    first, second = (f"sage-tiny on ioi, ground truth {KEY_9} (run nightly-3)",
                     f"sage-tiny on ioi, ground truth {KEY_12} (runs nightly-1, nightly-2)")
    assert note in out and out.index(note) < out.index(first) < out.index(second), out
    assert [(x[0], x[1]) for x in _table_rows(out)] == [("1", "D"), ("1", "L0.resid_pre"), ("2", "L1.mlp_out"),
                                                        ("3", "L0.resid_pre")], out
    assert f"controls on ioi, ground truth {KEY_9} (run nightly-3): oracle 0.800, random 0.050" in out
    assert f"controls on ioi, ground truth {KEY_12} (run nightly-2): oracle 0.950, random 0.200" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "gpt-2"], "error: unknown --model 'gpt-2': the ledger has evaluations for sage-tiny"),
    (["--task", "gt"], "error: unknown --task 'gt': the runs in the ledger scored ioi"),
    (["--top", "0"], "error: --top 0: give a number of SAEs of at least 1"),
])
def test_bad_input_is_one_line_listing_what_is_known(home, args, message):
    r = run_in_process(["leaderboard", *args], home.root)
    assert r.returncode == 2 and one_line_error(r) and r.stdout.startswith(message), r.stdout


def test_no_ledger_or_an_empty_one_says_what_to_run_and_creates_nothing(tmp_path):
    from storage.home import SageHome
    from storage.ledger import Ledger

    fresh = tmp_path / "fresh"
    r = run_in_process(["leaderboard"], fresh)
    assert r.returncode == 2 and one_line_error(r) and "run `sage evaluate` or `sage watch` first" in r.stdout
    assert not fresh.exists(), "looking at the leaderboard writes nothing"
    (tmp_path / "empty").mkdir()
    Ledger.of(SageHome(tmp_path / "empty"))
    r = run_in_process(["leaderboard"], tmp_path / "empty")
    assert r.returncode == 2 and one_line_error(r) and "a ledger with no evaluations" in r.stdout


def test_a_damaged_run_is_a_warning_and_the_rest_is_shown(home):
    target = home.scores_dir("nightly-2") / "leaderboard.parquet"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:-10])
    r = run_in_process(["leaderboard"], home.root)
    assert r.returncode == 0, r.stdout
    assert [x[0] for x in _table_rows(r.stdout)] == ["1", "2"]
    warn = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "run nightly-2 could not be read" in warn[0] and "leaderboard.parquet" in warn[0]
