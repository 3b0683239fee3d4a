"""Benchmark of the zoo stage: our model-training loop against a bare forward+backward+step loop of the same model
on the same batches, measured in the same process (the machine is noisy; only the ratio means something).

    python -m benchmarks.zoo [--steps 60] [--repeats 3]

Target: ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=DeprecationWarning)

from sage_core.model.tokenizer import build_tokenizer  # noqa: E402
from sage_core.model.transformer import ModelConfig, TrainConfig, build_model, pad_sequences, train_model  # noqa: E402
from sage_core.prompts.corpus import CorpusConfig, background_vocabulary, build_corpus  # noqa: E402
from sage_core.prompts.library import TASKS, get_task  # noqa: E402


def corpus_tokens(n: int):
    tasks = [get_task(t) for t in TASKS]
    words = background_vocabulary()
    for t in tasks:
        words |= t.vocabulary()
    tok = build_tokenizer(words)
    lines = build_corpus(tasks, CorpusConfig(n_task_sentences=n, n_background=n), dataset_seed=0)
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    return pad_sequences([[tok.bos_token_id, *x] for x in ids], tok.pad_token_id), tok


def bare_loop(model, batches, pad_id):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in batches:
        logits = model(batch)
        tgt = batch[:, 1:].clone()
        tgt[tgt == pad_id] = -100
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tokens, tok = corpus_tokens(2000)
    mcfg, pad = ModelConfig(), tok.pad_token_id
    tcfg = TrainConfig(steps=args.steps, batch_size=128)
    # the exact batches our loop draws, for the bare loop
    gen = torch.Generator().manual_seed(tcfg.seed)
    perm = torch.randperm(len(tokens), generator=gen)
    batches = []
    for i in range(args.steps):
        b = tokens[perm[i * tcfg.batch_size : (i + 1) * tcfg.batch_size]]
        batches.append(b[:, : int((b != pad).sum(1).max())])
    n_tok = sum(int((b != pad).sum()) for b in batches)
    ours, bare = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        m = build_model(mcfg, len(tok))
        t = time.perf_counter()
        train_model(m, tokens, pad, tcfg)
        ours.append(time.perf_counter() - t)
        m = build_model(mcfg, len(tok))
        m.train()
        t = time.perf_counter()
        bare_loop(m, batches, pad)
        bare.append(time.perf_counter() - t)
    o, b = min(ours), min(bare)
    print(f"model {mcfg.name}: {args.steps} steps x {tcfg.batch_size} sequences ({n_tok} real tokens)")
    print(f"bare fwd+bwd+step loop : {b:7.2f} s  ({n_tok / b:,.0f} tokens/s)")
    print(f"SAGE train_model       : {o:7.2f} s  ({n_tok / o:,.0f} tokens/s)")
    print(f"ratio (ours / bare)    : {o / b:.3f}   (target <= 1.2)")


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("zoo"):
        main()
