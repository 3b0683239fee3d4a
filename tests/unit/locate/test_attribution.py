"""Attribution patching: the sweep against hand-computed gradients, selection rules, real patching, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_core.locate.attribution import (
    Component,
    LocateError,
    all_components,
    atp_sweep,
    logit_diff,
    pairs_for,
    patch_effect,
    select,
    spearman,
    top_k_agreement,
)
from sage_core.model.transformer import ModelConfig, build_model
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64, seed=3), len(tokenizer))
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=12, n_test=4), tokenizer)
    pairs, roles = pairs_for(df, "IO", split="train")
    return model, df, pairs, roles, tokenizer.pad_token_id


def _rows(pairs):
    """(x, x', answer, target, role positions in x, role positions in x') per pair."""
    cf_pos = pairs.cf_positions or pairs.positions
    return list(zip(pairs.clean, pairs.cf, pairs.answer, pairs.target, pairs.positions, cf_pos, strict=True))


def _hand_atp(model, rows, comps: list[Component], n_roles: int) -> np.ndarray:
    """[component, role]: per pair, the autograd gradient of LD(x) w.r.t. the component's activation at the role's
    position in x, inner product with a(x') at the role's position in x' minus a(x), then the mean over pairs. One
    forward and backward per pair serves every component and role (the gradient at a hook does not depend on which
    role is read from it)."""
    hooks = sorted({c.hook for c in comps})
    vals = np.zeros((len(rows), len(comps), n_roles))
    for i, (x, xc, ans, tgt, pos, pos_cf) in enumerate(rows):
        x, xc = torch.tensor([x]), torch.tensor([xc])
        _, cache_cf = model.run_with_cache(xc)
        store = {}

        def grab(a, hook, store=store):
            store[hook.name] = a
            return a

        logits = model.run_with_hooks(x, fwd_hooks=[(h, grab) for h in hooks])
        ld = logit_diff(logits, torch.tensor([x.shape[1] - 1]), torch.tensor([ans]), torch.tensor([tgt]))
        grads = dict(zip(hooks, torch.autograd.grad(ld.sum(), [store[h] for h in hooks]), strict=True))
        for j, comp in enumerate(comps):
            for role in range(n_roles):
                a, g = store[comp.hook].detach()[0, pos[role]], grads[comp.hook][0, pos[role]]
                a_cf = cache_cf[comp.hook][0, pos_cf[role]]
                if comp.head is not None:
                    a, a_cf, g = a[comp.head], a_cf[comp.head], g[comp.head]
                vals[i, j, role] = float(((a_cf - a) * g).sum())
    return vals.mean(axis=0)


def test_sweep_equals_hand_computed_gradient_inner_product(setup):
    model, _, pairs, roles, pad = setup
    comps = [Component("head", 1, 1), Component("mlp_out", 0), Component("resid_post", 1), Component("resid_pre", 0)]
    scores, _ = atp_sweep(model, pairs, comps, pad, batch_size=5)  # batching and padding must not matter
    hand = _hand_atp(model, _rows(pairs), comps, len(roles))
    for j, _c in enumerate(comps):
        for r in range(len(roles)):
            assert scores[j, r].item() == pytest.approx(hand[j, r], rel=1e-4, abs=1e-5)


def test_atp_is_the_first_order_term_of_the_real_effect(setup):
    """LD(a + eps * (a' - a)) - LD(a) ~= eps * AtP for small eps (finite differences)."""
    model, _, pairs, roles, pad = setup
    comp, role, eps = Component("attn_out", 1), roles.index("END"), 1e-3
    one = pairs.model_copy(update={k: getattr(pairs, k)[:1] for k in ("clean", "cf", "answer", "target",
                                                                      "positions", "cf_positions")})
    scores, _ = atp_sweep(model, one, [comp], pad)
    x, xc = torch.tensor([one.clean[0]]), torch.tensor([one.cf[0]])
    _, cache_cf = model.run_with_cache(xc)
    p = one.positions[0][role]

    def nudge(a, hook):
        a = a.clone()
        a[0, p] += eps * (cache_cf[hook.name][0, p] - a[0, p])
        return a

    args = (torch.tensor([x.shape[1] - 1]), torch.tensor(one.answer), torch.tensor(one.target))
    base = logit_diff(model(x), *args).item()
    moved = logit_diff(model.run_with_hooks(x, fwd_hooks=[(comp.hook, nudge)]), *args).item()
    assert (moved - base) / eps == pytest.approx(scores[0, role].item(), rel=1e-2, abs=1e-3)


def test_integrated_gradients_end_points(setup):
    """With many IG steps the sum of AtP-IG over all positions of resid_pre 0 approaches the full effect."""
    model, _, pairs, _, pad = setup
    same = [i for i, c in enumerate(pairs.clean) if len(c) == len(pairs.clean[0])][:4]
    small = pairs.model_copy(update={k: [getattr(pairs, k)[i] for i in same] for k in ("clean", "cf", "answer",
                                                                                       "target")}
                             | {"positions": [list(range(len(pairs.clean[0])))] * len(same), "cf_positions": None})
    scores, ld = atp_sweep(model, small, [Component("resid_pre", 0)], pad, ig_steps=32)
    assert scores.sum().item() == pytest.approx(ld["ld_cf"] - ld["ld_clean"], rel=0.05)


def test_patch_effect_matches_manual_patching(setup):
    model, _, pairs, roles, pad = setup
    comp, role = Component("head", 0, 1), roles.index("S2")
    got = patch_effect(model, pairs, [(comp, role)], pad, batch_size=3)
    deltas = []
    for x, xc, ans, tgt, pos in zip(pairs.clean, pairs.cf, pairs.answer, pairs.target, pairs.positions, strict=True):
        x, xc = torch.tensor([x]), torch.tensor([xc])
        _, cache_cf = model.run_with_cache(xc)

        def put(a, hook, p=pos[role], cache_cf=cache_cf):
            a = a.clone()
            a[0, p, 1] = cache_cf[hook.name][0, p, 1]
            return a

        args = (torch.tensor([x.shape[1] - 1]), torch.tensor([ans]), torch.tensor([tgt]))
        deltas.append((logit_diff(model.run_with_hooks(x, fwd_hooks=[(comp.hook, put)]), *args)
                       - logit_diff(model(x), *args)).item())
    assert got == pytest.approx(np.mean(deltas), rel=1e-4, abs=1e-5)


def _brute_select(scores, share, cap):
    mag = np.abs(scores)
    order = np.argsort(-mag, kind="stable")
    for k in range(len(order) + 1):
        if mag[order[:k]].sum() >= share * mag.sum() - 1e-9:
            return order[: min(k, cap)]
    return order[:cap]


@pytest.mark.parametrize("seed", range(20))
def test_selection_obeys_share_and_cap(seed):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(30) * rng.exponential(1, 30)
    share, cap = rng.uniform(0.1, 1.0), int(rng.integers(1, 15))
    got = select(scores, share, cap)
    assert list(got) == list(_brute_select(scores, share, cap))
    assert len(got) <= cap
    if len(got) < cap:
        assert np.abs(scores[got]).sum() >= share * np.abs(scores).sum() - 1e-9


def test_rank_metrics_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert top_k_agreement([5, -4, 1, 0], [-6, 3, 0.1, 2], k=2) == 1.0
    assert top_k_agreement([5, -4, 1, 0], [0, 0.1, 3, 2], k=2) == 0.0


def test_bad_input(setup, tokenizer):
    model, df, *_ = setup
    import polars as pl

    with pytest.raises(LocateError, match="no counterfactual pairs for attribute 'colour'"):
        pairs_for(df, "colour")
    with pytest.raises(LocateError, match="no counterfactual pairs for attribute 'IO'"):
        pairs_for(df.filter(pl.col("pair_attr") != "IO"), "IO")
    with pytest.raises(LocateError, match="unknown component kinds"):
        all_components(model, ["heads"])
    with pytest.raises(LocateError, match="matches nothing"):
        all_components(model, [])


def _table_pairs(df, attribute: str, split: str = "train"):
    """(clean tokens, cf tokens, answer, target, clean role positions, cf role positions) per pair, read straight from
    the prompt table: each prompt's own `pos_<role>` columns (independent of `pairs_for`)."""
    import polars as pl

    from sage_core.prompts.task import pair_target_token

    roles = [c.removeprefix("pos_") for c in df.columns if c.startswith("pos_")]
    by_id = {r["prompt_id"]: r for r in df.filter(pl.col("pair_of").is_null()).iter_rows(named=True)}
    out = []
    for cf in df.filter((pl.col("pair_attr") == attribute) & (pl.col("split") == split)).iter_rows(named=True):
        x = by_id[cf["pair_of"]]
        out.append((x["tokens"], cf["tokens"], x["answer_token"],
                    pair_target_token(x["answer_token"], x["cf_answer_token"], cf["answer_token"]),
                    [x[f"pos_{r}"] for r in roles], [cf[f"pos_{r}"] for r in roles]))
    return out


@pytest.fixture(scope="module")
def pos_setup(setup):
    """IOI's Pos pairs: the counterfactual trades the places of IO and S1, so a role sits at another token index."""
    model, df, _, roles, pad = setup
    pairs, _ = pairs_for(df, "Pos", split="train")
    table = _table_pairs(df, "Pos")
    moved = [r for r in roles if any(p[4][roles.index(r)] != p[5][roles.index(r)] for p in table)]
    assert set(moved) == {"IO", "S1"}  # the case under test: role positions differ between x and x'
    # per pair, what every patch of it shares: a(x') everywhere and the unpatched LD(x) (read only)
    shared = []
    for x, xc, ans, tgt, *_ in table:
        x = torch.tensor([x])
        _, cache_cf = model.run_with_cache(torch.tensor([xc]))
        args = (torch.tensor([x.shape[1] - 1]), torch.tensor([ans]), torch.tensor([tgt]))
        shared.append((cache_cf, args, logit_diff(model(x), *args)))
    return model, pairs, roles, pad, table, shared


@pytest.mark.parametrize("comp", [Component("head", 0, 1), Component("resid_post", 0), Component("mlp_out", 1)])
def test_patch_effect_is_role_aligned_like_the_ground_truth(pos_setup, comp):
    """Brute force: x with a_c at role r's position in x replaced by a_c(x') at role r's position IN x' (the ground
    truth's patch, sage_core.ground_truth.sections), for every pair and every role."""
    model, pairs, roles, pad, table, shared = pos_setup
    for role in ("IO", "S1", "END"):
        r = roles.index(role)
        deltas = []
        for (x, _xc, _ans, _tgt, pos, pos_cf), (cache_cf, args, base) in zip(table, shared, strict=True):
            x = torch.tensor([x])

            def put(a, hook, p=pos[r], q=pos_cf[r], cache_cf=cache_cf):
                a = a.clone()
                src = cache_cf[hook.name][0, q]
                if comp.head is None:
                    a[0, p] = src
                else:
                    a[0, p, comp.head] = src[comp.head]
                return a

            deltas.append((logit_diff(model.run_with_hooks(x, fwd_hooks=[(comp.hook, put)]), *args) - base).item())
        got = patch_effect(model, pairs, [(comp, r)], pad, batch_size=5)
        assert got == pytest.approx(np.mean(deltas), rel=1e-4, abs=1e-5), role


def test_atp_is_role_aligned_like_the_ground_truth(pos_setup):
    """Per pair: <a_c(x') at role r's position in x' - a_c(x) at its position in x, dLD(x)/da_c at that position>."""
    model, pairs, roles, pad, table, _ = pos_setup
    comps = [Component("head", 1, 0), Component("resid_pre", 1), Component("attn_out", 0)]
    scores, _ = atp_sweep(model, pairs, comps, pad, batch_size=5)
    hand = _hand_atp(model, table, comps, len(roles))
    for j, comp in enumerate(comps):
        for role in ("IO", "S1", "END"):
            r = roles.index(role)
            assert scores[j, r].item() == pytest.approx(hand[j, r], rel=1e-4, abs=1e-5), (comp, role)


def test_search_pairs_do_not_depend_on_the_table_order(setup):
    """The same prompts give the same `limit` pairs in the same order, however the table's rows are ordered."""
    _, df, *_ = setup
    for attr in ("IO", "Pos"):
        want, _ = pairs_for(df, attr, split="train", limit=7)
        for seed in (1, 2):
            got, _ = pairs_for(df.sample(fraction=1.0, shuffle=True, seed=seed), attr, split="train", limit=7)
            assert got.model_dump() == want.model_dump()
