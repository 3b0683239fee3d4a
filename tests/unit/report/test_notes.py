"""The report's notes: SAEs not reached on a task, failures grouped by error, and figures above 1."""

from __future__ import annotations

import polars as pl
import pytest

from report.notes import ABOVE_ONE, above_one_lines, failure_lines, kept_hooks, unreached_lines
from report.summary import summary_markdown
from report.verdicts import VERDICT_SCHEMA

META = {"run": "notes", "model": "sage-tiny", "tasks": ["ioi"], "created": "2025-01-01"}
HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out", "blocks.2.hook_resid_post"]
FAMILIES = ["topk-64", "relu-64", "jumprelu-64", "topk-128", "relu-128", "jumprelu-128", "topk-256", "relu-256",
            "jumprelu-256", "batchtopk-64"]


def _board(**over) -> pl.DataFrame:
    row = dict(sae="sae-a", task="ioi", kind="trained", mapping="native", status="ok", n_sections=2, summary=0.5,
               explained_variance=0.9, sufficiency=0.95, faithfulness=0.9, necessity=0.8, ce_loss_recovered=0.9,
               l0=10.0)
    rows = [row, {**row, "sae": "control:oracle", "kind": "oracle", "summary": 0.9},
            {**row, "sae": "control:random", "kind": "random", "summary": 0.1}]
    rows[0].update(over)
    return pl.DataFrame(rows)


def _zoo_unreached() -> list[dict]:
    """A zoo of 30 SAEs (10 families at 3 hooks) none of which reaches the task's kept cross-sections."""
    return [{"sae": f"{h}--{f}", "task": "ioi", "hook": h} for h in HOOKS for f in FAMILIES]


def test_unreached_zoo_is_one_line_per_task_grouped_by_hook_with_the_kept_hooks():
    kept = {"ioi": ["blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]}
    lines = unreached_lines(_zoo_unreached() + [{"sae": "ext", "task": "gt", "hook": "blocks.3.hook_resid_pre"}], kept)
    assert len(lines) == 2  # 31 SAEs, two tasks: two lines
    ioi = lines[0]
    assert ioi.startswith("- ioi (kept cross-sections at L1.attn.z, L1.resid_post): 30 SAEs not reached")
    assert "L0.resid_pre: 10 (topk-64, relu-64" in ioi and "L0.mlp_out: 10" in ioi and "L2.resid_post: 10" in ioi
    assert "and 2 more" in ioi  # at most 8 names per hook
    assert "blocks.0.hook_resid_pre--" not in ioi  # the zoo prefix is the hook already named
    assert lines[1] == "- gt: 1 SAE not reached; by hook: L3.resid_pre: 1 (ext)"  # no kept hooks given: none named
    assert unreached_lines(None) == [] and unreached_lines([]) == []
    dup = unreached_lines([{"sae": "a", "task": "t", "hook": "h"}] * 3)
    assert dup == ["- t: 1 SAE not reached; by hook: h: 1 (a)"]


def test_unreached_entry_without_its_hook_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"lacks hook: pass \{'sae', 'task', 'hook'\} dicts") as e:
        unreached_lines([{"sae": "a", "task": "t"}])
    assert "\n" not in str(e.value)


def test_kept_hooks_are_the_hooks_scored_per_task():
    scores = pl.DataFrame({"task": ["ioi", "ioi", "ioi", "gt"], "hook": ["h1", "h2", "h1", "h3"],
                           "sae": ["a", "a", "b", "a"]})
    assert kept_hooks(scores) == {"ioi": ["h1", "h2"], "gt": ["h3"]}
    assert kept_hooks(pl.DataFrame()) == {}


def test_summary_markdown_names_the_unreached_saes_and_kept_hooks():
    md = summary_markdown(_board(), pl.DataFrame(), META, unreached=_zoo_unreached(),
                          kept={"ioi": ["blocks.1.attn.hook_z"]})
    section = md.split("## SAEs not reached")[1].split("## Failed SAEs")[0]
    assert "hold none" in section and "(kept cross-sections at L1.attn.z): 30 SAEs not reached" in section
    assert len([ln for ln in section.splitlines() if ln.startswith("- ")]) == 1
    assert "## SAEs not reached" not in summary_markdown(_board(), pl.DataFrame(), META)


def test_failures_are_grouped_by_error_and_name_their_stage():
    failures = pl.DataFrame({"sae": [f"s{i}" for i in range(10)] + ["*", "solo"],
                             "stage": ["load"] * 10 + ["capture ioi", "score ioi"],
                             "error": ["ValueError: d_in 64 != 128\nTraceback ..."] * 10
                             + ["StoreError: damaged store", "RuntimeError: nan"]})
    board = _board(sae="s0", status="failed: ValueError: d_in 64 != 128")
    lines = failure_lines(board, failures)
    assert len(lines) == 3
    assert lines[0].startswith("- `s0` (load), `s1` (load)") and "and 2 more: ValueError: d_in 64 != 128" in lines[0]
    assert "Traceback" not in "".join(lines) and "`s0` (on ioi)" not in lines[0]  # the status repeats the failure
    assert lines[1] == "- all SAEs (capture ioi): StoreError: damaged store"
    assert lines[2] == "- `solo` (score ioi): RuntimeError: nan"
    assert failure_lines(_board(), None) == []


def test_figures_above_one_are_explained():
    board = _board(sufficiency=1.2149, faithfulness=1.05, ce_loss_recovered=1.01)
    lines = above_one_lines(board)
    assert [ln.split(" (")[0] for ln in lines] == ["- sufficiency", "- faithfulness", "- ce_loss_recovered"]
    assert lines[0].startswith("- sufficiency (up to 1.215, sae-a on ioi): LD_recon / LD_clean")
    assert "overshoots the clean one" in lines[0] and "1.21 is as far off as 0.79" in lines[0]
    assert "lower than the clean model's" in lines[2]
    assert above_one_lines(_board()) == []  # nothing above 1: no note
    md = summary_markdown(board, pl.DataFrame(), META)
    assert "## Figures above 1" in md and "sufficiency (up to 1.215" in md
    assert "## Figures above 1" not in summary_markdown(_board(), pl.DataFrame(), META)


def test_a_ground_truth_sufficiency_above_one_is_explained_too():
    verdicts = pl.DataFrame([{"task": "ioi", "attribute": "IO", "verdict": "holds", "sufficiency": 1.21,
                              "reason": "meets the bar"}], schema=VERDICT_SCHEMA)
    lines = above_one_lines(_board(), verdicts)
    assert lines == [f"- sufficiency (up to 1.210, the ground truth of IO on ioi): {ABOVE_ONE['sufficiency']}."]


def test_only_ratios_that_can_exceed_one_are_listed():
    """Necessity is 1 - |...| / |...| and explained variance 1 - SSE / SST: neither exceeds 1, so neither is a
    ratio the note must explain; F1, MCC, edit accuracy and the summary are shares or clipped."""
    assert set(ABOVE_ONE) == {"sufficiency", "faithfulness", "ce_loss_recovered", "l2_ratio"}
