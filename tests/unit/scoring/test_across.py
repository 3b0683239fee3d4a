"""The leaderboard across runs (issue #18 item 4) against hand-built ledgers and boards, with hand-computed ranks: the
latest result per (model, content hash, task), ranks per ground truth."""

from __future__ import annotations

import math
import random

import polars as pl
import pytest

from sage_core.scoring.across import (
    GROUND_TRUTH_SCHEMA,
    PREPENDED,
    combine,
    controls,
    ground_truth_groups,
    ground_truth_key,
    latest_per_hash,
    ranks_of,
)
from sage_core.scoring.leaderboard import LeaderboardRow

# the ledger's evaluations as storage.ledger.Ledger.evaluations returns them (built by hand: no ledger here)
EV_SCHEMA = {"content_hash": pl.String, "model": pl.String, "run": pl.String, "sae": pl.String, "spec": pl.String,
             "source": pl.String, "status": pl.String, "reason": pl.String, "evaluated_at": pl.String}
TEXT = {"sae", "task", "kind", "mapping", "status"}
BOARD = {c: pl.String if c in TEXT else pl.Int64 if c == "n_sections" else pl.Float64
         for c in LeaderboardRow.model_fields}


def ev(*rows: tuple) -> pl.DataFrame:
    """(hash, run, sae, status, day[, model[, reason]]) -> evaluations; day d is 2024-06-0d, 03:00 UTC."""
    out = []
    for r in rows:
        h, run, sae, status, day, *rest = r
        model = rest[0] if rest else "sage-tiny"
        reason = rest[1] if len(rest) > 1 else ""
        out.append({"content_hash": h, "model": model, "run": run, "sae": sae, "spec": f"dir:/saes/{sae}",
                    "source": "dir:/saes", "status": status, "reason": reason,
                    "evaluated_at": f"2024-06-0{day}T03:00:00.000000+00:00"})
    return pl.DataFrame(out, schema=EV_SCHEMA)


def board(*rows: tuple) -> pl.DataFrame:
    """(sae, task, summary[, kind[, status]]) -> a run's leaderboard; l0 = 10 * summary: whose figures these are."""
    out = []
    for sae, task, summary, *rest in rows:
        kind = rest[0] if rest else "trained"
        status = rest[1] if len(rest) > 1 else "ok"
        row = LeaderboardRow(sae=sae, task=task, kind=kind, mapping="control" if kind != "trained" else "native",
                             status=status, n_sections=2, summary=summary,
                             l0=None if summary is None or math.isnan(summary) else 10 * summary)
        out.append(row.model_dump())
    return pl.DataFrame(out, schema=BOARD)


def gts(*rows: tuple[str, str, str]) -> pl.DataFrame:
    """(run, task, ground-truth key) -> the ground truth each run scored each task against."""
    return pl.DataFrame(list(rows), schema=GROUND_TRUTH_SCHEMA, orient="row")


def picked(latest: pl.DataFrame) -> dict[str, tuple[str, str]]:
    return {r["content_hash"]: (r["run"], r["status"]) for r in latest.iter_rows(named=True)}


# -- latest_per_hash ---------------------------------------------------------------------------------------------
def test_two_runs_of_the_same_hash_the_latest_wins():
    latest = latest_per_hash(ev(("h1", "r1", "a", "evaluated", 1), ("h1", "r2", "a", "evaluated", 2),
                                ("h2", "r1", "b", "evaluated", 1)))
    assert picked(latest) == {"h1": ("r2", "evaluated"), "h2": ("r1", "evaluated")}
    assert latest.columns == list(EV_SCHEMA)


def test_a_failed_re_evaluation_does_not_hide_the_earlier_result():
    latest = latest_per_hash(ev(("h1", "r1", "a", "evaluated", 1), ("h1", "r2", "a", "failed", 3, "sage-tiny",
                                                                     "out of memory")))
    assert picked(latest) == {"h1": ("r1", "evaluated")}


def test_an_sae_whose_evaluations_all_failed_is_listed_as_failed():
    latest = latest_per_hash(ev(("h1", "r1", "a", "failed", 1, "sage-tiny", "bad cfg"),
                                ("h1", "r2", "a", "failed", 2, "sage-tiny", "still bad")))
    assert picked(latest) == {"h1": ("r2", "failed")}
    assert latest["reason"].to_list() == ["still bad"]


