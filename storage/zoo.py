"""The zoo on disk: the built-in model (TransformerLens config dict + safetensors + HF tokenizer directory) and its
SAEs in SAELens' own layout, so plain transformer_lens and `sae_lens.SAE.load_from_disk` read them without SAGE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from storage.atomic import StoreError, is_complete, is_whole, read_marker, write_once
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.records import read_record, write_record


def save_tokenizer(path: Path, tokenizer: Any, key: str | None = None) -> None:
    """Write a tokenizer directory (tokenizer.json and friends); its marker records `key`, the key of the stage that
    built it, and one with another key is replaced once the new one is whole."""
    if is_complete(path) and (key is None or read_marker(path).get("key") == key):
        return
    with write_once(path, {"key": key} if key else None, replace=True) as tmp:
        tokenizer.save_pretrained(str(tmp))


def load_tokenizer(path: Path):
    """Reload with AutoTokenizer (transformer_lens needs a tokenizer loaded from disk, not built in memory)."""
    from transformers import AutoTokenizer

    if not is_complete(path):
        raise StoreError(f"tokenizer at {path} is missing or incomplete; run `sage zoo build`")
    return AutoTokenizer.from_pretrained(str(path))


def _config_dict(cfg: HookedTransformerConfig) -> dict[str, Any]:
    d = dict(cfg.to_dict())  # to_dict returns the config's own __dict__: writing into it would break the model
    d["dtype"] = str(d["dtype"]).removeprefix("torch.")
    return d


def save_model(home: SageHome, name: str, model: HookedTransformer, meta: dict[str, Any]) -> Path:
    """zoo/<name>/model/{config.json, model.safetensors, tokenizer/} — the tokenizer dir must already be there."""
    final = home.model_dir(name)
    tok_dir = home.tokenizer_dir(name)
    if not is_complete(tok_dir):
        raise StoreError(f"save the tokenizer to {tok_dir} before the model")
    # The model dir holds the tokenizer dir, so write the model files in place and mark completion last (a retrain
    # first drops the old marker: a crash midway leaves an incomplete model, never old files marked as new)
    final.mkdir(parents=True, exist_ok=True)
    (final / "_MODEL_COMPLETE.json").unlink(missing_ok=True)
    (final / "config.json").write_text(json.dumps(_config_dict(model.cfg), indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(final / "model.safetensors"))
    (final / "train_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    marker = final / "_MODEL_COMPLETE.json"
    marker.write_text(json.dumps({"model_hash": model_hash(final)}))
    return final


def read_train_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "train_meta.json").read_text())


def model_is_complete(path: Path) -> bool:
    return (Path(path) / "_MODEL_COMPLETE.json").is_file()


def model_hash(path: Path) -> str:
    """Content hash of the model: config, weights and tokenizer (not the training log)."""
    path = Path(path)
    from storage.hashing import file_hash

    return "-".join([file_hash(path / "config.json")[:8], file_hash(path / "model.safetensors")[:8],
                     dir_hash(path / "tokenizer")[:8]])


def load_model(path: Path, device: str = "cpu") -> HookedTransformer:
    """Load the built-in model exactly as a user would with plain transformer_lens, on `device`."""
    path = Path(path)
    if not model_is_complete(path):
        raise StoreError(f"model at {path} is missing or incomplete; run `sage zoo build`")
    d = json.loads((path / "config.json").read_text())
    d["dtype"] = getattr(torch, d["dtype"])
    cfg = HookedTransformerConfig(**d)
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(path / "tokenizer"), move_to_device=False)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    return model if device == "cpu" else model.to(device, print_details=False)


def save_sae(path: Path, training_sae, metrics: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
             replace: bool = False):
    """SAELens' inference layout (cfg.json with metadata.hook_name, sae_weights.safetensors), written once (or, with
    `replace`, swapped in for a stale one only when whole)."""
    if is_complete(path) and not replace:
        return path
    with write_once(path, meta, replace=replace) as tmp:
        training_sae.save_inference_model(str(tmp))
        if metrics:
            (tmp / "sage_metrics.json").write_text(json.dumps(metrics, indent=1))
    return path


def load_sae(path: Path):
    from sae_lens import SAE

    if not is_complete(path):
        raise StoreError(f"SAE at {path} is missing or incomplete; run `sage zoo build`")
    return SAE.load_from_disk(str(path), device="cpu")


def sae_meta(path: Path) -> dict[str, Any]:
    return read_marker(path)


def write_table(path: Path, df: pl.DataFrame) -> Path:
    """A parquet table written atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.partial")
    df.write_parquet(tmp)
    tmp.replace(path)
    return path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """A directory of safetensors files (one per key), written once."""
    if is_complete(path):
        return path
    with write_once(path, meta) as tmp:
        for key, t in tensors.items():
            save_file({"acts": t.contiguous()}, str(tmp / f"{key}.safetensors"))
    return path


def load_tensor(path: Path, key: str) -> torch.Tensor:
    path = Path(path)
    if not is_complete(path):
        raise StoreError(f"activation cache {path} is incomplete; rerun `sage zoo build` to recapture it")
    return load_file(str(path / f"{key}.safetensors"))["acts"]


def write_zoo_record(home: SageHome, name: str, key: str, manifests: dict[str, Any]) -> Path:
    """Record a finished zoo build: the key of its config and code, and the manifests of what it produced."""
    return write_record(home.zoo_record(name), key, manifests)


def read_zoo_record(home: SageHome, name: str, key: str, sae_names: list[str]) -> dict[str, Any] | None:
    """The recorded manifests if the record is for `key` and everything it names is still whole on disk (every
    dataset and the corpus by content hash, the model by its marker, every planned SAE by its marker); else None."""
    from storage.hashing import file_hash

    def whole(rec: dict[str, Any]) -> bool:
        model = rec.get("model") or {}
        if not model_is_complete(home.model_dir(name)) or model_hash(home.model_dir(name)) != model.get("hash"):
            return False
        for m in [*rec.get("datasets", []), rec.get("corpus") or {}]:
            p = home.at(m.get("path", ""))
            if not p.is_file() or not is_whole(p.parent) or file_hash(p) != m.get("hash"):
                return False
        recorded = {s["name"] for s in rec.get("saes", [])}
        # every planned SAE recorded and whole (a deleted marker or a changed file sends the build back to work)
        return all(s in recorded and is_whole(home.sae_dir(name, s)) for s in sae_names)

    return read_record(home.zoo_record(name), key, whole)
