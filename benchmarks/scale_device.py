"""Part 5 and 6 of `benchmarks/scale.py`: device figures and the projections made from the measured figures.

Every function takes the device as a spec (cpu, cuda, cuda:N), so the same code runs on a lent GPU and, at a reduced
size, on the CPU. Nothing here is downloaded: the GPT-2-small-shaped model has random weights and is saved as if
imported (`tasks.zoo.import_model` reuses a whole model directory that names its source), with the tiny zoo's
word-level tokenizer; its SAEs are random TopK SAEs saved by SAELens itself (cfg.json + sae_weights.safetensors, read
back through `SAE.load_from_disk` like any directory spec).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.scale_projection import count_registry, growth_table, human, registry_wall
from benchmarks.scale_runs import LCFG, evaluate_on, forget_scores, tiny_cfg
from sage_core.config import EvaluateConfig, ZooConfig
from sage_core.model.transformer import ModelConfig

GPT2_NAME = "sage-gpt2-small-shape"
GPT2 = ModelConfig(name=GPT2_NAME, d_model=768, n_layers=12, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024)
GPT2_VOCAB = 50257  # GPT-2's unembedding; the word-level tokenizer uses the first few hundred ids
SAE_WIDTH = 24576  # 32 x d_model, as gpt2-small-res-jb
SAE_K = 32  # TopK: a realistic L0 from random weights (a random ReLU SAE would fire about half its latents)


def device_vs_cpu(home: Path, device: str, rounds: int) -> None:
    """The tiny zoo's evaluation (scoring rerun, as in part 1) with every unit on `device` against every unit on the
    CPU, in paired rounds on `threads`; a warm-up run on the device first (CUDA start-up, moving the model)."""
    from flows.engine import open_engine

    ratios, walls = [], []
    with open_engine("threads", device) as eng:
        if device != "cpu":
            forget_scores(home)
            warm = evaluate_on(eng, tiny_cfg(device), home, timed_units=False)
            print(f"built-in evaluation on {device}: first run {warm.wall:.1f} s (device start-up included)")
        for _ in range(rounds):
            forget_scores(home)
            cpu = evaluate_on(eng, tiny_cfg("cpu"), home, timed_units=False)
            forget_scores(home)
            on = evaluate_on(eng, tiny_cfg(device), home, timed_units=False)
            ratios.append(on.wall / cpu.wall)
            walls.append((cpu.wall, on.wall))
    print(f"built-in evaluation (tiny zoo, scoring rerun) on {device} / on cpu: median {statistics.median(ratios):.2f}x "
          f"over {rounds} paired round(s) ({'; '.join(f'{c:.1f} s vs {d:.1f} s' for c, d in walls)})"
          + ("; the same device twice: this runs the code, the ratio is run-to-run noise" if device == "cpu" else ""))


def save_gpt2(home: Path, cfg: ModelConfig = GPT2, vocab: int = GPT2_VOCAB) -> float:
    """The GPT-2-small-shaped model under zoo/<GPT2_NAME>/model as an imported pretrained model (`vocab` 0: the
    tokenizer's own size); returns its size, MiB."""
    from sage_core.model.transformer import build_model
    from storage.home import SageHome
    from storage.zoo import load_tokenizer, save_model, save_tokenizer

    h = SageHome(home)
    tok = load_tokenizer(h.tokenizer_dir(ZooConfig.tiny().model.name))
    model = build_model(cfg, vocab or len(tok), tokenizer=tok)
    save_tokenizer(h.tokenizer_dir(GPT2_NAME), tok)
    path = save_model(h, GPT2_NAME, model, {"pretrained": GPT2_NAME, "loader": "benchmarks.scale_device (random)"})
    return (path / "model.safetensors").stat().st_size / 2**20


def write_sae(path: Path, hook: str, seed: int, width: int = SAE_WIDTH) -> str:
    """A random TopK SAE on GPT-2-small's residual width in SAELens' layout; returns its directory spec."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=GPT2.d_model, d_sae=width, k=SAE_K, metadata=SAEMetadata(hook_name=hook)))
    sae.save_model(str(path))
    return str(path)


def gpt2_per_sae(home: Path, device: str, n: int, layers: int = GPT2.n_layers, vocab: int = GPT2_VOCAB) -> dict:
    """Seconds per SAE on `device`: re-evaluating one SAE (every stage cached) against the same run with `n` new
    SAEs at the same residual hook (each resolved, scored on ioi and given its core metrics). The hook is one the
    location search kept, found by a first run with a small probe SAE; that first run (import, prompts, location
    search, ground truth, capture, references, controls) is the model's fixed cost. `layers` and `vocab` (0: the
    tokenizer's own) reduce the model for a CPU run; d_model, heads, d_mlp and the SAE width stay GPT-2 small's."""
    from flows.engine import open_engine

    t = time.perf_counter()
    cfg = GPT2.model_copy(update={"n_layers": layers})
    mib = save_gpt2(home, cfg, vocab)
    saes = home.parent / "gpt2-saes"
    base = EvaluateConfig(zoo=ZooConfig.tiny(), pretrained=GPT2_NAME, tasks=("ioi",), locate=LCFG, per_group=1,
                          core_sequences=32, device=device, min_task_accuracy=0.0,  # random weights do no task
                          corpus="builtin")  # the stand-in speaks the built-in tokenizer: its corpus, offline
    full = layers == GPT2.n_layers and vocab == GPT2_VOCAB
    shape = (f"{layers} layers, d_model 768, 12 heads, d_mlp 3072, d_vocab {vocab or 'of the tokenizer'}"
             + ("" if full else ": REDUCED from GPT-2 small's 12 layers and 50257 tokens for a CPU run"))
    print(f"GPT-2-small-shaped model ({shape}; random weights, {mib:.0f} MiB) saved in {time.perf_counter() - t:.1f} s")
    with open_engine("threads", device) as eng:
        probe = write_sae(saes / "probe", "blocks.0.hook_resid_pre", 0, width=GPT2.d_model)
        first = evaluate_on(eng, base.model_copy(update={"saes": (probe,)}), home, timed_units=False)
        resid = [x for x in first.out["sections"]["ioi"] if "resid" in x]
        hook = resid[0] if resid else "blocks.0.hook_resid_pre"
        t = time.perf_counter()
        specs = [write_sae(saes / f"gpt2s-topk-{SAE_WIDTH}-{i}", hook, i + 1) for i in range(n + 1)]
        written = time.perf_counter() - t
        evaluate_on(eng, base.model_copy(update={"saes": tuple(specs[:1])}), home, timed_units=False)
        cached = evaluate_on(eng, base.model_copy(update={"saes": tuple(specs[:1])}), home)
        grown = evaluate_on(eng, base.model_copy(update={"saes": tuple(specs)}), home)
    per = (grown.wall - cached.wall) / n
    new = {Path(spec).name for spec in specs[1:]}
    mine = [u for u in grown.out["scoring"]["units"] if u["name"] in new]  # each new SAE's one score-sae task run
    score, core = ([u[kind] for u in mine] for kind in ("score", "core"))
    print(f"first evaluation of the model on ioi with a probe SAE (its fixed cost): {first.wall:.1f} s; cross-sections "
          f"{', '.join(first.out['sections']['ioi'])}")
    print(f"{n + 1} SAEs of width {SAE_WIDTH} (TopK k={SAE_K}) at {hook}"
          f"{'' if resid else ' (no residual cross-section was kept: the SAEs reach none, core metrics only)'} "
          f"written in {written:.1f} s")
    print(f"seconds per SAE on {device}: {per:.2f} s  (1 SAE, every stage cached: {cached.wall:.1f} s; + {n} new SAEs: "
          f"{grown.wall:.1f} s); inside each new SAE's one task run, where it ran: scoring {sum(score) / n:.2f} s, "
          f"core metrics {sum(core) / n:.2f} s ({len(mine)} runs)")
    return {"device": device, "per_sae": per, "fixed": first.wall, "n": n, "full": full, "hook": hook,
            "base": specs[0], "saes": saes, "cfg": base}


def gpt2_engines(home: Path, done: dict, clusters: list[str], rounds: int, n: int) -> None:
    """Heavy units (issue #25 item 4): the same GPT-2-shaped evaluation (after `gpt2_per_sae`, which left every
    stage but the SAEs' own cached) with `n` new 24576-wide SAEs on each engine, in paired rounds (new SAEs every
    round and engine: nothing of theirs is cached). Per SAE = (the run with them - the run without them) / n; the
    ratio to the first engine is taken within each round. Each engine's torch threads per process are printed."""
    from flows.engine import open_engine

    base = done["cfg"].model_copy(update={"device": "cpu"})
    per: dict[str, list[float]] = {c: [] for c in clusters}
    own: dict[str, list[float]] = {c: [] for c in clusters}  # each new SAE's work as its unit timed it
    threads: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        engines = {c: stack.enter_context(open_engine(c, "cpu")) for c in clusters}
        for c, eng in engines.items():  # each engine's first run reads the model into its processes: not timed
            evaluate_on(eng, base.model_copy(update={"saes": (done["base"],)}), home, timed_units=False)
            threads[c] = eng.torch_threads()
        seed = 1000
        for _ in range(rounds):
            for c, eng in engines.items():
                specs = []
                for _i in range(n):
                    seed += 1
                    specs.append(write_sae(done["saes"] / f"heavy-{seed}", done["hook"], seed))
                cached = evaluate_on(eng, base.model_copy(update={"saes": (done["base"],)}), home, timed_units=False)
                grown = evaluate_on(eng, base.model_copy(update={"saes": (done["base"], *specs)}), home,
                                    timed_units=False)
                per[c].append((grown.wall - cached.wall) / n)
                names = {Path(spec).name for spec in specs}
                own[c] += [u["score"] + u["core"] for u in grown.out["scoring"]["units"] if u["name"] in names]
                for spec in specs:
                    shutil.rmtree(spec, ignore_errors=True)
    first = clusters[0]
    print(f"heavy units: {n} new {SAE_WIDTH}-wide SAEs per run on the GPT-2-shaped model, {rounds} paired round(s), "
          f"{os.cpu_count()} CPU cores")
    for c in clusters:
        ratios = [b / x for x, b in zip(per[c], per[first], strict=True)]
        print(f"{c:>10}: {statistics.median(per[c]):.2f} s per SAE (rounds {', '.join(f'{x:.2f}' for x in per[c])}); "
              f"speed vs {first} {statistics.median(ratios):.2f}x (>= 1 is as fast or faster); each SAE's own work "
              f"(scoring + core metrics, where it ran) {statistics.median(own[c]):.2f} s; torch threads per process "
              f"{threads[c]}")


def _dd(path: Path, mib: int, flag: str) -> float:
    """MiB/s of dd writing `mib` MiB of zeros to `path` with `flag` (oflag=direct or conv=fdatasync). Zeros are not
    special to this disk: dd from a random file in /dev/shm wrote within its run-to-run spread."""
    os.sync()  # start from a clean page cache: what earlier writes left dirty is not timed here
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", flag], check=True,
                   capture_output=True)
    rate = mib / (time.perf_counter() - t)
    path.unlink()
    return rate