def test_same_time_the_later_run_name_wins_whatever_the_row_order():
    rows = [("h1", "r-a", "a", "evaluated", 2), ("h1", "r-b", "a", "evaluated", 2), ("h1", "r-0", "a", "evaluated", 1)]
    for seed in range(6):
        random.Random(seed).shuffle(rows)
        assert picked(latest_per_hash(ev(*rows))) == {"h1": ("r-b", "evaluated")}


def test_one_hash_per_model():
    latest = latest_per_hash(ev(("h1", "r1", "a", "evaluated", 1, "sage-tiny"), ("h1", "g1", "a", "evaluated", 2,
                                                                                  "gpt2")))
    assert sorted(latest.select("model", "run").iter_rows()) == [("gpt2", "g1"), ("sage-tiny", "r1")]


def test_a_ledger_without_reason_reads_and_one_missing_column_is_one_line():
    frame = ev(("h1", "r1", "a", "evaluated", 1)).drop("reason")
    assert latest_per_hash(frame)["reason"].to_list() == [None]
    with pytest.raises(ValueError, match="evaluated_at") as e:
        latest_per_hash(frame.drop("evaluated_at"))
    assert "\n" not in str(e.value)


# -- combine: ranks ----------------------------------------------------------------------------------------------
def test_ranks_ties_share_the_lowest_rank_and_rows_without_a_summary_are_unranked():
    # summaries a .9, b .8, c .8, d .7 -> 1, 2, 2, 4 ("min"); e failed and f NaN: no rank, listed last
    names = "abcdef"
    latest = latest_per_hash(ev(*((f"h{n}", "r1", n, "evaluated", 1) for n in names)))
    b = board(("a", "ioi", 0.9), ("b", "ioi", 0.8), ("c", "ioi", 0.8), ("d", "ioi", 0.7),
              ("e", "ioi", None, "trained", "failed: nan loss"), ("f", "ioi", float("nan")),
              ("control:oracle", "ioi", 0.95, "oracle"), ("control:random", "ioi", 0.05, "random"))
    out = combine(latest, {"r1": b})
    assert out.select("sae", "rank").rows() == [("a", 1), ("b", 2), ("c", 2), ("d", 4), ("e", None), ("f", None)]
    assert out.columns[:len(PREPENDED)] == list(PREPENDED) and out.columns[-1] == "rank"
    assert out.filter(pl.col("sae") == "e")["status"].to_list() == ["failed: nan loss"]


def test_ranks_are_per_model_and_task_and_controls_are_no_entries():
    latest = latest_per_hash(ev(("ha", "r1", "a", "evaluated", 1), ("hb", "r1", "b", "evaluated", 1),
                                ("ga", "g1", "a", "evaluated", 1, "gpt2")))
    r1 = board(("a", "ioi", 0.3), ("b", "ioi", 0.6), ("a", "gt", 0.9), ("b", "gt", 0.1),
               ("control:oracle", "ioi", 0.99, "oracle"), ("fam:projection[L0.resid_pre->L0.resid_post]", "ioi", 0.95))
    g1 = board(("a", "ioi", 0.2))
    out = combine(latest, {"r1": r1, "g1": g1})
    got = {(r["model"], r["task"], r["sae"]): r["rank"] for r in out.iter_rows(named=True)}
    assert got == {("gpt2", "ioi", "a"): 1, ("sage-tiny", "gt", "a"): 1, ("sage-tiny", "gt", "b"): 2,
                   ("sage-tiny", "ioi", "b"): 1, ("sage-tiny", "ioi", "a"): 2}


def test_two_hashes_of_the_same_name_are_both_listed_with_their_own_figures():
    # the zoo SAE (r1) and a copy with changed weights under the same name (r2)
    latest = latest_per_hash(ev(("old", "r1", "a", "evaluated", 1), ("new", "r2", "a", "evaluated", 2)))
    out = combine(latest, {"r1": board(("a", "ioi", 0.4)), "r2": board(("a", "ioi", 0.6))})
    assert out.select("content_hash", "run", "summary", "l0", "rank").rows() == [
        ("new", "r2", 0.6, 6.0, 1), ("old", "r1", 0.4, 4.0, 2)]


