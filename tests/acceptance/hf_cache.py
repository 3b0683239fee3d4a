"""A Hugging Face hub cache written by a test, so the real loading code runs offline (HF_HOME=<root>,
HF_HUB_OFFLINE=1): a tiny random-weight "gpt2" (`write_fake_gpt2`; like GPT-2, its tokenizer pads with its BOS token),
GPT-2 small's shape with random weights and GPT-2's real tokenizer (`write_gpt2_small`), and SAE releases in SAELens'
layout (`write_sae_release`) that `registered_release` adds to SAELens' registry for `SAE.from_pretrained`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REVISION = "0" * 40
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def write_fake_gpt2(root: Path, tasks: tuple[str, ...], d_model: int = 64, n_layers: int = 2,
                    drop: frozenset[str] = frozenset()) -> dict[str, str]:
    """Write models--gpt2 under `root`/hub; returns the environment that makes `from_pretrained("gpt2")` read it.
    `drop`: words left out of the tokenizer's vocabulary (to see how a task it cannot spell fails)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.prompts.corpus import background_vocabulary
    from sage_core.prompts.library import get_task

    repo = root / "hub" / "models--gpt2"
    snap = repo / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    words = background_vocabulary()
    for t in tasks:
        words |= get_task(t).vocabulary()
    tok = build_tokenizer(words - drop)
    tok.pad_token = tok.bos_token  # as GPT-2 (TransformerLens pads with <|endoftext|>, its BOS)
    tok.save_pretrained(str(snap))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=4, n_positions=64, n_ctx=64,
                               vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.bos_token_id)).save_pretrained(str(snap))
    return hf_env(root)


def hf_env(root: Path) -> dict[str, str]:
    """The environment that makes huggingface_hub, transformers and sae_lens read the cache under `root`/hub only.
    HF_HUB_CACHE too: one the user's environment sets would win over HF_HOME."""
    return {"HF_HOME": str(root), "HF_HUB_CACHE": str(root / "hub"), **dict.fromkeys(OFFLINE_ENV, "1")}


def write_hub_files(root: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = REVISION) -> Path:
    """Put `files` ({path in the repo: a local file or bytes}) into repo `repo_id` of the hub cache under `root`/hub
    as huggingface_hub lays it out (blobs/<sha256>, snapshots/<revision>/<path> linking to them, refs/main), so
    `hf_hub_download` and `try_to_load_from_cache` find them offline; returns the snapshot folder. A local file is
    hashed in chunks and hard-linked where it can be (GPT-2 small's weights are 500 MB)."""
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for rel, content in files.items():
        if isinstance(content, bytes):
            blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
        else:
            with open(content, "rb") as f:
                blob = repo / "blobs" / hashlib.file_digest(f, "sha256").hexdigest()
            if not blob.exists():
                try:
                    os.link(content, blob)
                except OSError:  # another filesystem, or no hard links there
                    shutil.copyfile(content, blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


# GPT-2 small as the hub's `gpt2` config.json has it (GPT2Config's defaults; transformers 5 dropped n_ctx, which
# TransformerLens reads)
GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257,
              "bos_token_id": 50256, "eos_token_id": 50256}


