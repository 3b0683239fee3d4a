"""Metric definitions: one per leaderboard column, read by the schema, the tables, the notes and the controls."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from sage_core.scoring import definitions as defs
from sage_core.scoring.leaderboard import CORE_METRICS, LEADERBOARD_METRICS, LeaderboardRow, json_schemas
from sage_core.scoring.score import summary


def test_the_leaderboard_has_one_described_column_per_defined_metric():
    cols = list(LeaderboardRow.model_fields)
    assert cols == ["sae", "task", "kind", "mapping", "status", "n_sections", *defs.METRICS, "oracle_same",
                    "random_same"]
    assert (*LEADERBOARD_METRICS, *CORE_METRICS) == tuple(defs.METRICS)
    props = json_schemas()["LeaderboardRow"]["properties"]
    for m in defs.METRICS.values():
        assert props[m.name]["title"] == m.title and m.description in props[m.name]["description"]
        assert m.range_text() in props[m.name]["description"]


def test_the_summary_averages_exactly_the_parts_defined_as_in_it():
    """The summary's formula (sage_core.scoring.score.summary) and the definitions agree on its parts: each part
    alone sets it, and no other metric moves it."""
    in_name = {"necessity": "necessity_in_summary", "edit_gain_k4": "edit_gain_k4"}  # the clipped / k=4 forms
    parts = [m.name for m in defs.METRICS.values() if m.in_summary]
    assert parts == ["faithfulness", "necessity", "edit_gain_k4", "f1_mean", "mcc"]
    for p in parts:
        assert summary({in_name.get(p, p): 0.3}, k=4) == pytest.approx(0.3), p
    others = {m: 0.9 for m in defs.METRICS if m not in parts and m != "summary"}
    assert math.isnan(summary(others, k=4))


def test_ranges_directions_and_mistakes():
    nec, l0, suff = defs.get("necessity"), defs.get("l0"), defs.get("sufficiency")
    assert nec.range_text() == "(-inf, 1]" and l0.range_text() == "[0, inf)" and defs.get("mcc").bounded
    assert nec.outside(1.5) and not nec.outside(-663.6) and l0.outside(-1)
    assert l0.goodness(3) < l0.goodness(2) and suff.goodness(1.2) == suff.goodness(0.8) == pytest.approx(-0.2)
    assert math.isnan(suff.goodness(math.nan))
    with pytest.raises(ValueError, match="defined twice"):
        defs.register(defs.get("mcc"))
    with pytest.raises(ValidationError):
        defs.Metric(name="Bad Name", title="x", description="x", scope="task", low=0, high=1)
    with pytest.raises(KeyError, match="no metric named 'mccc'"):
        defs.get("mccc")