def test_the_latest_result_replaces_the_older_one_in_the_ranking():
    latest = latest_per_hash(ev(("h1", "r1", "a", "evaluated", 1), ("h2", "r1", "b", "evaluated", 1),
                                ("h1", "r2", "a", "evaluated", 2)))
    out = combine(latest, {"r1": board(("a", "ioi", 0.9), ("b", "ioi", 0.5)), "r2": board(("a", "ioi", 0.1))})
    assert out.select("sae", "run", "summary", "rank").rows() == [("b", "r1", 0.5, 1), ("a", "r2", 0.1, 2)]


def test_entries_without_a_board_row_stay_with_the_reason():
    latest = latest_per_hash(ev(("h1", "r1", "a", "evaluated", 1),
                                ("h2", "r1", "bad", "failed", 1),  # in r1's failures table
                                ("h3", "r9", "gone", "failed", 1, "sage-tiny", "weights not offline"),
                                ("h4", "r9", "nowhere", "failed", 1),
                                ("h5", "r1", "unreached", "evaluated", 1)))
    fails = {"r1": pl.DataFrame({"sae": ["bad", "bad"], "stage": ["resolve", "score"], "error": ["no cfg", "later"]})}
    out = combine(latest, {"r1": board(("a", "ioi", 0.5))}, fails)
    got = {r["sae"]: (r["task"], r["kind"], r["status"], r["rank"]) for r in out.iter_rows(named=True)}
    assert got == {"a": ("ioi", "trained", "ok", 1),
                   "bad": (None, "trained", "failed: resolve: no cfg", None),
                   "gone": (None, "trained", "failed: weights not offline", None),
                   "nowhere": (None, "trained", "failed in run r9", None),
                   "unreached": (None, "trained", "no result in run r1", None)}
    assert out["sae"].to_list()[0] == "a", "ranked rows first"


def test_nothing_evaluated_gives_an_empty_board_with_its_columns():
    out = combine(latest_per_hash(ev()), {})
    assert out.is_empty() and out.columns[:len(PREPENDED)] == list(PREPENDED) and "summary" in out.columns


# -- controls ----------------------------------------------------------------------------------------------------
def test_controls_come_from_the_latest_run_holding_that_task():
    latest = latest_per_hash(ev(("h1", "r1", "a", "evaluated", 1), ("h2", "r2", "b", "evaluated", 2),
                                ("h3", "r3", "c", "evaluated", 2)))
    r1 = board(("a", "ioi", 0.5), ("control:oracle", "ioi", 0.8, "oracle"), ("control:oracle", "gt", 0.7, "oracle"),
               ("control:random", "gt", 0.1, "random"))
    r2 = board(("b", "ioi", 0.5), ("control:oracle", "ioi", 0.9, "oracle"), ("control:random", "ioi", 0.2, "random"))
    r3 = board(("c", "ioi", 0.5), ("control:oracle", "ioi", 0.95, "oracle"), ("control:random", "ioi", 0.3, "random"))
    out = controls(latest, {"r1": r1, "r2": r2, "r3": r3})
    # ioi: r2 and r3 at the same time -> the later name, r3; gt: only r1 scored it
    assert out.select("task", "kind", "run", "summary").rows() == [
        ("gt", "oracle", "r1", 0.7), ("gt", "random", "r1", 0.1), ("ioi", "oracle", "r3", 0.95),
        ("ioi", "random", "r3", 0.3)]


# -- ranks_of ----------------------------------------------------------------------------------------------------
def test_ranks_of_gives_the_rank_among_all_and_how_many_are_ranked():
    latest = latest_per_hash(ev(*((f"h{n}", "r1", n, "evaluated", 1) for n in "abcd"),
                                ("hn", "r2", "n", "evaluated", 2), ("hx", "r2", "x", "failed", 2, "sage-tiny", "boom")))
    out = combine(latest, {"r1": board(("a", "ioi", 0.9), ("b", "ioi", 0.7), ("c", "ioi", 0.5), ("d", "ioi", None,
                                                                                                  "trained", "failed")),
                           "r2": board(("n", "ioi", 0.8))})
    new = ranks_of(out, ["hn", "hx"])
    assert new.select("content_hash", "rank", "n_ranked").rows() == [("hn", 2, 4), ("hx", None, 0)]
    assert ranks_of(out, []).is_empty()


