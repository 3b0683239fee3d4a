"""The leaderboard across runs: every SAE ever evaluated for a model, each by the latest result for its content hash.

Pure: polars frames in, polars frames out. The ledger's evaluations (`EVALUATION_SCHEMA`: one row per SAE scored by a
run) choose, per (model, content hash), the run whose result stands (`latest_per_hash`); that run's leaderboard rows
(`sage_core.scoring.leaderboard.LeaderboardRow`, one per SAE and task) give the figures (`combine`).

Ranks are per (model, task) over the trained SAEs whose row is "ok" with a summary: 1 = the best summary, ties share
the lowest rank of their group ("min", competition ranking: summaries 0.9, 0.8, 0.8, 0.7 rank 1, 2, 2, 4, so a rank
says how many SAEs did strictly better). A row without a summary (failed, not scored) has no rank (null) and sorts
after every ranked row: it is listed, never ranked as if it had scored. The controls (oracle, random) are not ranked
entries; `controls` gives the latest run's figures for them, as reference lines.
"""

from __future__ import annotations

import polars as pl

from sage_core.scoring.leaderboard import CORE_METRICS, LEADERBOARD_METRICS, LeaderboardRow

# the ledger's evaluations, as `storage.ledger.Ledger.evaluations` returns them; `reason` (why one failed) may be absent
EVALUATION_SCHEMA: dict[str, pl.DataType] = {
    "content_hash": pl.String, "model": pl.String, "run": pl.String, "sae": pl.String, "spec": pl.String,
    "source": pl.String, "status": pl.String, "reason": pl.String, "evaluated_at": pl.String}
OPTIONAL = ("reason",)
PREPENDED = ("model", "content_hash", "run", "evaluated_at", "spec", "source")
_TEXT = ("sae", "task", "kind", "mapping", "status")
BOARD_SCHEMA: dict[str, pl.DataType] = {
    c: pl.String if c in _TEXT else pl.Int64 if c == "n_sections" else pl.Float64 for c in LeaderboardRow.model_fields}
CONTROL_KINDS = ("oracle", "random")
_FLOAT_COLUMNS = (*LEADERBOARD_METRICS, *CORE_METRICS, "oracle_same", "random_same")


def checked_evaluations(evaluations: pl.DataFrame) -> pl.DataFrame:
    """`evaluations` with exactly `EVALUATION_SCHEMA`'s columns and dtypes (an absent `reason`: null); a one-line
    ValueError when another column is missing."""
    missing = [c for c in EVALUATION_SCHEMA if c not in evaluations.columns and c not in OPTIONAL]
    if missing:
        raise ValueError(f"the ledger's evaluations lack the column(s) {', '.join(missing)}; expected "
                         f"{', '.join(EVALUATION_SCHEMA)} (a ledger written by another SAGE version)")
    return evaluations.select((pl.col(c) if c in evaluations.columns else pl.lit(None)).cast(t).alias(c)
                              for c, t in EVALUATION_SCHEMA.items())


def latest_per_hash(evaluations: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, content_hash): its latest evaluation with status "evaluated" (by `evaluated_at`; ties: the
    later run name, then the later SAE name, so the choice never depends on row order). A later "failed" evaluation
    does not hide an earlier result; an SAE whose evaluations all failed keeps its latest failed row, so it is listed.
    A row without a content hash stands for its spec (it is never merged with other hashless SAEs).

    Columns: `EVALUATION_SCHEMA`'s, sorted by model, content_hash."""
    ev = checked_evaluations(evaluations)
    ident = pl.coalesce(pl.col("content_hash"), pl.lit("spec:") + pl.col("spec"), pl.lit("sae:") + pl.col("sae"))
    return (ev.with_columns(ident.alias("_id"), (pl.col("status") == "evaluated").alias("_ok"))
            # ascending, nulls first: the last row of each group is the one that stands
            .sort("_ok", "evaluated_at", "run", "sae", nulls_last=False)
            .unique(subset=["model", "_id"], keep="last", maintain_order=True)
            .sort("model", "content_hash", "_id", nulls_last=True)
            .drop("_id", "_ok"))


def _stack(boards: dict[str, pl.DataFrame], kinds: tuple[str, ...]) -> pl.DataFrame:
    """The boards' rows of those kinds, with their run, in one frame of at least `BOARD_SCHEMA`'s columns (a board
    of an older run may lack a column: null there)."""
    empty = pl.DataFrame(schema={**BOARD_SCHEMA, "run": pl.String})
    parts = [b.filter(pl.col("kind").is_in(kinds)).with_columns(pl.lit(run, dtype=pl.String).alias("run"))
             for run, b in boards.items()]
    out = pl.concat([empty, *parts], how="diagonal_relaxed")
    return out.with_columns(pl.col(c).cast(pl.Float64).fill_nan(None) for c in _FLOAT_COLUMNS)


