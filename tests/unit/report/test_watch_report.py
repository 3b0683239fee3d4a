"""The "new this run" markdown: ranks as "k of n", failures and skips with their reasons, cells that cannot break the
table."""

from __future__ import annotations

import polars as pl

from report.watch import watch_markdown


def outcome(name, status, reason="", run=None, h=None, model="sage-tiny"):
    return {"source": "dir:/inbox", "release": "", "sae_id": f"/inbox/{name}", "spec": f"/inbox/{name}",
            "model": model, "hook": "blocks.0.hook_resid_post", "content_hash": h, "status": status,
            "reason": reason, "run": run, "sae": name if run else None}


def summary(outcomes, dry_run=False, not_new=()):
    counts = {"evaluated": 0, "failed": 0, "skipped": 0, "same-weights": 0, "unchanged": 3, "busy": 0, "deferred": 0}
    for o in outcomes:
        counts[o["status"]] += 1
    return {"sources": ["dir:/inbox"], "dry_run": dry_run, "listed": len(outcomes) + 3, "new": len(outcomes),
            "counts": counts, "outcomes": outcomes, "not_new": list(not_new), "unreadable": [],
            "source_errors": [{"source": "registry:x", "error": "hub down"}]}


def test_ranks_reasons_and_counts():
    outs = [outcome("lab-a", "evaluated", run="run-1", h="h1"), outcome("lab-b", "failed", reason="NaN | in W_dec"),
            outcome("lab-c", "skipped", reason="weights of gpt2 not cached", model="gpt2-small")]
    ranks = pl.DataFrame({"content_hash": ["h1", "h1"], "task": ["sva", "ioi"], "rank": [2, 5], "n_ranked": [9, 9],
                          "summary": [0.61234, 0.4], "ground_truth": ["3f2a91c0", "77aa0b12"]})
    md = watch_markdown(summary(outs), ranks, "2026-11-30 03:00")
    assert "1 evaluated, 1 failed, 1 skipped" in md and "3 unchanged" in md
    ioi, sva = md.index("| lab-a | sage-tiny | blocks.0.hook_resid_post | ioi | 5 of 9 | 0.400 | run-1 | 77aa0b12 |"), \
        md.index("| lab-a | sage-tiny | blocks.0.hook_resid_post | sva | 2 of 9 | 0.612 | run-1 | 3f2a91c0 |")
    assert ioi < sva  # tasks in order
    assert "NaN \\| in W_dec" in md  # a '|' in a reason stays inside its cell
    assert "weights of gpt2 not cached" in md and "hub down" in md


def test_an_evaluated_sae_without_rows_says_so_and_a_dry_run_says_what_it_would_do():
    md = watch_markdown(summary([outcome("lab-a", "evaluated", run="run-1", h="h9")]), pl.DataFrame(
        {"content_hash": [], "task": [], "rank": [], "n_ranked": [], "summary": []}), "now")
    assert "not on the leaderboard" in md
    dry = watch_markdown(summary([], dry_run=True, not_new=[{**outcome("lab-z", "evaluate"), "reason": "never seen"}]),
                         pl.DataFrame(), "now")
    assert "dry run" in dry and "| /inbox/lab-z | sage-tiny | evaluate | never seen |" in dry
