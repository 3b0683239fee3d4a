"""A Hugging Face hub cache holding a tiny random-weight "gpt2", so the real `HookedTransformer.from_pretrained("gpt2")`
path runs offline (HF_HOME=<root>, HF_HUB_OFFLINE=1). Like GPT-2, its tokenizer pads with its BOS token."""

from __future__ import annotations

from pathlib import Path

REVISION = "0" * 40


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
    return {"HF_HOME": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_hub_files(root: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = REVISION) -> Path:
    """Put `files` ({path in the repo: a local file or bytes}) into repo `repo_id` of the hub cache under `root`/hub
    as huggingface_hub lays it out (blobs/<sha256>, snapshots/<revision>/<path> linking to them, refs/main), so
    `hf_hub_download` and `try_to_load_from_cache` find them offline; returns the snapshot folder."""
    import hashlib
    import os

    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for rel, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


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