def _failure_reasons(failures: dict[str, pl.DataFrame] | None) -> pl.DataFrame:
    """Per (run, sae): 'failed: <stage>: <error>' of its first failure in that run's failures table."""
    schema = {"run": pl.String, "sae": pl.String, "_reason": pl.String}
    parts = [f.select(pl.lit(run, dtype=pl.String).alias("run"), pl.col("sae").cast(pl.String),
                      pl.format("failed: {}: {}", pl.col("stage"), pl.col("error")).alias("_reason"))
             for run, f in (failures or {}).items() if {"sae", "stage", "error"} <= set(f.columns)]
    return pl.concat([pl.DataFrame(schema=schema), *parts]).unique(subset=["run", "sae"], keep="first",
                                                                      maintain_order=True)


def combine(latest: pl.DataFrame, boards: dict[str, pl.DataFrame],
            failures: dict[str, pl.DataFrame] | None = None) -> pl.DataFrame:
    """The leaderboard rows of each latest (run, sae) from that run's board (`boards[run]`, every task), trained SAEs
    only, with `PREPENDED` first and `rank` last (see the module's note: "min" ranks per (model, task), null for a
    row without an "ok" summary).

    An entry with no row in its run's board (its evaluation failed before scoring, it reached no task, or the run
    could not be read) is kept as one row with a null task and `status` saying why: the failure from `failures[run]`
    (that run's failures table) where it has one, else the ledger's `reason`. Projection units and controls are not
    entries (no content hash is theirs). Sorted by model, task, rank (nulls last), sae, content_hash."""
    latest = checked_evaluations(latest).select(*PREPENDED, "sae", pl.col("status").alias("_ledger"),
                                                pl.col("reason").alias("_said"))
    rows = _stack(boards, ("trained",))
    board_cols = [c for c in rows.columns if c not in (*PREPENDED, "rank")]
    out = latest.join(rows, on=["run", "sae"], how="left").join(_failure_reasons(failures), on=["run", "sae"],
                                                                how="left")
    no_row = pl.col("task").is_null() & pl.col("kind").is_null()
    said = pl.when(pl.col("_said").str.strip_chars() != "").then(pl.format("failed: {}", pl.col("_said")))
    why = pl.coalesce(pl.col("_reason"), pl.when(pl.col("_ledger") == "evaluated")
                      .then(pl.format("no result in run {}", pl.col("run")))
                      .otherwise(pl.coalesce(said, pl.format("failed in run {}", pl.col("run")))))
    out = out.with_columns(pl.when(no_row).then(pl.lit("trained")).otherwise(pl.col("kind")).alias("kind"),
                           pl.when(no_row).then(why).otherwise(pl.col("status")).alias("status"),
                           pl.col("n_sections").fill_null(0))
    rankable = (pl.col("status") == "ok") & pl.col("task").is_not_null()
    rank = (pl.when(rankable).then(pl.col("summary")).rank(method="min", descending=True)
            .over("model", "task").cast(pl.Int64))
    return (out.with_columns(rank.alias("rank"))
            .select(*PREPENDED, *board_cols, "rank")
            .sort("model", "task", "rank", "sae", "content_hash", nulls_last=True))


def controls(latest: pl.DataFrame, boards: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The controls' rows (oracle, random) of the latest run per (model, task) among the runs `latest` names whose
    board holds that task's controls (a run's time: its latest `evaluated_at`; ties: the later run name).

    Columns: model, run, evaluated_at, then the board's (sae, task, kind, summary, ...); sorted by model, task,
    kind."""
    when = latest.group_by("model", "run").agg(pl.col("evaluated_at").max())
    rows = _stack(boards, CONTROL_KINDS).join(when, on="run", how="inner")
    pick = (rows.select("model", "task", "run", "evaluated_at").unique()
            .sort("evaluated_at", "run", nulls_last=False)
            .unique(subset=["model", "task"], keep="last", maintain_order=True)
            .select("model", "task", "run"))
    rest = [c for c in rows.columns if c not in ("model", "run", "evaluated_at")]
    return (rows.join(pick, on=["model", "task", "run"], how="semi")
            .select("model", "run", "evaluated_at", *rest)
            .sort("model", "task", "kind"))


def ranks_of(board: pl.DataFrame, content_hashes: list[str] | tuple[str, ...] | set[str]) -> pl.DataFrame:
    """The rows of `combine`'s `board` whose content_hash is one of `content_hashes`, each with `rank` and `n_ranked`
    (how many SAEs hold a rank in that (model, task): "rank 3 of 17"; 0 for a row without a task). An SAE that could
    not be ranked keeps its row with a null rank (its status says why)."""
    n = board.group_by("model", "task").agg(pl.col("rank").count().alias("n_ranked"))
    hashes = pl.Series(list(content_hashes), dtype=pl.String)
    return (board.filter(pl.col("content_hash").is_in(hashes.implode()))
            .join(n, on=["model", "task"], how="left", nulls_equal=False, maintain_order="left")
            .with_columns(pl.col("n_ranked").fill_null(0).cast(pl.Int64)))
