"""Content hashes of canonical content, not of serialization order (issue #27 item 5): an SAE whose cfg.json keys are
written in another order, or a ground-truth dictionary whose safetensors metadata is, keeps its hash; a changed weight
or config value does not."""

from __future__ import annotations

import hashlib
import json
import struct

import torch
from safetensors.torch import save, save_file

from storage.hashing import dir_hash, json_content_hash, safetensors_content_hash
from storage.hub_listing import files_hash
from storage.sae_hub import sae_files_hash

CFG = {"d_in": 8, "d_sae": 16, "architecture": "standard", "normalize_activations": "none",
       "metadata": {"hook_name": "blocks.0.hook_resid_pre", "model_name": "sage-test", "prepend_bos": True}}


def _reordered(value):
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    return value


def _tensors(scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(8, 16, generator=g) * scale, "W_dec": torch.randn(16, 8, generator=g),
            "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)}


def _write_sae(d, cfg: dict, tensors: dict, indent=None):
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps(cfg, indent=indent))
    save_file(tensors, str(d / "sae_weights.safetensors"))
    return d


def _with_metadata_order(data: bytes, order: list[str]) -> bytes:
    """A safetensors file's bytes with its header's metadata keys in `order` (safetensors itself writes them in a
    random order per process), and its header's tensor entries in reverse order; the data as it was."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    new = {"__metadata__": {k: meta[k] for k in order}, **{k: header[k] for k in reversed(list(header))}}
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def test_an_sae_with_its_cfg_keys_in_another_order_keeps_its_hash(tmp_path):
    a = _write_sae(tmp_path / "a", CFG, _tensors())
    b = _write_sae(tmp_path / "b", _reordered(CFG), _tensors(), indent=2)  # the same weights, byte for byte
    assert (a / "sae_weights.safetensors").read_bytes() == (b / "sae_weights.safetensors").read_bytes()
    assert (a / "cfg.json").read_bytes() != (b / "cfg.json").read_bytes()
    assert sae_files_hash(a) == sae_files_hash(b)
    assert dir_hash(a) == dir_hash(b)  # the zoo SAE's reference too


def test_a_changed_weight_or_config_value_changes_the_sae_hash(tmp_path):
    a = _write_sae(tmp_path / "a", CFG, _tensors())
    weights = _write_sae(tmp_path / "w", CFG, _tensors(scale=1.0001))
    config = _write_sae(tmp_path / "c", {**CFG, "normalize_activations": "expected_average_only_in"}, _tensors())
    nested = _write_sae(tmp_path / "n", {**CFG, "metadata": {**CFG["metadata"], "prepend_bos": False}}, _tensors())
    hashes = [sae_files_hash(d) for d in (a, weights, config, nested)]
    assert len(set(hashes)) == 4
    assert len({dir_hash(d) for d in (a, weights, config, nested)}) == 4


def test_a_dictionary_with_its_metadata_in_another_order_keeps_its_identity(tmp_path):
    meta = {"method": "das", "weights": json.dumps({"a": 1.0}), "task": "ioi", "key": "abc123"}
    data = save({"mean": torch.ones(4), "u/io/A": torch.arange(4.0), "u/io/B": torch.zeros(4)}, metadata=meta)
    parts = []
    for name, order in (("p1", ["method", "weights", "task", "key"]), ("p2", ["key", "task", "weights", "method"])):
        d = tmp_path / name
        d.mkdir()
        (d / "das.safetensors").write_bytes(_with_metadata_order(data, order))
        (d / "quality.parquet").write_bytes(b"the same table")
        parts.append(d)
    assert (parts[0] / "das.safetensors").read_bytes() != (parts[1] / "das.safetensors").read_bytes()
    assert dir_hash(parts[0]) == dir_hash(parts[1])
    # a changed vector, or a changed metadata value, is another dictionary
    changed = save({"mean": torch.ones(4), "u/io/A": torch.arange(4.0) + 1, "u/io/B": torch.zeros(4)}, metadata=meta)
    other = save({"mean": torch.ones(4), "u/io/A": torch.arange(4.0), "u/io/B": torch.zeros(4)},
                 metadata={**meta, "method": "pca"})
    for name, blob in (("p3", changed), ("p4", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "das.safetensors").write_bytes(blob)
        (tmp_path / name / "quality.parquet").write_bytes(b"the same table")
        assert dir_hash(tmp_path / name) != dir_hash(parts[0])


def test_a_file_safetensors_wrote_without_metadata_hashes_as_its_bytes(tmp_path):
    """So the hub's sha256 of an SAE's weights (what a hub listing has without a download) is their content hash."""
    p = tmp_path / "w.safetensors"
    save_file({"b": torch.zeros(3, dtype=torch.float16), "a": torch.ones(2, 5), "c": torch.arange(4)}, str(p))
    assert safetensors_content_hash(p) == hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def test_a_hub_listing_gives_the_hash_a_folder_gives(tmp_path):
    d = _write_sae(tmp_path / "a", _reordered(CFG), _tensors(), indent=1)
    cfg, weights = ((d / f).read_bytes() for f in ("cfg.json", "sae_weights.safetensors"))
    assert files_hash(json_content_hash(cfg), hashlib.sha256(weights).hexdigest()) == sae_files_hash(d)


def test_files_that_are_not_json_or_safetensors_hash_as_their_bytes(tmp_path):
    (tmp_path / "bad.json").write_bytes(b"{not json")
    (tmp_path / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)  # deeper than the parser goes
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 20)
    for name in ("bad.json", "deep.json"):
        assert json_content_hash((tmp_path / name).read_bytes()) == hashlib.sha256(
            (tmp_path / name).read_bytes()).hexdigest()[:16]
    assert safetensors_content_hash(tmp_path / "bad.safetensors") == hashlib.sha256(b"\xff" * 20).hexdigest()[:16]
    assert dir_hash(tmp_path)  # and a directory of them still hashes


def test_the_zoo_model_with_its_config_keys_or_weights_metadata_in_another_order_keeps_its_hash(tmp_path):
    from storage.zoo import model_hash

    def model(d, cfg, weights: bytes):
        (d / "tokenizer").mkdir(parents=True)
        (d / "tokenizer" / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "model.safetensors").write_bytes(weights)
        return d

    cfg = {"n_layers": 2, "d_model": 8, "act_fn": "gelu", "nested": {"x": 1, "y": [1, 2]}}
    meta = {"sage": "model", "config": json.dumps(cfg), "step": "1200"}
    data = save({"embed.W_E": torch.arange(8.0), "blocks.0.W_in": torch.ones(4)}, metadata=meta)
    a = model(tmp_path / "a", cfg, data)
    b = model(tmp_path / "b", _reordered(cfg), _with_metadata_order(data, list(reversed(list(meta)))))
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    assert model_hash(a) == model_hash(b)
    c = model(tmp_path / "c", {**cfg, "d_model": 16}, data)
    assert model_hash(c) != model_hash(a)
