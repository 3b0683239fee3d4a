from __future__ import annotations

import pytest

from storage.atomic import StoreError, is_complete, read_marker, write_once
from storage.hashing import dir_hash, stable_hash
from storage.home import SageHome


def test_write_once_is_atomic_and_marked_last(tmp_path):
    final = tmp_path / "thing"
    with pytest.raises(RuntimeError):
        with write_once(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert not final.exists() and not list(tmp_path.glob("thing.partial-*"))
    with write_once(final, {"k": 1}) as tmp:
        (tmp / "a.txt").write_text("whole")
    assert is_complete(final) and read_marker(final)["k"] == 1 and (final / "a.txt").read_text() == "whole"
    with write_once(final) as tmp:  # already complete: left untouched
        (tmp / "a.txt").write_text("other")
    assert (final / "a.txt").read_text() == "whole"


def test_incomplete_directory_is_never_read_as_whole(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(StoreError, match="incomplete or missing"):
        read_marker(tmp_path / "x")


def test_stable_hash_is_order_independent_and_sensitive():
    from sage_core.config import ZooConfig

    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash(ZooConfig()) == stable_hash(ZooConfig())
    assert stable_hash(ZooConfig()) != stable_hash(ZooConfig.tiny())


def test_dir_hash_tracks_content(tmp_path):
    (tmp_path / "f").write_text("1")
    h1 = dir_hash(tmp_path)
    (tmp_path / "f").write_text("2")
    assert dir_hash(tmp_path) != h1


def test_home_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_HOME", str(tmp_path))
    h = SageHome()
    assert h.root == tmp_path.resolve()
    assert h.model_dir("m") == tmp_path / "zoo" / "m" / "model"
    assert h.sae_dir("m", "s") == tmp_path / "zoo" / "m" / "saes" / "s"
    assert h.prompts_path("ioi", "abc") == tmp_path / "datasets" / "ioi" / "abc" / "prompts.parquet"


def test_zoo_record_is_trusted_only_while_everything_it_names_is_whole(tmp_path):
    from storage.hashing import file_hash
    from storage.home import SageHome
    from storage.zoo import read_zoo_record, write_zoo_record

    h = SageHome(tmp_path)
    h.model_dir("m").mkdir(parents=True)
    (h.model_dir("m") / "_MODEL_COMPLETE.json").write_text("{}")
    ds = tmp_path / "prompts.parquet"
    ds.write_bytes(b"data")
    with write_once(h.sae_dir("m", "s1"), kind="sae") as tmp:
        (tmp / "cfg.json").write_text("{}")
    m = {"path": str(ds), "hash": file_hash(ds)}
    write_zoo_record(h, "m", "k1", {"datasets": [m], "corpus": m})
    assert read_zoo_record(h, "m", "k1", ["s1"]) is not None
    assert read_zoo_record(h, "m", "k2", ["s1"]) is None  # another config or code
    assert read_zoo_record(h, "m", "k1", ["s1", "s2"]) is None  # a planned SAE is missing
    ds.write_bytes(b"changed")
    assert read_zoo_record(h, "m", "k1", ["s1"]) is None  # a dataset changed on disk


def test_flow_record_is_trusted_only_for_its_key_while_its_dirs_are_complete(tmp_path):
    from storage.atomic import MARKER
    from storage.records import read_record, write_record

    part = tmp_path / "parts" / "p1"
    with write_once(part) as tmp:
        (tmp / "x.json").write_text("{}")
    whole_marker = (part / MARKER).read_text()
    rec = tmp_path / "records" / "k1.json"
    manifest = {"path": str(part), "parts": [{"path": str(part), "hash": "h"}]}
    from storage.records import all_complete

    dirs = lambda m: all_complete([m["path"], *(p["path"] for p in m["parts"])])  # noqa: E731
    assert read_record(rec, "k1", dirs) is None  # nothing recorded yet
    write_record(rec, "k1", manifest)
    assert read_record(rec, "k1", dirs) == manifest
    assert not list(rec.parent.glob("*.partial"))
    assert read_record(rec, "k2", dirs) is None  # another key: other inputs or code
    (part / MARKER).unlink()
    assert read_record(rec, "k1", dirs) is None  # a part it names is no longer whole
    (part / MARKER).write_text(whole_marker)
    rec.write_text('{"key": "k1", "manif')
    assert read_record(rec, "k1", dirs) is None  # a torn or edited record is ignored, not trusted


def test_saving_a_model_leaves_the_model_in_memory_usable(tmp_path, tokenizer):
    import torch

    from sage_core.model import ModelConfig, build_model
    from storage import zoo

    h = SageHome(tmp_path)
    model = build_model(ModelConfig(name="m", d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32), len(tokenizer))
    zoo.save_tokenizer(h.tokenizer_dir("m"), tokenizer)
    zoo.save_model(h, "m", model, {})
    assert model.cfg.dtype == torch.float32  # the saved config writes dtype as a string, not into the model
    tokens = torch.tensor([[tokenizer.bos_token_id, 5, 6]])
    loaded = zoo.load_model(h.model_dir("m"))
    assert torch.allclose(model(tokens), loaded(tokens), atol=1e-6)
