"""The leaderboard across runs: every SAE ever evaluated for a model, on each task by the latest result for its content
hash there, ranked among the results scored against the same ground truth.

Pure: polars frames in, polars frames out. The ledger's evaluations (`EVALUATION_SCHEMA`: one row per SAE scored by a
run) name the runs that scored each content hash; those runs' leaderboard rows
(`sage_core.scoring.leaderboard.LeaderboardRow`, one per SAE and task) hold the figures. `combine` keeps, per (model,
content hash, task), the row of the latest run that scored it "ok" on that task: a later run that failed on the task,
or did not score it, hides nothing. A task no run scored "ok" keeps its latest row (listed, unranked); an SAE with no
row on any task is one row without a task that says why.

Comparability: a run scores each task against one ground truth (that task's cross-sections and dictionaries, which
another location-search config, per_group or task subset changes). `ground_truths` gives each (run, task) its key
(`ground_truth_key`); summaries against different ground truths are not comparable, so ranks are per (model, task,
ground truth) over the trained SAEs whose row is "ok" with a summary: 1 = the best summary, ties share the lowest rank
of their group ("min", competition ranking: summaries 0.9, 0.8, 0.8, 0.7 rank 1, 2, 2, 4, so a rank says how many SAEs
did strictly better). A row without a summary (failed, not scored) has no rank (null). The controls (oracle, random)
are not ranked entries; `controls` gives, per ground truth, its latest run's figures for them, as reference lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl

from sage_core.scoring.leaderboard import CORE_METRICS, LEADERBOARD_METRICS, LeaderboardRow

# the ledger's evaluations, as `storage.ledger.Ledger.evaluations` returns them; `reason` (why one failed) may be absent
EVALUATION_SCHEMA: dict[str, pl.DataType] = {
    "content_hash": pl.String, "model": pl.String, "run": pl.String, "sae": pl.String, "spec": pl.String,
    "source": pl.String, "status": pl.String, "reason": pl.String, "evaluated_at": pl.String}
OPTIONAL = ("reason",)
# per (run, task): the key of the ground truth that run scored that task against
GROUND_TRUTH_SCHEMA: dict[str, pl.DataType] = {"run": pl.String, "task": pl.String, "ground_truth": pl.String}
GT_KEY_LEN = 8
GROUP = ("model", "task", "ground_truth")  # what a rank is relative to
PREPENDED = ("model", "content_hash", "run", "evaluated_at", "ground_truth", "spec", "source")
_TEXT = ("sae", "task", "kind", "mapping", "status")
BOARD_SCHEMA: dict[str, pl.DataType] = {
    c: pl.String if c in _TEXT else pl.Int64 if c == "n_sections" else pl.Float64 for c in LeaderboardRow.model_fields}
CONTROL_KINDS = ("oracle", "random")
_FLOAT_COLUMNS = (*LEADERBOARD_METRICS, *CORE_METRICS, "oracle_same", "random_same")
# who an evaluation is: its content hash; a row without one stands for its spec (never merged with other hashless SAEs)
_IDENT = pl.coalesce(pl.col("content_hash"), pl.lit("spec:") + pl.col("spec"), pl.lit("sae:") + pl.col("sae"))


def ground_truth_key(part_hashes: Iterable[str]) -> str:
    """The short name of the ground truth a run scored one task against: the first `GT_KEY_LEN` hex digits of the
    sha256 of that task's parts' content hashes (`GroundTruthPartRef.hash`), sorted, one per line."""
    return hashlib.sha256("\n".join(sorted(part_hashes)).encode()).hexdigest()[:GT_KEY_LEN]


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
    later run name, then the later SAE name, so the choice never depends on row order); an SAE whose evaluations all
    failed keeps its latest failed row. `combine` uses it only for an SAE with no leaderboard row on any task (what
    its one row says); its figures come per task, from every run that scored it.

    Columns: `EVALUATION_SCHEMA`'s, sorted by model, content_hash."""
    ev = checked_evaluations(evaluations)
    return (ev.with_columns(_IDENT.alias("_id"), (pl.col("status") == "evaluated").alias("_ok"))
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


def _with_ground_truth(rows: pl.DataFrame, ground_truths: pl.DataFrame | None) -> pl.DataFrame:
    """`rows` (with run and task) with the `ground_truth` key of their (run, task); null where none is given."""
    gts = pl.DataFrame(schema=GROUND_TRUTH_SCHEMA) if ground_truths is None else ground_truths
    gts = (gts.select(pl.col(c).cast(t) for c, t in GROUND_TRUTH_SCHEMA.items())
           .unique(subset=["run", "task"], keep="first", maintain_order=True))
    return rows.drop("ground_truth", strict=False).join(gts, on=["run", "task"], how="left")


def _failure_reasons(failures: dict[str, pl.DataFrame] | None) -> pl.DataFrame:
    """Per (run, sae): 'failed: <stage>: <error>' of its first failure in that run's failures table."""
    schema = {"run": pl.String, "sae": pl.String, "_reason": pl.String}
    parts = [f.select(pl.lit(run, dtype=pl.String).alias("run"), pl.col("sae").cast(pl.String),
                      pl.format("failed: {}: {}", pl.col("stage"), pl.col("error")).alias("_reason"))
             for run, f in (failures or {}).items() if {"sae", "stage", "error"} <= set(f.columns)]
    return pl.concat([pl.DataFrame(schema=schema), *parts]).unique(subset=["run", "sae"], keep="first",
                                                                      maintain_order=True)


def _without_rows(ev: pl.DataFrame, found: pl.DataFrame, failures: dict[str, pl.DataFrame] | None) -> pl.DataFrame:
    """One row per SAE of `ev` with no row in `found` (no board row on any task): its `latest_per_hash` evaluation,
    status saying why: the failure from that run's failures table where it has one, else the ledger's reason."""
    latest = latest_per_hash(ev).with_columns(_IDENT.alias("_id"))
    rest = (latest.join(found.select("model", "_id").unique(), on=["model", "_id"], how="anti")
            .join(_failure_reasons(failures), on=["run", "sae"], how="left"))
    said = pl.when(pl.col("reason").str.strip_chars() != "").then(pl.format("failed: {}", pl.col("reason")))
    why = pl.coalesce(pl.col("_reason"), pl.when(pl.col("status") == "evaluated")
                      .then(pl.format("no result in run {}", pl.col("run")))
                      .otherwise(pl.coalesce(said, pl.format("failed in run {}", pl.col("run")))))
    return rest.select(*(c for c in PREPENDED if c != "ground_truth"), "sae", pl.lit("trained").alias("kind"),
                       why.alias("status"), pl.lit(0, dtype=pl.Int64).alias("n_sections"))


def combine(evaluations: pl.DataFrame, boards: dict[str, pl.DataFrame],
            failures: dict[str, pl.DataFrame] | None = None,
            ground_truths: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per (model, content hash, task): the trained SAE's leaderboard row from the latest run (of `evaluations`, the
    ledger's rows; its board `boards[run]`) that scored it "ok" on that task, else its latest row on that task (by
    `evaluated_at`, then the later run name, then the later SAE name). `PREPENDED` first (`ground_truth`: the key
    `ground_truths` (`GROUND_TRUTH_SCHEMA`) gives the row's (run, task); null where it gives none), `rank` last ("min"
    ranks per `GROUP`, null for a row without an "ok" summary).

    An SAE with no row on any task (its evaluations failed before scoring, it reached no task, or the runs could not
    be read) is kept as one row with a null task and `status` saying why (`latest_per_hash` picks the evaluation it
    speaks of). Projection units and controls are not entries (no content hash is theirs). Sorted by model, task,
    ground_truth, rank (nulls last), sae, content_hash."""
    ev = checked_evaluations(evaluations)
    rows = _stack(boards, ("trained",))
    board_cols = [c for c in rows.columns if c not in (*PREPENDED, "rank")]
    found = (ev.select(*(c for c in PREPENDED if c != "ground_truth"), "sae", _IDENT.alias("_id"))
             .join(rows, on=["run", "sae"], how="inner")
             .with_columns((pl.col("status") == "ok").alias("_ok"))
             # ascending, nulls first: the last row of each (model, hash, task) is the one that stands
             .sort("_ok", "evaluated_at", "run", "sae", nulls_last=False)
             .unique(subset=["model", "_id", "task"], keep="last", maintain_order=True))
    out = pl.concat([found.drop("_ok"), _without_rows(ev, found, failures)], how="diagonal_relaxed")
    out = _with_ground_truth(out, ground_truths).with_columns(pl.col("n_sections").fill_null(0))
    rankable = (pl.col("status") == "ok") & pl.col("task").is_not_null()
    rank = pl.when(rankable).then(pl.col("summary")).rank(method="min", descending=True).over(GROUP).cast(pl.Int64)
    return (out.with_columns(rank.alias("rank"))
            .select(*PREPENDED, *board_cols, "rank")
            .sort("model", "task", "ground_truth", "rank", "sae", "content_hash", nulls_last=True))


def controls(evaluations: pl.DataFrame, boards: dict[str, pl.DataFrame],
             ground_truths: pl.DataFrame | None = None) -> pl.DataFrame:
    """The controls' rows (oracle, random) of the latest run per (model, task, ground truth) among the runs
    `evaluations` name whose board holds that task's controls (a run's time: its latest `evaluated_at`; ties: the
    later run name). `ground_truths` as for `combine` (none given: one group per (model, task)).

    Columns: model, run, evaluated_at, ground_truth, then the board's (sae, task, kind, summary, ...); sorted by
    model, task, ground_truth, kind."""
    when = checked_evaluations(evaluations).group_by("model", "run").agg(pl.col("evaluated_at").max())
    rows = _with_ground_truth(_stack(boards, CONTROL_KINDS).join(when, on="run", how="inner"), ground_truths)
    pick = (rows.select(*GROUP, "run", "evaluated_at").unique()
            .sort("evaluated_at", "run", nulls_last=False)
            .unique(subset=list(GROUP), keep="last", maintain_order=True)
            .select(*GROUP, "run"))
    head = ("model", "run", "evaluated_at", "ground_truth")
    return (rows.join(pick, on=[*GROUP, "run"], how="semi", nulls_equal=True)
            .select(*head, *(c for c in rows.columns if c not in head))
            .sort("model", "task", "ground_truth", "kind", nulls_last=True))


def ground_truth_groups(rows: pl.DataFrame, ctrl: pl.DataFrame) -> pl.DataFrame:
    """The tables the board splits into: one per (model, task, ground truth) that `combine`'s `rows` hold (and, for a
    (model, task) with no SAE row at all, those its `controls` rows hold), with `runs` (the runs whose rows or
    controls it shows, oldest first; a run's time: its latest `evaluated_at`) and `latest` (the newest of those
    times). Sorted by model, task, then the group of the most recent run first (ties: the later key)."""
    cols = [*GROUP, "run", "evaluated_at"]
    saes = rows.filter(pl.col("task").is_not_null()).select(cols)
    refs = ctrl.select(cols)
    refs = pl.concat([refs.join(saes.select(*GROUP).unique(), on=list(GROUP), how="semi", nulls_equal=True),
                      refs.join(saes.select("model", "task").unique(), on=["model", "task"], how="anti")])
    per_run = (pl.concat([saes, refs]).group_by(*GROUP, "run").agg(pl.col("evaluated_at").max())
               .sort("evaluated_at", "run", nulls_last=False))
    return (per_run.group_by(*GROUP, maintain_order=True)
            .agg(pl.col("run").alias("runs"), pl.col("evaluated_at").max().alias("latest"))
            .sort("model", "task", "latest", "ground_truth", descending=[False, False, True, True], nulls_last=True))


def ranks_of(board: pl.DataFrame, content_hashes: list[str] | tuple[str, ...] | set[str]) -> pl.DataFrame:
    """The rows of `combine`'s `board` whose content_hash is one of `content_hashes`, each with `rank` and `n_ranked`
    (how many SAEs hold a rank in its (model, task, ground truth): "rank 3 of 17"; 0 for a row without a task); its
    `ground_truth` column says which ground truth the rank is against. An SAE that could not be ranked keeps its row
    with a null rank (its status says why)."""
    n = board.group_by(*GROUP).agg(pl.col("rank").count().alias("n_ranked"))
    hashes = pl.Series(list(content_hashes), dtype=pl.String)
    return (board.filter(pl.col("content_hash").is_in(hashes.implode()))
            .join(n, on=list(GROUP), how="left", nulls_equal=True, maintain_order="left")
            .with_columns(pl.col("n_ranked").fill_null(0).cast(pl.Int64)))
