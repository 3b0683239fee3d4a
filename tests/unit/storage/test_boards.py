"""The leaderboard across runs read from real run directories (`storage.scores.write_run`), one of them then damaged,
and the ground truth each run scored against, from records the fit flow's writer wrote
(`storage.ground_truth.write_gt_record`).

The ledger's evaluations are built by hand here (the columns `storage.ledger.Ledger.evaluations` returns)."""

from __future__ import annotations

import os

import polars as pl
import pytest

from sage_core.scoring import across
from sage_core.scoring.leaderboard import LeaderboardRow
from sage_core.scoring.rows import SCORE_SCHEMA
from storage import boards
from storage.boards import across_runs
from storage.home import SageHome

EV_SCHEMA = {"content_hash": pl.String, "model": pl.String, "run": pl.String, "sae": pl.String, "spec": pl.String,
             "source": pl.String, "status": pl.String, "reason": pl.String, "evaluated_at": pl.String}
TEXT = {"sae", "task", "kind", "mapping", "status"}
BOARD = {c: pl.String if c in TEXT else pl.Int64 if c == "n_sections" else pl.Float64
         for c in LeaderboardRow.model_fields}
A = "blocks.0.hook_resid_pre--topk-64"
B = "blocks.1.hook_mlp_out--relu-128"
HOOKS = {A: "blocks.0.hook_resid_pre", B: "blocks.1.hook_mlp_out", "D": "blocks.0.hook_resid_pre"}
# r1 used ground truth gt-ab1 (ioi and sva), r2 gt-ab2 (ioi only): the same ioi parts, so one key for ioi; r3 gt-c
# (other ioi parts). Keys by hand: sha256("p-ioi-1\np-ioi-2")[:8], sha256("p-ioi-3")[:8]
KEY_AB, KEY_C = "2f88f530", "14518afd"
GROUND_TRUTHS = {"ground_truth/gt-ab1": [("ioi", "p-ioi-1"), ("ioi", "p-ioi-2"), ("sva", "p-sva-1")],
                 "ground_truth/gt-ab2": [("ioi", "p-ioi-2"), ("ioi", "p-ioi-1")],
                 "ground_truth/gt-c": [("ioi", "p-ioi-3")]}


def _board(rows):
    out = [LeaderboardRow(sae=sae, task="ioi", kind=kind, mapping="native" if kind == "trained" else "control",
                          status="ok", n_sections=1, summary=s, l0=5.0).model_dump() for sae, kind, s in rows]
    return pl.DataFrame(out, schema=BOARD)


def _scores(saes):
    return pl.DataFrame([{"sae": s, "task": "ioi", "hook": HOOKS[s], "head": None, "role": "END", "mapping": "native",
                          "metric": "summary", "value": 0.5} for s in saes], schema=SCORE_SCHEMA)


def _failures(rows=()):
    return pl.DataFrame(list(rows), schema={"sae": pl.String, "stage": pl.String, "error": pl.String}, orient="row")


def _record_ground_truths(h):
    """The fit flow's records, by its own writer: one GroundTruthRef per path in `GROUND_TRUTHS`."""
    from sage_core.ground_truth.sections import CrossSection
    from storage.ground_truth import write_gt_record
    from storage.refs import GroundTruthPartRef, GroundTruthRef

    for i, (path, parts) in enumerate(GROUND_TRUTHS.items()):
        refs = tuple(GroundTruthPartRef(path=f"ground_truth/parts/{p}", hash=p, task=t,
                                        section=CrossSection(hook="blocks.0.hook_resid_pre", role="END"))
                     for t, p in parts)
        write_gt_record(h, f"fit-key-{i}", GroundTruthRef(path=path, hash=f"h{i}", parts=refs))


def _write(h, run, rows, failures=(), ground_truth="ground_truth/gt-ab1"):
    from storage.scores import write_run

    meta = {"run": run, "model": "sage-tiny"} | ({"ground_truth": ground_truth} if ground_truth else {})
    write_run(h.scores_dir(run), _scores([s for s, k, _ in rows if k == "trained"]), _board(rows),
              _failures(failures), meta)


