"""The zoo on disk: the built-in model (TransformerLens config dict + safetensors + HF tokenizer directory) and its
SAEs in SAELens' own layout, so plain transformer_lens and `sae_lens.SAE.load_from_disk` read them without SAGE.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
from safetensors.torch import load_file, save_file

from storage.atomic import MARKER, StoreError, file_digest, is_complete, is_whole, read_marker, verify_dir, write_once
from storage.hashing import content_file_hash, dir_hash, file_hash
from storage.home import SageHome
from storage.records import read_record, write_record
from storage.refs import ModelRef, TableRef, TokenizerRef, ZooActivationsRef, ZooRef, ZooSAERef

if TYPE_CHECKING:  # imported where a model is loaded: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer, HookedTransformerConfig


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
    # saved as a CPU model whatever device it was trained on: the files (and so the content hash) never depend on it,
    # and `load_model` moves it where it is asked to
    d["device"] = "cpu"
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
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(final / "model.safetensors"))
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


_model_hashes: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def model_hash(path: Path) -> str:
    """Content hash of the model: config, weights and tokenizer (not the training log). Remembered per process while
    every file it reads keeps its (path, size, mtime): the CLI, the flows and the records hash the weights once."""
    path = Path(path)
    files = [path / "config.json", path / "model.safetensors",
             *sorted(p for p in (path / "tokenizer").rglob("*") if p.is_file() and p.name != MARKER)]
    signature = tuple((str(p), st.st_size, st.st_mtime_ns) for p in files for st in (p.stat(),))
    with _hash_lock:
        known = _model_hashes.get(signature)
    if known is None:
        # canonical content (issue 27 item 5): a config's keys or the weights' metadata in another order keep it
        known = "-".join([content_file_hash(path / "config.json")[:8],
                          content_file_hash(path / "model.safetensors")[:8],
                          dir_hash(path / "tokenizer")[:8]])
        with _hash_lock:
            _model_hashes[signature] = known
    return known


def load_model(path: Path, device: str = "cpu") -> HookedTransformer:
    """Load the built-in model exactly as a user would with plain transformer_lens, on `device`."""
    path = Path(path)
    if problem := model_problem(path):
        raise StoreError(f"{problem}; run `sage zoo build` (or the evaluation again) to rebuild it")
    d = json.loads((path / "config.json").read_text())
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    d["dtype"] = getattr(torch, d["dtype"])
    cfg = HookedTransformerConfig(**d)
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(path / "tokenizer"), move_to_device=False)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    return model if device == "cpu" else model.to(device, print_details=False)


def instance_like(model: HookedTransformer, device: str = "cpu") -> HookedTransformer:
    """Another instance of a loaded model, built from its config and weights in memory: no hooks come with it (a
    deep copy would take the hooks attached to `model` at that moment), no file is read again."""
    from transformer_lens import HookedTransformer

    other = HookedTransformer(model.cfg, tokenizer=model.tokenizer, move_to_device=False)
    other.load_state_dict(model.state_dict())
    other.eval()
    return other if device == "cpu" else other.to(device, print_details=False)


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


def load_sae(path: Path, device: str = "cpu"):
    from sae_lens import SAE

    verify_dir(path)  # names a missing or changed file in one line
    return SAE.load_from_disk(str(path), device=device)


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


def write_zoo_record(home: SageHome, name: str, key: str, zoo: ZooRef) -> Path:
    """Record a finished zoo build: the key of its config and code, and the references of what it produced."""
    return write_record(home.zoo_record(name), key, zoo)


def read_zoo_record(home: SageHome, name: str, key: str, sae_names: list[str]) -> ZooRef | None:
    """The recorded zoo if the record is for `key` and everything it names is still whole on disk (every dataset and
    the corpus by content hash, the model by its marker and hash, every planned SAE by its marker); else None."""

    def whole(zoo: ZooRef) -> bool:
        if model_problem(home.at(zoo.model)) or model_hash(home.at(zoo.model)) != zoo.model.hash:
            return False
        for table in [*zoo.datasets, zoo.corpus]:
            p = home.at(table)
            if not p.is_file() or not is_whole(p.parent) or file_hash(p) != table.hash:
                return False
        recorded = {s.name for s in zoo.saes}
        # every planned SAE recorded and whole (a deleted marker or a changed file sends the build back to work)
        return all(s in recorded and is_whole(home.sae_dir(name, s)) for s in sae_names)

    return read_record(home.zoo_record(name), key, whole, ZooRef)


def zoo_record_problem(home: SageHome, zoo: ZooRef) -> str | None:
    """None if the zoo record of `zoo`'s model holds exactly `zoo` (what the `record-zoo` stage wrote)."""
    path = home.zoo_record(zoo_name(zoo.model))
    recorded = read_record(path, None, lambda _: True, ZooRef)
    return None if recorded == zoo else f"{path} is missing or records another build"