STORE_WAYS = (("lz4", False), ("lz4", True), ("none", False), ("none", True))  # (compression, through zarr's pipeline)


def _store_once(path: Path, n: int, data: dict[str, np.ndarray], chunk: int, compression: str,
                via_zarr: bool) -> dict[str, float]:
    """One store written as a capture on a GPU writes it (`write_chunk`, with the writer threads it passes), from
    creating it to its seal (which waits until every file is on the disk): the wall time, its three parts, the bytes on
    disk. `via_zarr`: the chunks through zarr's own codec pipeline instead of SAGE's encoder."""
    from sage_core.model.capture import dim_names
    from storage.activations import ActivationStore
    from tasks.capture import file_writers

    n_pos, d = next(iter(data.values())).shape[1:]
    os.sync()
    t0 = time.perf_counter()
    store = ActivationStore.create_or_resume(
        path, attrs={"model_hash": "bench", "dataset_hash": "bench", "request_hash": "bench"},
        hook_shapes={h: ((d,), dim_names((d,))) for h in data}, tokens=np.zeros((n, n_pos), np.int32),
        lengths=np.full(n, n_pos, np.int32), prompt_ids=[str(i) for i in range(n)], chunk_prompts=chunk,
        dtype="float32", compression=compression)
    writers = file_writers("background")  # what a capture on a GPU writes with
    t1 = time.perf_counter()
    for i in range(store.n_chunks):
        start, stop = store.chunk_range(i)
        store.write_chunk(i, {h: a[: stop - start] for h, a in data.items()}, writers, via_zarr=via_zarr)
    t2 = time.perf_counter()
    store.finalize()
    t3 = time.perf_counter()
    return {"wall": t3 - t0, "create": t1 - t0, "chunks": t2 - t1, "seal": t3 - t2, "bytes": store.nbytes_on_disk()}