@pytest.fixture()
def home(tmp_path):
    """r1 scored A (0.4) and B (0.6); r2 scored a changed copy of A under the same name (0.7) and failed on C; both
    against the same ioi ground truth."""
    h = SageHome(tmp_path / "home")
    _record_ground_truths(h)
    _write(h, "r1", [(A, "trained", 0.4), (B, "trained", 0.6), ("control:oracle", "oracle", 0.9),
                     ("control:random", "random", 0.1)])
    _write(h, "r2", [(A, "trained", 0.7), ("control:oracle", "oracle", 0.95), ("control:random", "random", 0.2)],
           [("C", "resolve", "cfg.json is missing")], "ground_truth/gt-ab2")
    return h


def _ev(*rows):
    return pl.DataFrame([{"content_hash": c, "model": "sage-tiny", "run": run, "sae": sae, "spec": f"dir:/x/{sae}",
                          "source": "dir:/x", "status": st, "reason": "", "evaluated_at": f"2024-06-0{day}T00:00:00Z"}
                         for c, run, sae, st, day in rows], schema=EV_SCHEMA)


LEDGER = _ev(("a-old", "r1", A, "evaluated", 1), ("b", "r1", B, "evaluated", 1), ("a-new", "r2", A, "evaluated", 2),
             ("c", "r2", "C", "failed", 2))


def _tree(root):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


def test_two_runs_both_hashes_of_one_name_are_ranked_with_their_hooks(home):
    before = _tree(home.root)
    out = across_runs(home, LEDGER)
    assert out.warnings == []
    got = out.rows.select("content_hash", "run", "sae", "hook", "task", "ground_truth", "summary", "rank").rows()
    assert got == [("a-new", "r2", A, HOOKS[A], "ioi", KEY_AB, 0.7, 1), ("b", "r1", B, HOOKS[B], "ioi", KEY_AB, 0.6, 2),
                   ("a-old", "r1", A, HOOKS[A], "ioi", KEY_AB, 0.4, 3),
                   ("c", "r2", "C", None, None, None, None, None)]
    failed = out.rows.filter(pl.col("content_hash") == "c")
    assert failed["status"].to_list() == ["failed: resolve: cfg.json is missing"]
    assert out.controls.select("run", "kind", "summary").rows() == [("r2", "oracle", 0.95), ("r2", "random", 0.2)]
    assert out.groups.select("task", "ground_truth", "runs").rows() == [("ioi", KEY_AB, ["r1", "r2"])]
    assert _tree(home.root) == before, "reading writes nothing"


def test_each_run_is_read_once(home, monkeypatch):
    reads = []
    real = boards.read_run_tables
    monkeypatch.setattr(boards, "read_run_tables", lambda h, run: reads.append(run) or real(h, run))
    across_runs(home, LEDGER)
    assert sorted(reads) == ["r1", "r2"]


def test_a_damaged_run_is_left_out_and_named_and_earlier_results_stand(home):
    target = home.scores_dir("r2") / "leaderboard.parquet"
    os.chmod(target, 0o644)
    with open(target, "r+b") as f:
        f.seek(20)
        f.write(b"\x00garbage\x00")
    out = across_runs(home, LEDGER)
    assert len(out.warnings) == 1 and out.warnings[0].startswith("run r2 could not be read")
    assert "leaderboard.parquet" in out.warnings[0] and "\n" not in out.warnings[0]
    # a-new's only result was in r2: gone; the failed C needs no file and stays (without its reason)
    got = out.rows.select("content_hash", "run", "summary", "rank", "status").rows()
    assert got == [("b", "r1", 0.6, 1, "ok"), ("a-old", "r1", 0.4, 2, "ok"),
                   ("c", "r2", None, None, "failed in run r2")]
    assert out.controls["run"].unique().to_list() == ["r1"]


def test_a_re_evaluation_in_a_damaged_run_falls_back_to_the_earlier_one(home):
    import shutil

    shutil.rmtree(home.scores_dir("r2"))
    ledger = _ev(("b", "r1", B, "evaluated", 1), ("b", "r2", B, "evaluated", 2))
    out = across_runs(home, ledger)
    assert out.rows.select("content_hash", "run", "summary").rows() == [("b", "r1", 0.6)]
    assert len(out.warnings) == 1 and "run r2 could not be read" in out.warnings[0]
    assert "earlier results of its SAEs stand" in out.warnings[0]