# -- the latest result per (model, content hash, task) ------------------------------------------------------------
def test_a_later_run_on_fewer_tasks_keeps_the_earlier_rows_of_the_others():
    # r1 scored h on ioi and sva, r2 (later) on ioi only: ioi from r2, sva still from r1
    e = ev(("h", "r1", "a", "evaluated", 1), ("h", "r2", "a", "evaluated", 2))
    out = combine(e, {"r1": board(("a", "ioi", 0.4), ("a", "sva", 0.6)), "r2": board(("a", "ioi", 0.5))})
    assert out.select("task", "run", "summary", "l0", "rank").rows() == [("ioi", "r2", 0.5, 5.0, 1),
                                                                          ("sva", "r1", 0.6, 6.0, 1)]


def test_a_later_failed_row_on_a_task_hides_no_earlier_ok_row_on_it():
    # r2 failed h on ioi but scored sva; b (0.45, r1) ranks against h's r1 result (0.4) on ioi, not against a failure
    e = ev(("h", "r1", "a", "evaluated", 1), ("hb", "r1", "b", "evaluated", 1),
           ("h", "r2", "a", "evaluated", 2))
    r1 = board(("a", "ioi", 0.4), ("b", "ioi", 0.45))
    r2 = board(("a", "ioi", None, "trained", "failed: nan loss"), ("a", "sva", 0.3))
    out = combine(e, {"r1": r1, "r2": r2})
    assert out.select("sae", "task", "run", "status", "rank").rows() == [
        ("b", "ioi", "r1", "ok", 1), ("a", "ioi", "r1", "ok", 2), ("a", "sva", "r2", "ok", 1)]


def test_a_task_only_ever_failed_keeps_its_latest_failed_row_unranked():
    e = ev(("h", "r1", "a", "evaluated", 1), ("h", "r2", "a", "failed", 2, "sage-tiny", "load: oom"))
    r1 = board(("a", "ioi", None, "trained", "failed: first"), ("a", "sva", 0.2))
    r2 = board(("a", "ioi", None, "trained", "failed: second"))
    out = combine(e, {"r1": r1, "r2": r2})
    assert out.select("task", "run", "status", "rank").rows() == [("ioi", "r2", "failed: second", None),
                                                                   ("sva", "r1", "ok", 1)]


def test_a_later_run_that_reached_no_task_hides_nothing_and_adds_no_row():
    e = ev(("h", "r1", "a", "evaluated", 1), ("h", "r2", "a", "evaluated", 2), ("h", "r3", "a", "failed", 3))
    out = combine(e, {"r1": board(("a", "ioi", 0.4)), "r2": board(), "r3": board()})
    assert out.select("task", "run", "status", "rank").rows() == [("ioi", "r1", "ok", 1)]


# -- ranks per ground truth ---------------------------------------------------------------------------------------
def test_key_is_the_sorted_part_hashes_hashed():
    # sha256(b"p1\np2") = b98d8487...; sha256(b"") = e3b0c442...
    assert ground_truth_key(["p2", "p1"]) == ground_truth_key(["p1", "p2"]) == "b98d8487"
    assert ground_truth_key([]) == "e3b0c442"


def _three_runs():
    """r1 and r3 scored ioi against ground truth G1, r2 against G2; on G1: a .9, c .7, e .6; on G2: d .8, b .5."""
    e = ev(("ha", "r1", "a", "evaluated", 1), ("he", "r1", "e", "evaluated", 1), ("hb", "r2", "b", "evaluated", 2),
           ("hd", "r2", "d", "evaluated", 2), ("hc", "r3", "c", "evaluated", 3))
    boards = {"r1": board(("a", "ioi", 0.9), ("e", "ioi", 0.6), ("control:oracle", "ioi", 0.95, "oracle")),
              "r2": board(("b", "ioi", 0.5), ("d", "ioi", 0.8), ("control:oracle", "ioi", 0.85, "oracle")),
              "r3": board(("c", "ioi", 0.7), ("control:oracle", "ioi", 0.97, "oracle"))}
    return e, boards, gts(("r1", "ioi", "G1"), ("r2", "ioi", "G2"), ("r3", "ioi", "G1"))