# -- references ------------------------------------------------------------------------------------------------------
def zoo_name(model: ModelRef) -> str:
    """The zoo directory a model lies in (zoo/<name>/model; an imported model's own config may name it otherwise)."""
    return PurePosixPath(model.path).parent.name


def find_model(home: SageHome, name: str) -> ModelRef:
    """The zoo model `name` as it is on disk; a missing or damaged one is refused in one line."""
    path = home.model_dir(name)
    if problem := model_problem(path):
        raise FileNotFoundError(f"no usable model {name!r} under {home.root} ({problem}); run `sage zoo build` first")
    return ModelRef(path=home.relative(path), hash=model_hash(path), build_key=read_train_meta(path).get("build_key"))


def find_tokenizer(home: SageHome, name: str) -> TokenizerRef:
    path = home.tokenizer_dir(name)
    verify_dir(path)  # names a missing or changed file in one line
    return TokenizerRef(path=home.relative(path), hash=dir_hash(path))


def trained_model_problem(home: SageHome, ref: ModelRef, key: str) -> str | None:
    """The zoo model `ref` names: complete, with the recorded content hash, and trained under `key`."""
    path = home.at(ref)
    if model_problem(path):
        return f"{path} is missing or incomplete"
    if model_hash(path) != ref.hash:
        return f"{path} changed since it was trained"
    theirs = read_train_meta(path).get("key")
    return None if theirs == key else f"{path} was trained by other inputs or code (key {theirs}, now {key})"


def write_zoo_table(home: SageHome, model: ModelRef, name: str, df: pl.DataFrame) -> TableRef:
    """A metrics table of the zoo `model` lies in (zoo/<name>/report/<name>.parquet)."""
    path = write_table(home.zoo_report(zoo_name(model)) / f"{name}.parquet", df)
    return TableRef(path=home.relative(path), hash=file_hash(path))


def read_zoo_table(home: SageHome, ref: TableRef) -> list[dict[str, Any]]:
    """The rows of a zoo table, read from its file and checked against the reference's hash: a number is never taken
    from a cache record, and a changed or damaged table is named in one line."""
    path = home.at(ref)
    try:
        if file_hash(path) != ref.hash:
            raise StoreError(f"{path} changed since it was written; rebuild the zoo (sage zoo build --refresh)")
        return pl.read_parquet(path).to_dicts()
    except OSError as exc:
        raise StoreError(f"cannot read {path} ({type(exc).__name__}: {exc}); rebuild the zoo (sage zoo build "
                         "--refresh)") from exc


def write_activations(home: SageHome, name: str, key: str, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> ZooActivationsRef:
    """The zoo's SAE-training activations (one safetensors file per split and hook), addressed by the stage key."""
    save_tensors(home.sae_training_acts(name, key), tensors, meta)
    return activations_ref(home, name, key)


def read_activations(home: SageHome, ref: ZooActivationsRef, split: str, hook: str) -> torch.Tensor:
    return load_tensor(home.at(ref), f"{split}.{hook}")


def zoo_sae_ref(home: SageHome, model_name: str, sae: str) -> ZooSAERef:
    path = home.sae_dir(model_name, sae)
    return ZooSAERef(path=home.relative(path), hash=dir_hash(path), name=sae)


def activations_ref(home: SageHome, name: str, key: str) -> ZooActivationsRef:
    """The SAE-training activations written under the stage key `key` (the key is their content's identity)."""
    return ZooActivationsRef(path=home.relative(home.sae_training_acts(name, key)), hash=key)


def load_zoo_sae(home: SageHome, ref: ZooSAERef, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A zoo SAE (SAELens) on `device` and its marker's metadata (spec, training time)."""
    return load_sae(home.at(ref), device), sae_meta(home.at(ref))