def test_a_failed_run_that_wrote_no_directory_is_no_warning(home):
    out = across_runs(home, _ev(("b", "r1", B, "evaluated", 1), ("z", "crashed", "Z", "failed", 2)))
    assert out.warnings == []
    assert out.rows.select("content_hash", "rank", "status").rows() == [("b", 1, "ok"),
                                                                        ("z", None, "failed in run crashed")]


def test_model_and_task_filters_and_unknown_ones_list_the_known(home):
    ledger = pl.concat([LEDGER, _ev(("g", "g1", "gpt-sae", "failed", 3)).with_columns(pl.lit("gpt2").alias("model"))])
    only = across_runs(home, ledger, model="gpt2")
    assert only.rows.select("content_hash", "status").rows() == [("g", "failed in run g1")]
    assert across_runs(home, ledger, model="sage-tiny", task="ioi").rows.height == 4
    with pytest.raises(ValueError, match=r"unknown --model 'gpt-2': the ledger has evaluations for gpt2, sage-tiny "
                                         r"\(closest: gpt2\)"):
        across_runs(home, ledger, model="gpt-2")
    with pytest.raises(ValueError, match=r"unknown --task 'gendered': the runs in the ledger scored ioi$"):
        across_runs(home, ledger, task="gendered")


def test_recorded_ground_truths_reads_the_writers_records(home):
    assert boards.recorded_ground_truths(home) == {
        "ground_truth/gt-ab1": {"ioi": ["p-ioi-1", "p-ioi-2"], "sva": ["p-sva-1"]},
        "ground_truth/gt-ab2": {"ioi": ["p-ioi-2", "p-ioi-1"]}, "ground_truth/gt-c": {"ioi": ["p-ioi-3"]}}
    (home.ground_truth_record("torn")).write_text('{"key": "torn", "manifest": {"ref": "ground-tr')
    assert len(boards.recorded_ground_truths(home)) == 3, "a torn record is skipped"


def test_another_ground_truth_is_ranked_apart_with_its_own_controls(home):
    # r3 (day 3) scored D (0.9, better than every other) against other ioi cross-sections: rank 1 of its own
    _write(home, "r3", [("D", "trained", 0.9), ("control:oracle", "oracle", 0.99), ("control:random", "random", 0.3)],
           ground_truth="ground_truth/gt-c")
    out = across_runs(home, pl.concat([LEDGER, _ev(("d", "r3", "D", "evaluated", 3))]))
    assert out.warnings == []
    assert out.rows.select("ground_truth", "content_hash", "rank").rows() == [
        (KEY_C, "d", 1), (KEY_AB, "a-new", 1), (KEY_AB, "b", 2), (KEY_AB, "a-old", 3), (None, "c", None)]
    assert out.controls.select("ground_truth", "run", "kind", "summary").rows() == [
        (KEY_C, "r3", "oracle", 0.99), (KEY_C, "r3", "random", 0.3), (KEY_AB, "r2", "oracle", 0.95),
        (KEY_AB, "r2", "random", 0.2)]
    assert out.groups.select("ground_truth", "runs").rows() == [(KEY_C, ["r3"]), (KEY_AB, ["r1", "r2"])]
    ranks = across.ranks_of(out.rows, {"d", "b"})
    assert ranks.select("content_hash", "ground_truth", "rank", "n_ranked").rows() == [("d", KEY_C, 1, 1),
                                                                                     ("b", KEY_AB, 2, 3)]


def test_an_sae_keeps_its_task_that_a_later_run_did_not_score(home):
    # r1 scored b on ioi only; r4 (later) re-scored b on sva only: both tasks listed, each from its run; sva's key is
    # gt-ab1's sva parts: sha256("p-sva-1")[:8]
    from storage.scores import write_run

    on_sva = pl.col("task").str.replace("ioi", "sva")
    write_run(home.scores_dir("r4"), _scores([B]).with_columns(on_sva), _board([(B, "trained", 0.3)]).with_columns(
        on_sva), _failures(), {"run": "r4", "model": "sage-tiny", "ground_truth": "ground_truth/gt-ab1"})
    out = across_runs(home, _ev(("b", "r1", B, "evaluated", 1), ("b", "r4", B, "evaluated", 4)))
    assert out.rows.select("task", "run", "ground_truth", "summary", "rank").rows() == [
        ("ioi", "r1", KEY_AB, 0.6, 1), ("sva", "r4", "09b6ca75", 0.3, 1)]


