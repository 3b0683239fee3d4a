"""Ground-truth quality: formulas by hand, an exact dictionary scores perfectly, data assembly, bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from sage_core.ground_truth.dictionaries import Dictionary, DictionaryError, fit
from sage_core.ground_truth.sections import (
    CleanSet,
    CrossSection,
    PairSet,
    argmax_agreement,
    build_sets,
    necessity,
    quality,
    sufficiency,
)
from sage_core.model.capture import capture_batch
from sage_core.model.transformer import ModelConfig, build_model, pad_sequences
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts


def test_formulas_by_hand():
    assert sufficiency(ld_recon=3.0, ld_clean=4.0) == 0.75
    # mean-ablation 1, clean 5, intervention 2: |1-2| / |1-5| = 0.25 of the way lost -> 0.75
    assert necessity(ld_meanabl=1.0, ld_int=2.0, ld_clean=5.0) == 0.75
    assert necessity(ld_meanabl=1.0, ld_int=1.0, ld_clean=5.0) == 1.0
    a = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 0.0]])
    assert argmax_agreement(a, b) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64, seed=5), len(tokenizer))
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=24, n_test=12), tokenizer)
    roles = ["IO", "S1", "S2", "END"]
    pos = torch.as_tensor(df.select([f"pos_{r}" for r in roles]).to_numpy())
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.attn.hook_z"]
    acts = capture_batch(model, pad_sequences(df["tokens"].to_list(), tokenizer.pad_token_id), hooks, pos)
    return model, df, acts, tokenizer.pad_token_id


def test_exact_dictionary_scores_perfectly(tiny):
    """A dictionary that reproduces every activation exactly: sufficiency = necessity = edit accuracy = 1."""
    model, df, acts, pad = tiny
    section = CrossSection(hook="blocks.1.attn.hook_z", head=1, role="END")
    _, _, clean, pairs = build_sets(df, acts[section.hook], section, ["IO"], "test")
    ps = pairs[0]
    ids = [f"c{i}" for i in range(len(clean.tokens))]
    a_all = torch.cat([clean.acts, ps.cf_acts])
    mean = a_all.mean(0)
    vectors = {"id": {f"c{i}": clean.acts[i] - mean for i in range(len(ids))}
               | {f"x{i}": ps.cf_acts[i] - mean for i in range(len(ps.cf_acts))}}
    dic = Dictionary(method="exact", mean=mean, vectors=vectors, weights={"id": 1.0})
    clean = clean.model_copy(update={"labels": {"id": ids}})
    clean_index = {tuple(t): i for i, t in enumerate(clean.tokens)}
    old = [f"c{clean_index[tuple(t)]}" for t in ps.tokens]
    exact_pairs = [PairSet(attribute="id", tokens=ps.tokens, positions=ps.positions, acts=ps.acts,
                           cf_acts=ps.cf_acts, old=old, new=[f"x{i}" for i in range(len(old))])]
    (row,) = quality(model, dic, section, clean, exact_pairs, pad)
    assert row["sufficiency"] == pytest.approx(1, abs=1e-4)
    assert row["necessity"] == pytest.approx(1, abs=1e-4)
    assert row["edit_accuracy"] == 1.0 and row["n_edit"] == len(old)


def test_build_sets_keeps_test_prompts_out_of_the_fit_and_aligns_roles(tiny):
    _, df, acts, _ = tiny
    section = CrossSection(hook="blocks.0.hook_mlp_out", role="IO")
    fit_acts, labels, clean, pairs = build_sets(df, acts[section.hook], section, ["IO", "S", "Pos"], "test")
    n_train = len(df.filter(pl.col("split") != "test"))
    assert len(fit_acts) == n_train == len(labels["IO"])
    assert len(clean.tokens) == len(df.filter((pl.col("split") == "test") & pl.col("pair_of").is_null()))
    pos_pairs = next(p for p in pairs if p.attribute == "Pos")
    # Pos moves the IO role to the other name's index: the patch takes x''s activation at x''s IO position
    cf = df.filter((pl.col("pair_attr") == "Pos") & (pl.col("split") == "test")).with_row_index()
    cf_row = df.with_row_index("r").filter(pl.col("prompt_id") == cf["prompt_id"][0])["r"][0]
    np.testing.assert_array_equal(pos_pairs.cf_acts[0].numpy(), acts[section.hook][cf_row, 0])
    assert set(pos_pairs.old) | set(pos_pairs.new) <= {"ABB", "BAB"}


def test_fitted_dictionary_beats_mean_ablation(tiny):
    model, df, acts, pad = tiny
    section = CrossSection(hook="blocks.0.hook_mlp_out", role="IO")
    fit_acts, labels, clean, pairs = build_sets(df, acts[section.hook], section, ["IO", "S", "Pos"], "test")
    rows = quality(model, fit(fit_acts, labels, "mse"), section, clean, pairs, pad)
    assert {r["attribute"] for r in rows} == {"IO", "S", "Pos"}
    assert all(np.isfinite(r["sufficiency"]) for r in rows)


def test_bad_input(tiny):
    _, df, acts, _ = tiny
    with pytest.raises(ValueError, match="role 'NAME' is not a role of this task"):
        build_sets(df, acts["blocks.0.hook_mlp_out"], CrossSection(hook="blocks.0.hook_mlp_out", role="NAME"),
                   ["IO"], "test")
    with pytest.raises(DictionaryError, match="single value"):
        fit(torch.randn(8, 4), {"Pos": ["ABB"] * 8}, "mse")
    _ = CleanSet  # the public data classes are importable


def test_ground_truth_verdicts_name_the_reason_an_attribute_misses():
    import polars as pl

    from report.verdicts import ground_truth_verdicts

    nan = float("nan")

    def row(attr, hook, suff, nec, edit, floor, head=None, method="mean"):
        return {"task": "ioi", "attribute": attr, "hook": hook, "head": head, "role": "END", "method": method,
                "sufficiency": suff, "necessity": nec, "edit_accuracy": edit, "no_intervention": floor, "n_test": 8}

    h = "blocks.0.hook_mlp_out"
    q = pl.DataFrame([
        row("IO", h, 0.9, 0.85, 0.95, 0.0), row("IO", h, 0.95, 0.9, 0.99, 0.02, head=3),  # both pass: the 2nd gains more
        row("IO", h, 0.5, 0.9, 1.0, 0.0), row("IO", h, nan, nan, nan, nan),  # NaN never passes nor gets named
        row("Pos", h, 1.0, 0.9, 0.99, 0.97), row("Pos", h, 1.0, 0.9, 0.98, 0.95),  # the patch moves <= 5%
        row("S", h, 1.0, 0.9, 0.50, 0.49), row("S", h, 1.0, 0.9, 0.97, 0.95),  # moves 51%, the edit reproduces 2%
        row("G", h, 0.9, 0.7, 0.90, 0.2), row("G", h, 0.9, 0.9, 0.6, 0.3),  # follows, but misses necessity / edit
        row("H", h, 0.9, 0.9, 0.85, 0.78),  # the patch moves 22%, the edit reproduces 32%: misses
        row("K", h, 0.9, 0.9, 0.93, 0.84),  # follows (56%) but only 0.09 above the floor
        row("L", h, 3.0, 0.9, 0.99, 0.0),  # the bar is sufficiency >= 0.8: overshooting the clean LD passes
        row("M", h, nan, 0.9, nan, 0.5),
    ])
    v = {r["attribute"]: r for r in ground_truth_verdicts(q).iter_rows(named=True)}
    assert {a: v[a]["verdict"] for a in v} == {
        "IO": "holds", "Pos": "not read", "S": "edit misses", "G": "below bar", "H": "edit misses", "K": "below bar",
        "L": "holds", "M": "no figures"}
    assert v["IO"]["head"] == 3 and "L0.mlp_out.H3@END (mean)" in v["IO"]["reason"]
    assert "at most 5%" in v["Pos"]["reason"]
    assert "51%" in v["S"]["reason"] and "reproduces 2%" in v["S"]["reason"] and "0.50 over a floor of 0.49" in v[
        "S"]["reason"]
    assert v["G"]["edit_accuracy"] == 0.9  # the larger edit gain (0.7 vs 0.3)
    assert ground_truth_verdicts(q, bar=0.95).filter(pl.col("attribute") == "IO")["verdict"][0] == "below bar"
    assert ground_truth_verdicts(q.head(0)).is_empty()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_test_sets_do_not_depend_on_the_table_order(tiny, seed):
    """References and scoring call split_rows separately: the same prompts must give the same clean prompts and the
    same pairs in the same order, however the table's rows are ordered (a join is free to reorder them)."""
    from sage_core.ground_truth.sections import split_rows

    _, df, _, _ = tiny
    attrs = ["IO", "S", "Pos"]

    def picked(table):
        rows = split_rows(table, attrs, "test", max_test=5)
        ids = table["prompt_id"]
        return (ids.gather(rows.clean).to_list(), ids.gather(rows.fit).sort().to_list(),
                [(p.attribute, ids.gather(p.x).to_list(), ids.gather(p.xp).to_list(), p.old, p.new)
                 for p in rows.pairs])

    shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed)
    assert picked(shuffled) == picked(df)
    clean, _, pairs = picked(df)
    assert clean == sorted(clean) and all(p[1] == sorted(p[1]) for p in pairs)  # prompt-id (generation) order