def _encode_alone(path: Path, data: dict[str, np.ndarray], chunk: int, compression: str) -> float:
    """MiB/s of SAGE's encoder alone (Blosc and checksums of one chunk of every hook, nothing written), from a store
    made to hold one chunk: with it, whether the encoding or the disk bounds a compressed store on this machine."""
    from sage_core.model.capture import dim_names
    from storage.activations import ActivationStore

    n_pos, d = next(iter(data.values())).shape[1:]
    store = ActivationStore.create_or_resume(
        path, attrs={"model_hash": "bench", "dataset_hash": "bench", "request_hash": "bench"},
        hook_shapes={h: ((d,), dim_names((d,))) for h in data}, tokens=np.zeros((chunk, n_pos), np.int32),
        lengths=np.full(chunk, n_pos, np.int32), prompt_ids=[str(i) for i in range(chunk)], chunk_prompts=chunk,
        dtype="float32", compression=compression)
    t = time.perf_counter()
    for _ in range(5):
        store.encode_chunk(0, data)
    seconds = time.perf_counter() - t
    shutil.rmtree(path)
    return 5 * sum(a.nbytes for a in data.values()) / 2**20 / seconds


def store_vs_dd(tmp: Path, mib: int, rounds: int) -> None:
    """The activation store writing `mib` MiB of float32 activations (8 residual hooks of GPT-2 small's width, 32
    positions, chunk by chunk with the writer threads a GPU capture uses, sealed: on the disk at the end) against dd
    writing as much, in paired rounds on the same filesystem: Blosc-LZ4 (the default) and uncompressed, each through
    SAGE's own encoder (the store's write path) and through zarr's own codec pipeline. No forward pass: on a GPU the
    forward pass is not the limit, the writes are. The rate is the store's wall time, from creating it to its seal."""
    from sage_core.model.capture import CaptureRequest, chunk_prompts

    hooks = [f"blocks.{i}.hook_resid_post" for i in range(8)]
    n_pos, d = 32, GPT2.d_model
    per_hook = n_pos * d * 4
    request = CaptureRequest(hooks=tuple(hooks))
    chunk = chunk_prompts(per_hook, request.chunk_mb, request.batch_size)
    n = max(1, mib * 2**20 // (per_hook * len(hooks) * chunk)) * chunk  # whole chunks: no padding in the bytes
    rng = np.random.default_rng(0)
    data = {h: rng.standard_normal((chunk, n_pos, d), dtype=np.float32) for h in hooks}
    logical = n * per_hook * len(hooks) / 2**20
    direct: list[float] = []
    got: dict[tuple[str, bool], list[dict[str, float]]] = {way: [] for way in STORE_WAYS}
    encode: dict[str, list[float]] = {"lz4": [], "none": []}
    for r in range(rounds):
        direct.append(_dd(tmp / "dd.bin", mib, "oflag=direct"))
        for c, rates in encode.items():
            rates.append(_encode_alone(tmp / f"enc-{c}.zarr", data, chunk, c))
        for way in STORE_WAYS if r % 2 == 0 else STORE_WAYS[::-1]:  # neither pipeline always goes first
            path = tmp / f"store-{way[0]}-{way[1]}-{r}.zarr"
            dd = _dd(tmp / "dd.bin", mib, "conv=fdatasync")  # just before: this machine's load drifts
            got[way].append({**_store_once(path, n, data, chunk, *way), "dd": dd})
            shutil.rmtree(path)
    dd_sync = [x["dd"] for runs in got.values() for x in runs]
    print(f"activation store write vs the disk's raw sequential write ({logical:.0f} MiB of float32 activations in "
          f"chunks of {chunk} prompts x {len(hooks)} hooks, under {tmp}, {os.cpu_count()} CPU cores; medians of "
          f"{rounds} paired rounds; the store's rate is its wall time from creating it to its seal, files on disk):")
    print(f"  dd conv=fdatasync {statistics.median(dd_sync):,.0f} MiB/s (run just before each store; range "
          f"{min(dd_sync):,.0f}-{max(dd_sync):,.0f}); dd oflag=direct {statistics.median(direct):,.0f} MiB/s")
    for (compression, via_zarr), runs in got.items():
        m = _rates(runs, logical)
        name = "Blosc-LZ4" if compression == "lz4" else "uncompressed"
        print(f"  {name}, {'zarr codec pipeline' if via_zarr else 'SAGE encoder (kept)'}: {m['logical']:,.0f} MiB/s "
              f"of activations, {m['disk']:,.0f} MiB/s on disk ({m['kept']:.2f} of the bytes); on-disk rate / dd "
              f"conv=fdatasync {m['ratio']:.2f} (goal >= 0.8; rounds {', '.join(f'{x:.2f}' for x in m['ratios'])}); "
              f"create {m['create']:.2f} s, chunks {m['chunks']:.2f} s, seal {m['seal']:.2f} s")
        if via_zarr:
            ours = [a["wall"] / b["wall"] for a, b in zip(got[(compression, False)], runs, strict=True)]
            print(f"    {name}: SAGE encoder's wall / zarr pipeline's wall, paired: median {statistics.median(ours):.2f}"
                  f" (rounds {', '.join(f'{x:.2f}' for x in ours)}; < 1: SAGE's is faster); SAGE's encoder alone (no "
                  f"file written) {statistics.median(encode[compression]):,.0f} MiB/s of activations")


def _rates(runs: list[dict[str, float]], logical: float) -> dict:
    """Medians over rounds of one way's figures (MiB/s, seconds) and of its ratio to the dd conv=fdatasync run just
    before each store."""
    disk = [x["bytes"] / 2**20 / x["wall"] for x in runs]
    ratios = [rate / x["dd"] for rate, x in zip(disk, runs, strict=True)]
    med = statistics.median
    return {"logical": med(logical / x["wall"] for x in runs), "disk": med(disk), "ratio": med(ratios),
            "ratios": ratios, "kept": med(x["bytes"] / 2**20 / logical for x in runs),
            **{k: med(x[k] for x in runs) for k in ("create", "chunks", "seal")}}


def projections(figs: dict, clusters: list[str], per_sae: dict | None, device: str) -> None:
    """Part 6: the growth table from the measured per-worker throughput and start-up, and the registry's GPT-2-small
    residual SAEs on 1 and 8 GPUs from the measured per-SAE seconds. Projections, labelled as such."""
    print("== 6. PROJECTIONS from the figures measured above (a simple model, not measurements)")
    one = next((c for c in clusters if c in figs and figs[c].slots == 1 and c != "threads"), None)
    if one is None:
        print("growth table: skipped (needs the throughput of a one-worker engine, e.g. --clusters threads,local:1)")
    else:
        f = figs[one]
        print(f"wall = start-up + units / (workers x throughput), units = (SAEs + 2 controls) x tasks, with the "
              f"tiny zoo's measured {one} figures: start-up {f.startup:.1f} s, {f.throughput():.2f} units/s per "
              f"worker; it assumes one free core or GPU per worker and no dispatch limit")
        for line in growth_table(f.startup, f.throughput()):
            print("  " + line)
        print(f"  not modelled: the flow's process dispatches every unit itself; on {one} a unit cost "
              f"{f.overhead_per_unit():.2f} s of wall beyond its compute, and as far as that is serial, N units take "
              f"at least N x {f.overhead_per_unit():.2f} s however many workers score them")
    counts = count_registry()
    total = sum(counts.values())
    print(f"SAELens registry (sae_lens, shipped): {total} GPT-2-small SAEs at residual hooks in {len(counts)} "
          f"releases ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    if per_sae is None:
        print("their wall time: not projected (no per-SAE seconds measured: --gpt2-saes 0)")
        return
    cpu = per_sae["device"] == "cpu"
    print(f"projected wall time for all {total}, each costed as the {SAE_WIDTH}-wide SAE measured above on "
          f"{per_sae['device']}{'' if per_sae['full'] else ' with the REDUCED model'}, on 1 task (ioi): fixed "
          f"{per_sae['fixed']:.1f} s + {total} x {per_sae['per_sae']:.2f} s / devices"
          + (" (this run had no GPU: the GPU counts below use CPU seconds, so they say how the time divides, not what "
             "a GPU takes)" if cpu else ""))
    for gpus in (1, 8):
        wall = registry_wall(per_sae["fixed"], total, per_sae["per_sae"], gpus)
        print(f"  {gpus} GPU{'s' if gpus > 1 else ''}: {human(wall)}")
    if device != per_sae["device"]:
        print(f"  (measured on {per_sae['device']}, asked for {device})")