def write_gpt2_small(root: Path, seed: int = 0) -> dict[str, str]:
    """Write models--gpt2 under `root`/hub: GPT-2 small's real configuration and tokenizer (the vendored vocabulary and
    merges, tests/data/gpt2) with random float32 weights (`GPT2LMHeadModel` initialised after
    `torch.manual_seed(seed)`, model.safetensors, about 500 MB); returns the environment that makes
    `from_pretrained("gpt2")` read it. A few seconds: share it across a module or session."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tokenizers import gpt2_files

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".gpt2-") as tmp:  # beside the cache: blobs are hard links
        gpt2_files(tmp)
        torch.manual_seed(seed)
        GPT2LMHeadModel(GPT2Config(**GPT2_SMALL)).save_pretrained(tmp)
        write_hub_files(root, "gpt2", {p.name: p for p in sorted(Path(tmp).iterdir()) if p.is_file()})
    return hf_env(root)


SAE_CLASSES = {"standard": ("StandardSAE", "StandardSAEConfig"), "topk": ("TopKSAE", "TopKSAEConfig"),
               "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig")}
TOPK_K = 64
# the typical norm of what the SAEs read: write_gpt2_small's random GPT-2 small has residual norms of about 5 to 8.5
# from layer 4 on (the real GPT-2's are far larger)
INPUT_NORM = 8.0
CUT_SD = 2.5  # b_enc sits this many standard deviations of a feature's pre-activation below 0


def _random_sae(hook: str, d_in: int, d_sae: int, architecture: str, model: str, gen: Any, input_norm: float) -> Any:
    """An SAE of sae_lens' class for `architecture` with random but sane weights: unit-norm decoder rows, the encoder
    their transpose, b_dec 0, and b_enc (the threshold for JumpReLU; none for TopK, which keeps k) CUT_SD standard
    deviations of a random feature's pre-activation on inputs of norm `input_norm` below zero: a fraction of a per
    cent of the features fire."""
    import sae_lens
    import torch
    from sae_lens.saes.sae import SAEMetadata

    if architecture not in SAE_CLASSES:
        raise ValueError(f"architecture {architecture!r}: use one of {', '.join(SAE_CLASSES)}")
    cls, cfg_cls = (getattr(sae_lens, n) for n in SAE_CLASSES[architecture])
    extra = {"k": min(TOPK_K, d_sae)} if architecture == "topk" else {}
    # as gpt2-small-res-jb's cfg.json: what the SAE was trained on
    meta = SAEMetadata(hook_name=hook, model_name=model, context_size=128, prepend_bos=True)
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=meta, **extra))
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    cut = CUT_SD * input_norm / d_in**0.5
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_dec.zero_()
        sae.b_enc.fill_(-cut if architecture == "standard" else 0.0)  # TopK keeps its k largest: no bias needed
        if architecture == "jumprelu":
            sae.threshold.fill_(cut)
    return sae


def write_sae_release(root: Path, release: str, model: str, saes: list[tuple[str, str, int, int, str]], seed: int = 0,
                      repo_id: str | None = None, input_norm: float = INPUT_NORM) -> dict[str, Any]:
    """Write SAEs in SAELens' save layout (`<sae_id>/cfg.json`, `<sae_id>/sae_weights.safetensors`, by `save_model`)
    into hub repo `repo_id` (default `sage-test/<release>`) of the cache under `root`/hub. `saes`: (sae_id, hook, d_in,
    d_sae, architecture) each, architecture one of SAE_CLASSES; `input_norm`: the typical norm of the activations they
    read (sets b_enc, see `_random_sae`). Returns the release's entry of SAELens' registry as a
    dict of `PretrainedSAELookup`'s fields (JSON-serialisable: a subprocess can register it too), for
    `registered_release`."""
    import torch

    repo_id = repo_id or f"sage-test/{release}"
    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | bytes] = {}
    with tempfile.TemporaryDirectory(dir=root, prefix=".saes-") as tmp:
        for sae_id, hook, d_in, d_sae, architecture in saes:
            saved = Path(tmp) / sae_id
            _random_sae(hook, d_in, d_sae, architecture, model, gen, input_norm).save_model(saved)
            files |= {f"{sae_id}/{p.name}": p for p in sorted(saved.iterdir())}
        write_hub_files(root, repo_id, files)
    ids = [s[0] for s in saes]
    # the defaults sae_lens' YAML reader gives a release that states no figures
    return {"release": release, "repo_id": repo_id, "model": model, "conversion_func": None,
            "saes_map": {i: i for i in ids}, "expected_var_explained": dict.fromkeys(ids, 1.0),
            "expected_l0": dict.fromkeys(ids, 0.0), "neuronpedia_id": dict.fromkeys(ids), "norm_scaling_factor": {},
            "config_overrides": None}


@contextlib.contextmanager
def registered_release(entry: dict[str, Any]) -> Iterator[Any]:
    """`entry` (from `write_sae_release`) added to SAELens' registry for the `with` block, then taken out again (a
    release it shadowed comes back): the very dict `SAE.from_pretrained` and SAGE's registry source read."""
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    release = entry["release"]
    before = directory.get(release)
    directory[release] = PretrainedSAELookup(**entry)
    try:
        yield directory[release]
    finally:
        if before is None:
            directory.pop(release, None)
        else:
            directory[release] = before


def spy_from_pretrained(monkeypatch) -> list[tuple[str, str]]:
    """Every `SAE.from_pretrained(release, sae_id)` call from now on, in order (the real one still runs)."""
    from sae_lens import SAE

    calls: list[tuple[str, str]] = []
    real = SAE.from_pretrained.__func__

    def spy(cls, release, sae_id, **kw):
        calls.append((release, sae_id))
        return real(cls, release, sae_id, **kw)

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(spy))
    return calls
