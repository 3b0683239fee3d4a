"""The zoo on disk: the built-in model (TransformerLens config dict + safetensors + HF tokenizer directory) and its
SAEs in SAELens' own layout, so plain transformer_lens and `sae_lens.SAE.load_from_disk` read them without SAGE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from storage.atomic import StoreError, file_digest, is_complete, is_whole, read_marker, verify_dir, write_once
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.records import read_record, write_record


def save_tokenizer(path: Path, tokenizer: Any, key: str | None = None) -> None:
    """Write a tokenizer directory (tokenizer.json and friends); its marker records `key`, the key of the stage that
    built it, and one with another key is replaced once the new one is whole."""
    if is_complete(path) and (key is None or read_marker(path).get("key") == key):
        return
    with write_once(path, {"key": key} if key else None, replace=True, kind="tokenizer") as tmp:
        tokenizer.save_pretrained(str(tmp))


def load_tokenizer(path: Path):
    """Reload with AutoTokenizer (transformer_lens needs a tokenizer loaded from disk, not built in memory)."""
    from transformers import AutoTokenizer

    verify_dir(path)  # names a missing or changed file in one line
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
    files = {n: {"size": (final / n).stat().st_size, "digest": file_digest(final / n)} for n in MODEL_FILES}
    marker = final / "_MODEL_COMPLETE.json"
    marker.write_text(json.dumps({"model_hash": model_hash(final), "files": files}))
    return final


MODEL_FILES = ("config.json", "model.safetensors", "train_meta.json")


def read_train_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "train_meta.json").read_text())


def model_is_complete(path: Path) -> bool:
    """The model's marker is there and every file it lists has its recorded size and xxh3 digest (remembered per
    process while unchanged); a marker from before that list counts as incomplete, so the model is rebuilt."""
    return model_problem(path) is None


def model_problem(path: Path) -> str | None:
    """Why the model at `path` cannot be used (one line), or None when it is whole."""
    path = Path(path)
    marker = path / "_MODEL_COMPLETE.json"
    if not marker.is_file():
        return f"model at {path} is missing or incomplete (no {marker.name})"
    try:
        files = json.loads(marker.read_text()).get("files")
    except (OSError, ValueError) as e:  # the cause is part of the answer: an unreadable marker is not a missing one
        return f"model marker {marker} is unreadable ({e})"
    if not isinstance(files, dict):
        return f"model at {path} was written before SAGE recorded checksums of its files"
    for name, want in files.items():
        p = path / name
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != want.get("size") or file_digest(p) != want.get("digest"):
            return f"{p} changed since it was written (size or checksum mismatch)"
    return None


def model_hash(path: Path) -> str:
    """Content hash of the model: config, weights and tokenizer (not the training log)."""
    path = Path(path)
    from storage.hashing import file_hash

    return "-".join([file_hash(path / "config.json")[:8], file_hash(path / "model.safetensors")[:8],
                     dir_hash(path / "tokenizer")[:8]])


def load_model(path: Path, device: str = "cpu") -> HookedTransformer:
    """Load the built-in model exactly as a user would with plain transformer_lens, on `device`."""
    path = Path(path)
    if problem := model_problem(path):
        raise StoreError(f"{problem}; run `sage zoo build` (or the evaluation again) to rebuild it")
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
    with write_once(path, meta, replace=replace, kind="sae") as tmp:
        training_sae.save_inference_model(str(tmp))
        if metrics:
            (tmp / "sage_metrics.json").write_text(json.dumps(metrics, indent=1))
    return path


def load_sae(path: Path):
    from sae_lens import SAE

    verify_dir(path)  # names a missing or changed file in one line
    return SAE.load_from_disk(str(path), device="cpu")


def sae_meta(path: Path) -> dict[str, Any]:
    return read_marker(path)


def write_table(path: Path, df: pl.DataFrame) -> Path:
    """A parquet table written atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")  # one per process: two writers never share it
    try:
        df.write_parquet(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
    return path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """A directory of safetensors files (one per key), written once."""
    if is_complete(path):
        return path
    with write_once(path, meta, kind="tensors") as tmp:
        for key, t in tensors.items():
            save_file({"acts": t.contiguous()}, str(tmp / f"{key}.safetensors"))
    return path


def load_tensor(path: Path, key: str) -> torch.Tensor:
    path = Path(path)
    verify_dir(path)  # names a missing or changed file in one line
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
