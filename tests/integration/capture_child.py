"""Run by test_capture_resume in a subprocess: capture a deterministic model's activations, slowly, to be killed.

`capture_child.py PATH SLEEP TOK_DIR` captures once. `capture_child.py serve` imports what a capture needs once, then
forks one capture per command read from stdin (a JSON list per line, one JSON answer per line):
`["run", PATH, SLEEP, TOK_DIR, LOG]` starts one (its output in LOG) and answers its pid; `["wait", PID]` answers its
exit code when it ends (negative: the signal that ended it). Each capture is a process of its own (a SIGKILL ends it
and nothing else) that starts in a fraction of a second instead of the seconds a fresh interpreter spends importing
torch, transformers and TransformerLens."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings

warnings.filterwarnings("ignore")


def build(tok_dir: str | None):
    from transformers import AutoTokenizer

    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.model.transformer import ModelConfig, build_model
    from sage_core.prompts.corpus import background_vocabulary
    from sage_core.prompts.library import get_task
    from sage_core.prompts.task import DatasetConfig, generate_prompts

    words = background_vocabulary() | get_task("ioi").vocabulary()
    tok = build_tokenizer(words)
    if tok_dir:
        tok.save_pretrained(tok_dir)
        tok = AutoTokenizer.from_pretrained(tok_dir)
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64, seed=7), len(tok),
                        tokenizer=tok)
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=40, n_test=20), tok)
    return model, df


HOOKS = ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z")
IDENT = {"model_hash": "child", "dataset_hash": "child", "request_hash": "child"}


def run(path: str, sleep: float, tok_dir: str | None = None) -> None:
    from sage_core.model.capture import CaptureRequest
    from storage.capture import open_or_create_store
    from tasks.capture import capture_chunks

    model, df = build(tok_dir)
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=8)
    store = open_or_create_store(path, model, df, req, IDENT)
    print("chunks", store.n_chunks, flush=True)
    capture_chunks(store, model, req.batch_size, on_chunk=lambda i: time.sleep(sleep))
    store.finalize()
    print("done", flush=True)


def _forked(path: str, sleep: float, tok_dir: str, log: str) -> None:
    """In the forked process: its output to `log`, its exit code says how the capture ended; never returns."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        run(path, sleep, tok_dir)
        code = 0
    except BaseException:  # noqa: BLE001 (its traceback is the test's failure message)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    # only imports here, nothing run: no torch or tokenizer thread pool is started before a fork
    import transformers  # noqa: F401
    from transformer_lens import HookedTransformer  # noqa: F401 (what build_model imports: most of the seconds)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    import sage_core.model.tokenizer  # noqa: F401
    import sage_core.model.transformer  # noqa: F401
    import sage_core.prompts.task  # noqa: F401
    import storage.capture  # noqa: F401
    import tasks.capture  # noqa: F401

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd[0] == "run":
            pid = os.fork()
            if pid == 0:
                _forked(*cmd[1:])
            answer = pid
        else:
            answer = os.waitstatus_to_exitcode(os.waitpid(cmd[1], 0)[1])
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        run(sys.argv[1], float(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
