"""The controls' verdict names SAEs as the tables do (`report.tables.short_sae`), in the report and the terminal."""

from __future__ import annotations

import polars as pl

from report.controls import controls_verdict
from report.summary import leaderboard_text, summary_markdown

LONG = "blocks.0.hook_resid_post--topk-64"
SHORT = "L0.resid_post topk-64"


def _board(matched: bool) -> pl.DataFrame:
    """A trained SAE above the oracle (and one below random): both are named in the verdict."""
    rows = [dict(sae="control:oracle", kind="oracle", summary=0.5), dict(sae="control:random", kind="random",
                                                                         summary=0.2),
            dict(sae=LONG, kind="trained", summary=0.9), dict(sae="blocks.1.hook_resid_pre--standard-64",
                                                              kind="trained", summary=0.1)]
    board = pl.DataFrame([{**r, "task": "ioi", "mapping": "native", "n_sections": 2} for r in rows])
    if matched:  # the controls' summaries over each SAE's own cross-sections
        board = board.with_columns(oracle_same=pl.lit(0.5), random_same=pl.lit(0.2))
    return board


def test_the_controls_line_uses_the_tables_short_sae_names():
    for matched in (False, True):
        holds, text = controls_verdict(_board(matched), "ioi")
        assert holds is False
        assert SHORT in text and "L1.resid_pre standard-64" in text, text
        assert LONG not in text and "--" not in text, text
    md = summary_markdown(_board(True), pl.DataFrame({"sae": [], "error": []}), {"run": "r"})
    line = next(s for s in md.splitlines() if s.startswith("**Controls:**"))
    assert SHORT in line and LONG not in line
    assert "controls: oracle > SAE > random" in leaderboard_text(_board(True))
    assert LONG not in leaderboard_text(_board(True)).split("controls:")[1]
