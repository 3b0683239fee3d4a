"""The pure parts of benchmarks/pretrained.py (the added SAE's share of a run's task runs, the paired ratio, the hook
it picks, the corpus text) against figures worked out by hand; the measurement itself is the benchmark's."""

from __future__ import annotations

import pytest

from benchmarks.pretrained import added_split, corpus_text, hook_layer, median_ratio, pick_hook

SAE = "sage-bench-gpt2-small-res/added-0"
BASE = "sage-bench-gpt2-small-res/base-0"


def test_the_added_saes_share_is_its_own_task_runs_and_the_captures_extra_seconds():
    cached = [(f"resolve {BASE}", 1.0), (f"score {BASE} on ioi, sva + core", 5.0),
              ("prepare-capture ioi", 0.25), ("capture ioi shard 0/1", 0.5), ("finalize-capture ioi", 0.25),
              ("references ioi", 0.1), ("leaderboard x", 0.4)]
    grown = [*cached[:2], (f"resolve {SAE}", 1.5), (f"score {SAE} on ioi, sva + core", 11.2),
             ("prepare-capture ioi", 0.25), ("capture ioi shard 0/1", 1.0),
             ("finalize-capture ioi", 0.5), ("references ioi", 0.1), ("leaderboard x", 0.6)]
    units = [{"name": BASE, "score": 2.0, "core": 3.0}, {"name": SAE, "score": 5.0, "core": 6.0}]
    split = added_split(grown, cached, SAE, units)
    # load 1.5; scoring 5 and core 6 as its unit timed them; capture (0.25 + 1 + 0.5) - (0.25 + 0.5 + 0.25) = 0.75
    assert split == pytest.approx({"load": 1.5, "capture": 0.75, "score": 5.0, "core": 6.0})
    # the base SAE's runs and the run-level tasks (references, leaderboard) are not the added SAE's
    assert added_split(cached, cached, SAE, units[:1]) == {"load": 0.0, "capture": 0.0, "score": 0.0, "core": 0.0}


def test_the_ratio_is_the_median_of_the_paired_rounds():
    # 6/4, 9/3, 5/4 = 1.5, 3, 1.25 -> 1.5; not median(6, 9, 5) / median(4, 3, 4) = 1.5 by chance: check a case apart
    assert median_ratio([6.0, 9.0, 5.0], [4.0, 3.0, 4.0]) == pytest.approx(1.5)
    assert median_ratio([2.0, 10.0], [1.0, 10.0]) == pytest.approx(1.5)  # (2 + 1) / 2
    with pytest.raises(ValueError):
        median_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        median_ratio([], [])


def test_the_hook_is_the_deepest_kept_residual_one():
    assert hook_layer("blocks.11.hook_resid_post") == 11
    with pytest.raises(ValueError):
        hook_layer("hook_embed")
    kept = ["blocks.3.attn.hook_z", "blocks.2.hook_resid_post", "blocks.10.hook_resid_pre", "blocks.9.hook_mlp_out"]
    assert pick_hook(kept) == "blocks.10.hook_resid_pre"  # 10 > 2 as numbers, not as text
    assert pick_hook(["blocks.3.attn.hook_z"]) is None


def test_the_corpus_text_has_room_for_the_tokens_asked():
    from tests.tokenizers import gpt2_tokenizer

    tok = gpt2_tokenizer()
    for n in (128, 2048):
        assert len(tok(corpus_text(n))["input_ids"]) >= n
    assert corpus_text(128) == corpus_text(128)  # deterministic
