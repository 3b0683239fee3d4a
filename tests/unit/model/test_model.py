from __future__ import annotations

import torch

from sage_core.model.transformer import (
    ModelConfig,
    TrainConfig,
    answer_metrics,
    build_model,
    final_logits,
    lm_loss,
    pad_sequences,
    train_model,
)


def test_pad_sequences_right_pads():
    t = pad_sequences([[1, 2, 3], [4]], pad_id=0)
    assert t.tolist() == [[1, 2, 3], [4, 0, 0]]


def test_padding_does_not_change_real_positions():
    m = build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32), d_vocab=20)
    short = torch.tensor([[1, 5, 6]])
    padded = torch.tensor([[1, 5, 6, 0, 0]])
    assert torch.allclose(m(short)[0, :3], m(padded)[0, :3], atol=1e-5)
    assert torch.allclose(final_logits(m, [[1, 5, 6], [1, 7]], pad_id=0)[0], m(short)[0, 2], atol=1e-5)


def test_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    m = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_head=16, d_mlp=64), d_vocab=12)
    # a learnable pattern: each sequence counts up from a random start
    starts = torch.randint(2, 6, (256, 1))
    tokens = starts + torch.arange(6)[None]
    before = lm_loss(m, tokens, pad_id=0).item()
    losses = train_model(m, tokens, pad_id=0, cfg=TrainConfig(steps=60, batch_size=64, lr=3e-3, warmup=5))
    after = lm_loss(m, tokens, pad_id=0).item()
    assert after < 0.5 * before and losses[-1] < losses[0]


def test_training_is_deterministic():
    def run():
        m = build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32, seed=1), d_vocab=10)
        tokens = torch.randint(1, 10, (64, 5), generator=torch.Generator().manual_seed(0))
        train_model(m, tokens, pad_id=0, cfg=TrainConfig(steps=5, batch_size=16))
        return m.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_answer_metrics_by_hand():
    logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 3.0]])
    m = answer_metrics(logits, answer=torch.tensor([1, 1]), competing=torch.tensor([2, 2]))
    assert m["accuracy"] == 0.5 and abs(m["logit_diff"] - (-0.5)) < 1e-6 and m["top1"] == 0.5


def test_real_mask_keeps_bos_when_the_pad_token_is_bos():
    """GPT-2 pads with <|endoftext|>, its BOS: counting non-pad tokens would drop BOS and cut the last real token."""
    from sage_core.model.transformer import pad_sequences, real_mask, trim_padding

    seqs = [[7, 1, 2], [7, 3], [7]]
    t = pad_sequences(seqs, pad_id=7, length=5)  # pad == BOS == 7
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(real_mask(t, 7), want)
    assert trim_padding(t, 7).shape == (3, 3)
    assert torch.equal(real_mask(pad_sequences(seqs, pad_id=0, length=4), 0)[:, :3], want[:, :3])


def test_training_reports_each_step_and_its_loss():
    m = build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32), d_vocab=10)
    tokens = torch.randint(1, 10, (64, 5), generator=torch.Generator().manual_seed(0))
    steps, losses = [], []
    out = train_model(m, tokens, pad_id=0, cfg=TrainConfig(steps=7, batch_size=16), on_step=lambda d, t: steps.append(
        (d, t)), on_loss=lambda s, loss: losses.append((s, loss)))
    assert steps == [(d, 7) for d in range(1, 8)]
    assert [s for s, _ in losses] == list(range(7)) and [v for _, v in losses] == out
