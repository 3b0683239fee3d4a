"""`final_logits_with` starts each pass at the first intervened block, from a prefix computed once per distinct
prompt, and unembeds only the last position: the logits equal a whole hooked forward pass's at the last position."""

from __future__ import annotations

import pytest
import torch

from sage_core.ground_truth.sections import CrossSection, Intervention, final_logits_with, first_block
from sage_core.model.transformer import ModelConfig, build_model, pad_sequences


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(name="t", d_model=16, n_layers=3, n_heads=2, d_head=8, d_mlp=32, n_ctx=16), 30)


def _reference(model, seqs, ivs, pad_id):
    """The plain way: every block, every position, then the last position's logits."""
    toks = pad_sequences(seqs, pad_id)
    rows = torch.arange(len(seqs))

    def hook_for(iv):
        def put(a, hook):  # noqa: ARG001
            a = a.clone()
            if iv.section.head is None:
                a[rows, iv.positions] = iv.values.to(a.dtype)
            else:
                a[rows, iv.positions, iv.section.head] = iv.values.to(a.dtype)
            return a
        return put

    logits = model.run_with_hooks(toks, fwd_hooks=[(iv.section.hook, hook_for(iv)) for iv in ivs])
    return logits[rows, torch.as_tensor([len(s) - 1 for s in seqs])]


@pytest.mark.parametrize("hooks", [["blocks.2.hook_resid_pre"], ["blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"],
                                   ["blocks.1.attn.hook_z"], ["hook_embed"], []])
def test_part_way_passes_give_the_whole_pass_logits(model, hooks):
    torch.manual_seed(0)
    base = [[1, 5, 6, 7, 8], [1, 9, 10, 11], [1, 12, 13, 14, 15, 16]]
    seqs = base * 3  # each prompt thrice, as a call holding one row per edit does
    ivs = []
    for h in hooks:
        head = 1 if h.endswith("hook_z") else None
        shape = (len(seqs), 8) if head is not None else (len(seqs), 16)
        ivs.append(Intervention(section=CrossSection(hook=h, head=head, role="X"),
                                positions=[len(s) - 2 for s in seqs], values=torch.randn(shape)))
    got = final_logits_with(model, seqs, ivs, pad_id=0, batch_size=4)
    want = _reference(model, seqs, ivs, pad_id=0)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_first_block_is_the_earliest_intervened_one(model):
    def iv(h):
        return Intervention(section=CrossSection(hook=h, role="X"), positions=[0], values=torch.zeros(1, 16))

    assert first_block(model, [iv("blocks.2.hook_resid_pre"), iv("blocks.1.hook_attn_out")]) == 1
    assert first_block(model, [iv("hook_pos_embed")]) == 0 and first_block(model, []) == 0


def test_kept_prefixes_give_the_same_logits_without_running_the_blocks_before_again(model):
    """Every SAE scored at a cross-section patches the same prompts: with a `PrefixCache` the blocks before the
    intervened one run for the first call only, and later calls (other values) give the whole pass's logits."""
    from sage_core.ground_truth.sections import PrefixCache

    torch.manual_seed(1)
    seqs = [[1, 5, 6, 7, 8], [1, 9, 10, 11]] * 2
    cache, prefix_runs = PrefixCache(), []
    handle = model.blocks[0].register_forward_hook(lambda *a: prefix_runs.append(1))
    try:
        for _ in range(3):
            ivs = [Intervention(section=CrossSection(hook="blocks.2.hook_resid_pre", role="X"),
                                positions=[len(s) - 2 for s in seqs], values=torch.randn(len(seqs), 16))]
            got = final_logits_with(model, seqs, ivs, pad_id=0, prefixes=cache)
            handle.remove()
            want = _reference(model, seqs, ivs, pad_id=0)
            handle = model.blocks[0].register_forward_hook(lambda *a: prefix_runs.append(1))
            assert torch.allclose(got, want, atol=1e-5)
    finally:
        handle.remove()
    assert len(prefix_runs) == 1 and len(cache._kept) == 1


def test_a_prefix_cache_keeps_the_newest_within_its_bytes():
    from sage_core.ground_truth.sections import PrefixCache

    cache = PrefixCache(max_bytes=10 << 20)
    for i in range(4):
        cache.put((i,), torch.zeros(1 << 20))  # 4 MiB each
    assert list(cache._kept) == [(2,), (3,)] and cache.get((0,)) is None and cache.get((3,)) is not None
    tiny = PrefixCache(max_bytes=1)
    tiny.put(("a",), torch.zeros(4))
    assert tiny.get(("a",)) is not None  # the newest always stays
