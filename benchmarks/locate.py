"""Benchmark of the location search: the AtP sweep (plain, and with integrated gradients) against exhaustive real
activation patching of the same components at the same positions, measured in the same run.

    python -m benchmarks.locate [--pairs 128] [--positions roles|all]

Expectation: the plain sweep is >= 20x cheaper than exhaustive patching.
"""

from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore")

from sage_core.locate.attribution import all_components, atp_sweep, pairs_for, patch_effects  # noqa: E402
from sage_core.model.tokenizer import build_tokenizer  # noqa: E402
from sage_core.model.transformer import ModelConfig, build_model  # noqa: E402
from sage_core.prompts.corpus import background_vocabulary  # noqa: E402
from sage_core.prompts.library import TASKS, get_task  # noqa: E402
from sage_core.prompts.task import DatasetConfig, generate_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--positions", choices=["roles", "all"], default="roles")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    words = background_vocabulary()
    for t in TASKS:
        words |= get_task(t).vocabulary()
    tok = build_tokenizer(words)
    model = build_model(ModelConfig(), len(tok))
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=5 * args.pairs, n_test=8), tok)
    if args.positions == "all":
        df = df.filter(df["template"] == 0)  # one template: equal lengths, so every position lines up across pairs
    pairs, roles = pairs_for(df, "IO", split="train", limit=args.pairs)
    if args.positions == "all":
        width = len(pairs.clean[0])
        # every token, clean positions on both sides (no role alignment across all positions)
        pairs = pairs.model_copy(update={"positions": [list(range(width))] * len(pairs.clean), "cf_positions": None})
    n_pos = len(pairs.positions[0])
    comps = all_components(model)
    flat = [[(c, r)] for c in comps for r in range(n_pos)]
    pad = tok.pad_token_id

    def timed(fn, *a, **k) -> float:
        t = time.perf_counter()
        fn(*a, **k)
        return time.perf_counter() - t

    atp_sweep(model, pairs, comps[:2], pad)  # warm-up (first backward pass allocates)
    plain, ig, exhaustive = [], [], []
    for _ in range(args.repeats):  # interleaved, min of each: the machine is noisy
        plain.append(timed(atp_sweep, model, pairs, comps, pad))
        ig.append(timed(atp_sweep, model, pairs, comps, pad, ig_steps=4))
        exhaustive.append(timed(patch_effects, model, pairs, flat, pad))
    plain, ig, exhaustive = min(plain), min(ig), min(exhaustive)
    print(f"{len(pairs.clean)} IOI pairs, {len(comps)} components x {n_pos} positions = {len(flat)} patches")
    print(f"exhaustive activation patching: {exhaustive:7.2f} s  (1 forward pass per patch per batch)")
    print(f"AtP sweep (2 fwd + 1 bwd)     : {plain:7.2f} s  -> {exhaustive / plain:6.1f}x cheaper (expect >= 20x)")
    print(f"AtP-IG sweep, 4 steps         : {ig:7.2f} s  -> {exhaustive / ig:6.1f}x cheaper")


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("locate"):
        main()
