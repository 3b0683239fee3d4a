"""Which tasks an evaluation runs: posed by the tokenizer and done by the model (accuracy at or above the bar)."""

from __future__ import annotations

import math

from sage_core.prompts.task_status import MIN_ACCURACY, task_statuses

METRICS = {"ioi": {"accuracy": 0.98, "logit_diff": 5.4}, "sva": {"accuracy": 0.51, "logit_diff": 0.01},
           "gendered_pronoun": {"accuracy": MIN_ACCURACY, "logit_diff": 0.3}}


def test_a_task_runs_only_when_posed_and_done():
    out = {s.task: s for s in task_statuses(["ioi", "sva", "gendered_pronoun", "greater_than"],
                                            {"greater_than": "only 0 of its 8 centuries are one token"},
                                            {"ioi": "ioi: every word is one token"}, METRICS)}
    assert [t for t, s in out.items() if s.runs] == ["ioi", "gendered_pronoun"]  # the bar itself passes
    assert out["sva"].status == "not done" and out["sva"].accuracy == 0.51
    assert out["greater_than"].status == "not posed" and out["greater_than"].accuracy is None
    assert out["ioi"].vocabulary == "ioi: every word is one token"
    line = out["sva"].line("gpt2")
    assert line.startswith("sva: not done by gpt2 (accuracy 0.51, logit diff 0.01;") and "--min-task-accuracy" in line
    assert "not posed on gpt2 (only 0 of its 8 centuries" in out["greater_than"].line("gpt2")


def test_the_bar_lowered_to_zero_runs_every_posed_task():
    out = task_statuses(["ioi", "sva", "x"], {}, {}, {**METRICS, "x": {"accuracy": 0.0, "logit_diff": -3.0}}, 0.0)
    assert all(s.runs for s in out)


def test_a_missing_or_nan_accuracy_is_not_done_unless_the_bar_is_zero():
    metrics = {"sva": {"accuracy": math.nan, "logit_diff": math.nan}}
    out = task_statuses(["ioi", "sva"], {}, {}, metrics)
    assert [s.status for s in out] == ["not done", "not done"] and out[1].accuracy is None
    assert out[0].line("m") == "ioi: not done by m (no accuracy measured; no accuracy was measured)"
    assert all(s.runs for s in task_statuses(["ioi", "sva"], {}, {}, metrics, 0.0))  # 0 runs every posed task
