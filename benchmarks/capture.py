"""Benchmark of the capture stage, all figures measured in this run:

1. capture + store (Blosc-LZ4, every default hook) against the bare forward pass over the same tokens (target <= 1.25),
   for the built-in model at every position and at role positions (what the fit and score stages capture), and for a
   model of GPT-2-small's shape (12 layers, d_model 768; random weights, nothing downloaded). The built-in model is so
   small (0.6M parameters) that its forward pass over 17k tokens takes about 0.4 s while it emits 130 MB of activations:
   there the ratio measures this machine's compress-and-write throughput, not the capture overhead a real model sees.
   Each ratio is the median of paired rounds (bare forward, then capture). For the GPT-2 shape at every position the
   capture's time is split into the forward pass with its hook copies, the encoding, and the rest (store creation,
   file writes, sealing).
   `--schedule background|io|in_turn` forces how writes meet the forward pass (default: `write_schedule` picks);
2. bytes on disk against raw float32 bytes;
3. read throughput of a full scan (every hook, chunk by chunk);
4. peak memory of a capture of 10x more prompts against the small one, each in a fresh process (target <= 1.2).

    python -m benchmarks.capture [--prompts 1024] [--dtype float32] [--gpt2-prompts 192] [--device cuda]
    python -m benchmarks.capture --compare-schedules 4 [--gpt2-prompts 384]   # io vs in_turn vs background, paired
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402

import benchmarks.quiet  # noqa: E402, F401  (tasks.capture imports Prefect: its environment first)
from sage_core.model.capture import CaptureRequest, chunk_buffer, default_hooks  # noqa: E402
from sage_core.model.tokenizer import build_tokenizer  # noqa: E402
from sage_core.model.transformer import ModelConfig, build_model  # noqa: E402
from sage_core.prompts.corpus import background_vocabulary  # noqa: E402
from sage_core.prompts.library import TASKS, get_task  # noqa: E402
from sage_core.prompts.task import DatasetConfig, generate_prompts  # noqa: E402
from storage.activations import ActivationStore  # noqa: E402
from storage.capture import open_or_create_store, prompt_arrays  # noqa: E402
from tasks.capture import capture_chunks, compute_chunk, write_schedule  # noqa: E402

_TOKENIZER_DIR = tempfile.TemporaryDirectory()
IDENT = {"model_hash": "bench", "dataset_hash": "bench", "request_hash": "bench"}


GPT2_SMALL_SHAPE = ModelConfig(name="gpt2-small-shape", d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072)


def setup(n_prompts: int, model_cfg: ModelConfig = ModelConfig(), device: str = "cpu"):
    words = background_vocabulary()
    for t in TASKS:
        words |= get_task(t).vocabulary()
    tok = build_tokenizer(words)
    from transformers import AutoTokenizer

    tok.save_pretrained(_TOKENIZER_DIR.name)  # transformer_lens reloads it from this path: keep it alive
    tok = AutoTokenizer.from_pretrained(_TOKENIZER_DIR.name)
    model = build_model(model_cfg, len(tok), tokenizer=tok)
    if device != "cpu":
        model = model.to(device, print_details=False)
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=n_prompts // 2, n_test=n_prompts // 2,
                                                         counterfactuals=False), tok)
    return model, df


SCHEDULE: str | None = None  # --schedule: None lets capture_chunks choose


def capture_once(model, df, request, path, schedule: str | None = None) -> float:
    t = time.perf_counter()
    store = open_or_create_store(path, model, df, request, IDENT)
    capture_chunks(store, model, request.batch_size, schedule=schedule or SCHEDULE)
    store.finalize()
    return time.perf_counter() - t


@torch.no_grad()
def bare_forward(model, df, batch_size) -> float:
    from sage_core.model.transformer import pad_sequences

    tokens = pad_sequences(df["tokens"].to_list(), model.tokenizer.pad_token_id)
    t = time.perf_counter()
    for i in range(0, len(tokens), batch_size):
        model(tokens[i : i + batch_size], return_type=None)
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the last kernels may still run
    return time.perf_counter() - t


def phases(model, request: CaptureRequest, store: ActivationStore) -> tuple[float, float]:
    """Seconds of the capture's two CPU phases without any file write: filling the chunk buffers (the forward pass
    with its hook copies, padding zeroed) and encoding those chunks (Blosc + checksums) as the store would."""
    buffers = {h: chunk_buffer((store.chunk_prompts, *store.group[h].shape[1:]), model) for h in store.hooks}
    forward = encode = 0.0
    for i in range(store.n_chunks):
        start, stop = store.chunk_range(i)
        arrays = {h: b[: stop - start] for h, b in buffers.items()}
        t = time.perf_counter()
        compute_chunk(store, model, i, arrays, request.batch_size)
        forward += time.perf_counter() - t
        t = time.perf_counter()
        store.encode_chunk(i, arrays)
        encode += time.perf_counter() - t
    return forward, encode


def ratio(model, df, request: CaptureRequest, repeats: int, label: str, report_disk: bool,
          breakdown: bool = False) -> float:
    """Capture + store against the bare forward pass in paired rounds (bare, then capture): this machine's load
    drifts by 10-30% between runs, so each capture is divided by the bare pass just before it. Prints the median and
    range of the paired ratios and returns the median. With `breakdown`, each round also times the forward pass with
    its hook copies alone and the encoding alone; the rest of the capture's time is creating the store, writing its
    files (and their effect on the forward pass beside them) and sealing it."""
    got, parts = [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(repeats):
            bare = bare_forward(model, df, request.batch_size)
            got.append(capture_once(model, df, request, Path(d) / f"s{r}.zarr") / bare)
            if breakdown:
                store = ActivationStore.open(Path(d) / f"s{r}.zarr")
                pa = prompt_arrays(df, model.tokenizer.pad_token_id if model.tokenizer else 0)
                store.attach_prompts(pa["tokens"], pa["lengths"], pa["role_pos"] if "role_pos" in store.group else None)
                forward, encode = phases(model, request, store)
                parts.append((forward / bare, encode / bare, got[-1] - (forward + encode) / bare))
        med = statistics.median(got)
        print(f"[{label}] capture + store / bare forward (last {bare:.2f} s): median {med:.3f}, "
              f"range {min(got):.3f}-{max(got):.3f} over {repeats} paired rounds   (target <= 1.25)")
        if breakdown:
            fwd, enc, rest = (statistics.median(p[k] for p in parts) for k in range(3))
            print(f"  of which (medians over the rounds): forward pass with hook copies {fwd:.3f}, encoding {enc:.3f}, "
                  f"the rest {rest:.3f} (store creation, file writes and their slowing of the forward pass beside "
                  f"them, sealing)")
        store = ActivationStore.open(Path(d) / "s0.zarr")
        if report_disk:
            hooks = request.hooks
            n_tok = int(store.group["length"][:].sum())
            raw = sum(4 * n_tok * (store.group[h].size // (store.n_prompts * store.group[h].shape[1])) for h in hooks)
            padded_raw = sum(store.group[h].size * 4 for h in hooks)
            disk = store.nbytes_on_disk()
            t = time.perf_counter()
            scanned = 0
            for h in hooks:
                for _, _, a in store.iter_chunks(h):
                    scanned += a.nbytes
            scan = time.perf_counter() - t
            print(f"  {len(df)} prompts, {n_tok} real tokens, chunk {store.chunk_prompts} prompts")
            print(f"  bytes on disk: {disk / 2**20:.1f} MiB vs raw float32 {raw / 2**20:.1f} MiB of real tokens "
                  f"({padded_raw / 2**20:.1f} MiB padded): {disk / raw:.3f}x raw")
            print(f"  full scan    : {scanned / 2**20 / scan:,.0f} MiB/s decoded float32 ({scan:.2f} s)")
    return med


def compare_schedules(model, df, request: CaptureRequest, rounds: int, label: str) -> None:
    """Every write schedule in paired rounds (bare forward, then capture, per schedule and round): this machine's load
    drifts by 10-30% between runs, so each capture is divided by the bare pass just before it."""
    ratios: dict[str, list[float]] = {s: [] for s in ("io", "in_turn", "background")}
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            for s, got in ratios.items():
                bare = bare_forward(model, df, request.batch_size)
                got.append(capture_once(model, df, request, Path(d) / f"{s}{r}.zarr", s) / bare)
                shutil.rmtree(Path(d) / f"{s}{r}.zarr")
    for s, got in ratios.items():
        print(f"[{label}] schedule {s:10s}: median ratio {statistics.median(got):.3f}, min {min(got):.3f} "
              f"over {rounds} paired rounds")


def memory_child(n_prompts: int, dtype: str) -> None:
    model, df = setup(n_prompts)
    request = CaptureRequest(hooks=default_hooks(model.cfg.n_layers), dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        base = _peak_kb()
        capture_once(model, df, request, Path(d) / "s.zarr")
        print(json.dumps({"peak_kb": _peak_kb(), "base_kb": base}))


def _peak_kb() -> int:
    """This process's own high-water RSS (VmHWM: reset by exec, unlike ru_maxrss which keeps the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compression", default="lz4", choices=["lz4", "zstd", "none"])
    ap.add_argument("--repeats", type=int, default=3, help="paired rounds per ratio")
    ap.add_argument("--gpt2-prompts", type=int, default=192, help="prompts for the GPT-2-small-shaped run (0: skip)")
    ap.add_argument("--schedule", choices=["auto", "background", "io", "in_turn"], default="auto",
                    help="how chunk writes meet the forward pass (auto: background when torch leaves a core free or "
                         "runs on a GPU, else io: compress in turn, write files beside the next forward pass)")
    ap.add_argument("--compare-schedules", type=int, default=0, metavar="ROUNDS",
                    help="only compare the write schedules on the GPT-2-small shape, in ROUNDS paired rounds")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the models run there; stores go to /tmp)")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.dtype)
        return

    global SCHEDULE
    SCHEDULE = None if args.schedule == "auto" else args.schedule
    if args.compare_schedules:
        big, big_df = setup(args.gpt2_prompts, GPT2_SMALL_SHAPE, args.device)
        hooks = default_hooks(big.cfg.n_layers)
        request = CaptureRequest(hooks=hooks, dtype=args.dtype, compression=args.compression)
        compare_schedules(big, big_df, request, args.compare_schedules,
                          f"GPT-2-small shape, {len(hooks)} hooks, {args.gpt2_prompts} prompts, {args.device}")
        return
    model, df = setup(args.prompts, device=args.device)
    print(f"device {args.device}, write schedule: {SCHEDULE or write_schedule(model)} ({args.schedule})")
    hooks = default_hooks(model.cfg.n_layers)
    request = CaptureRequest(hooks=hooks, dtype=args.dtype, compression=args.compression)
    print(f"Blosc-{request.compression}, dtype {args.dtype}, {len(hooks)} hooks on the built-in model")
    for positions in ("all", "roles"):
        ratio(model, df, request.model_copy(update={"positions": positions}), args.repeats,
              f"built-in model, {positions} positions", report_disk=positions == "all")
    if args.gpt2_prompts:
        big, big_df = setup(args.gpt2_prompts, GPT2_SMALL_SHAPE, args.device)
        big_request = request.model_copy(update={"hooks": default_hooks(big.cfg.n_layers)})
        for positions in ("all", "roles"):
            ratio(big, big_df, big_request.model_copy(update={"positions": positions}), args.repeats,
                  f"GPT-2-small shape ({len(big_request.hooks)} hooks, {args.gpt2_prompts} prompts), {positions} "
                  f"positions", report_disk=False, breakdown=positions == "all")

    peaks = []
    for n in (args.prompts, 10 * args.prompts):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--dtype", args.dtype],
                             capture_output=True, text=True, check=True)
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_kb"])
    print(f"peak RSS              : {peaks[0] / 1024:.0f} MiB ({args.prompts} prompts) vs {peaks[1] / 1024:.0f} MiB "
          f"({10 * args.prompts} prompts): {peaks[1] / peaks[0]:.3f}x   (target <= 1.2)")


if __name__ == "__main__":
    if "--memory-child" in sys.argv:  # run as a plain script (benchmarks/ is not an installed package): no record
        main()
    else:
        from benchmarks.record import recording

        with recording("capture"):
            main()
