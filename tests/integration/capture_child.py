"""Run by test_capture_resume in a subprocess: capture a deterministic model's activations, slowly, to be killed."""

from __future__ import annotations

import sys
import time
import warnings

warnings.filterwarnings("ignore")


def build():
    from transformers import AutoTokenizer

    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.model.transformer import ModelConfig, build_model
    from sage_core.prompts.corpus import background_vocabulary
    from sage_core.prompts.library import get_task
    from sage_core.prompts.task import DatasetConfig, generate_prompts

    words = background_vocabulary() | get_task("ioi").vocabulary()
    tok = build_tokenizer(words)
    tok_dir = sys.argv[3] if len(sys.argv) > 3 else None
    if tok_dir:
        tok.save_pretrained(tok_dir)
        tok = AutoTokenizer.from_pretrained(tok_dir)
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64, seed=7), len(tok),
                        tokenizer=tok)
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=40, n_test=20), tok)
    return model, df


HOOKS = ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z")
IDENT = {"model_hash": "child", "dataset_hash": "child", "request_hash": "child"}


def run(path: str, sleep: float) -> None:
    from sage_core.model.capture import CaptureRequest
    from storage.capture import open_or_create_store
    from tasks.capture import capture_chunks

    model, df = build()
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=8)
    store = open_or_create_store(path, model, df, req, IDENT)
    print("chunks", store.n_chunks, flush=True)
    capture_chunks(store, model, req.batch_size, on_chunk=lambda i: time.sleep(sleep))
    store.finalize()
    print("done", flush=True)


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]))
