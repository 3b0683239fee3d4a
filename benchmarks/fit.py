"""Benchmark of ground-truth fitting: fit (three methods) + quality per cross-section, against the capture time of
that cross-section, measured in the same run.

    python -m benchmarks.fit [--prompts 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import benchmarks.capture as capture_bench  # noqa: E402
from sage_core.ground_truth.dictionaries import METHODS, fit  # noqa: E402
from sage_core.ground_truth.sections import CrossSection, build_sets, quality  # noqa: E402
from sage_core.model.capture import CaptureRequest  # noqa: E402
from sage_core.prompts.library import get_task  # noqa: E402
from sage_core.prompts.task import DatasetConfig, generate_prompts  # noqa: E402
from storage.activations import ActivationStore  # noqa: E402
from storage.capture import open_or_create_store  # noqa: E402
from tasks.capture import capture_chunks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    args = ap.parse_args()
    model, _ = capture_bench.setup(16)
    tok = model.tokenizer
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=args.prompts, n_test=args.prompts // 2),
                          tok)
    section = CrossSection(hook="blocks.1.hook_resid_post", role="END")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        req = CaptureRequest(hooks=(section.hook,), positions="roles")
        store = open_or_create_store(Path(d) / "s.zarr", model, df, req, capture_bench.IDENT)
        capture_chunks(store, model, req.batch_size)
        store.finalize()
        cap = time.perf_counter() - t
        acts = ActivationStore.open(Path(d) / "s.zarr").read(section.hook)
    t = time.perf_counter()
    fit_acts, labels, clean, pairs = build_sets(df, acts, section, get_task("ioi").attribute_names(), "test")
    for method in METHODS:
        quality(model, fit(fit_acts, labels, method), section, clean, pairs, tok.pad_token_id)
    gt = time.perf_counter() - t
    print(f"{len(df)} IOI prompts ({len(clean.tokens)} clean test prompts), cross-section {section.label}")
    print(f"capture of the cross-section : {cap:6.2f} s")
    print(f"fit 3 methods + quality      : {gt:6.2f} s")
    print(f"ratio (fit+quality / capture): {gt / cap:.2f}")


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("fit"):
        main()