def test_unreadable_ground_truth_parts_fall_back_to_the_path_with_a_warning(home):
    _write(home, "r5", [("D", "trained", 0.9)], ground_truth="ground_truth/gone")
    _write(home, "r6", [("D", "trained", 0.8)], ground_truth=None)
    ledger = pl.concat([LEDGER, _ev(("d5", "r5", "D", "evaluated", 3), ("d6", "r6", "D", "evaluated", 3))])
    out = across_runs(home, ledger)
    got = out.rows.filter(pl.col("task").is_not_null()).select("content_hash", "ground_truth", "rank").rows()
    assert got == [("a-new", KEY_AB, 1), ("b", KEY_AB, 2), ("a-old", KEY_AB, 3), ("d5", "ground_truth/gone", 1),
                   ("d6", "run:r6", 1)]
    assert len(out.warnings) == 2 and not any("\n" in w for w in out.warnings)
    assert out.warnings[0].startswith("run(s) r5: the parts of ground truth ground_truth/gone could not be read")
    assert out.warnings[1].startswith("run(s) r6 record no ground truth")


def test_run_file_names_match_the_writer():
    from storage.scores import RUN_FILES

    assert boards.RUN_FILES == RUN_FILES


def test_the_tasks_a_model_s_latest_run_did_not_score_are_named_with_why(home):
    from storage.scores import write_run

    status = [{"task": "ioi", "status": "ran", "accuracy": 0.9, "logit_diff": 2.0},
              {"task": "sva", "status": "not posed", "reason": "only 2 of its 16 nouns are one token"},
              {"task": "gendered_pronoun", "status": "not done", "reason": "accuracy below the bar",
               "accuracy": 0.5, "logit_diff": 0.0}]
    write_run(home.scores_dir("r3"), _scores([A]), _board([(A, "trained", 0.5)]), _failures(),
              {"run": "r3", "model": "sage-tiny", "ground_truth": "ground_truth/gt-ab1", "task_status": status})
    out = across_runs(home, pl.concat([LEDGER, _ev(("a-3", "r3", A, "evaluated", 3))]))
    assert out.not_run == ("sva: not posed on sage-tiny (only 2 of its 16 nouns are one token) (run r3)",
                           "gendered_pronoun: not done by sage-tiny (accuracy 0.50, logit diff 0.00; accuracy below "
                           "the bar) (run r3)")
    assert across_runs(home, LEDGER).not_run == ()  # runs that recorded no task status say nothing


def test_an_edited_ground_truth_record_is_named_and_not_used(home):
    # a part hash changed in gt-ab2's record (still valid JSON) would silently give r2 another ioi key; the record no
    # longer verifies, so it is named in a warning and r2's results are keyed by their ground truth's path
    [rec] = [p for p in home.ground_truth_record("_").parent.glob("*.json") if "gt-ab2" in p.read_text()]
    text = rec.read_text()
    assert text.count('"p-ioi-2"') == 1
    rec.write_text(text.replace('"p-ioi-2"', '"p-ioi-7"'))
    assert "ground_truth/gt-ab2" not in boards.recorded_ground_truths(home)
    out = across_runs(home, LEDGER)
    keys = dict(out.rows.filter(pl.col("task").is_not_null()).select("run", "ground_truth").unique().rows())
    assert keys == {"r1": KEY_AB, "r2": "ground_truth/gt-ab2"}
    assert not any("\n" in w for w in out.warnings)
    [named] = [w for w in out.warnings if str(rec) in w or home.relative(rec) in w]
    assert "changed since it was written" in named
    assert any(w.startswith("run(s) r2: the parts of ground truth ground_truth/gt-ab2 could not be read")
               for w in out.warnings)
