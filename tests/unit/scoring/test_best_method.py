"""The dictionary an SAE is judged against at a cross-section (issue #27 item 6): the truest method, ties broken by a
stated rule (the first by name), whatever order the quality rows come in."""

from __future__ import annotations

import polars as pl

from sage_core.scoring.score import best_method


def _quality(methods: list[str], seed: int) -> pl.DataFrame:
    rows = [{"method": m, "attribute": a, "sufficiency": 1.0, "necessity": 1.0, "edit_accuracy": 1.0}
            for m in methods for a in ("IO", "S")]
    return pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=seed)


def test_tied_methods_give_the_first_by_name_in_any_row_order():
    # every method scores 1.0: before the rule, the pick followed polars' group order (shuffled rows, other picks)
    picks = {best_method(_quality(["weighted", "mse", "mean", "sparse"], seed)) for seed in range(40)}
    assert picks == {"mean"}


def test_the_truest_method_wins_over_the_name_rule():
    q = _quality(["weighted", "mse", "mean"], 0).with_columns(
        pl.when(pl.col("method") == "weighted").then(1.0).otherwise(0.5).alias("necessity"))
    assert {best_method(q.sample(fraction=1.0, shuffle=True, seed=s)) for s in range(10)} == {"weighted"}


def test_no_edit_accuracy_counts_as_missing_not_as_a_tie_breaker():
    q = _quality(["b", "a"], 1).with_columns(pl.lit(float("nan")).alias("edit_accuracy"))
    assert best_method(q) == "a"