def test_ranks_are_per_ground_truth():
    e, boards, g = _three_runs()
    out = combine(e, boards, ground_truths=g)
    assert out.select("ground_truth", "sae", "run", "rank").rows() == [
        ("G1", "a", "r1", 1), ("G1", "c", "r3", 2), ("G1", "e", "r1", 3), ("G2", "d", "r2", 1), ("G2", "b", "r2", 2)]
    assert out.columns[:len(PREPENDED)] == list(PREPENDED) and "ground_truth" in PREPENDED
    # no ground truths given: one group per (model, task), as if every run were comparable
    assert combine(e, boards).select("sae", "rank").rows() == [("a", 1), ("d", 2), ("c", 3), ("e", 4), ("b", 5)]


def test_ranks_of_counts_within_the_own_ground_truth():
    e, boards, g = _three_runs()
    new = ranks_of(combine(e, boards, ground_truths=g), {"hc", "hb"})
    assert new.select("content_hash", "ground_truth", "rank", "n_ranked").rows() == [("hc", "G1", 2, 3),
                                                                                     ("hb", "G2", 2, 2)]


def test_an_sae_re_scored_against_another_ground_truth_moves_to_it():
    # ha: r1 (G1, day 1), then r9 (G2, day 4): its latest ioi result is against G2, ranked there only
    e, boards, g = _three_runs()
    e = pl.concat([e, ev(("ha", "r9", "a", "evaluated", 4))])
    boards["r9"] = board(("a", "ioi", 0.1))
    out = combine(e, boards, ground_truths=pl.concat([g, gts(("r9", "ioi", "G2"))]))
    assert out.select("ground_truth", "sae", "run", "rank").rows() == [
        ("G1", "c", "r3", 1), ("G1", "e", "r1", 2), ("G2", "d", "r2", 1), ("G2", "b", "r2", 2), ("G2", "a", "r9", 3)]


def test_controls_are_the_latest_run_of_each_ground_truth():
    e, boards, g = _three_runs()
    out = controls(e, boards, g)
    assert out.select("ground_truth", "run", "summary").rows() == [("G1", "r3", 0.97), ("G2", "r2", 0.85)]


def test_groups_most_recent_first_with_the_runs_they_show():
    e, boards, g = _three_runs()
    rows, ctrl = combine(e, boards, ground_truths=g), controls(e, boards, g)
    got = ground_truth_groups(rows, ctrl)
    # G1: r1 (day 1: a, e) and r3 (day 3: c, controls) -> latest day 3, first; G2: r2 (day 2)
    assert got.select("ground_truth", "runs", "latest").rows() == [
        ("G1", ["r1", "r3"], "2024-06-03T03:00:00.000000+00:00"), ("G2", ["r2"], "2024-06-02T03:00:00.000000+00:00")]


def test_groups_hold_a_ground_truth_of_controls_only_when_the_task_has_no_sae_row():
    # r2 (G2) re-scored b, whose r1 (G1) row it replaces: G1 keeps only r1's controls -> no table; on sva no SAE
    # reached a result: its controls' table stays
    e = ev(("hb", "r1", "b", "evaluated", 1), ("hb", "r2", "b", "evaluated", 2))
    boards = {"r1": board(("b", "ioi", 0.4), ("control:oracle", "ioi", 0.9, "oracle")),
              "r2": board(("b", "ioi", 0.6), ("control:oracle", "ioi", 0.8, "oracle"),
                          ("control:oracle", "sva", 0.7, "oracle"))}
    g = gts(("r1", "ioi", "G1"), ("r2", "ioi", "G2"), ("r2", "sva", "S2"))
    got = ground_truth_groups(combine(e, boards, ground_truths=g), controls(e, boards, g))
    assert got.select("task", "ground_truth", "runs").rows() == [("ioi", "G2", ["r2"]), ("sva", "S2", ["r2"])]
