from __future__ import annotations

import pytest

from storage.atomic import StoreError, is_complete, read_marker, write_once
from storage.hashing import dir_hash, stable_hash
from storage.home import SageHome


def test_write_once_is_atomic_and_marked_last(tmp_path):
    final = tmp_path / "thing"
    with pytest.raises(RuntimeError), write_once(final) as tmp:
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
    import json

    from storage.atomic import file_digest
    from storage.hashing import file_hash
    from storage.home import SageHome
    from storage.zoo import MODEL_FILES, model_hash, read_zoo_record, write_zoo_record

    h = SageHome(tmp_path)
    with write_once(h.tokenizer_dir("m"), kind="tokenizer") as tmp:
        (tmp / "tokenizer.json").write_text("{}")
    model_dir = h.model_dir("m")
    for name in MODEL_FILES:
        (model_dir / name).write_text(f"{name} bytes")
    files = {n: {"size": (model_dir / n).stat().st_size, "digest": file_digest(model_dir / n)} for n in MODEL_FILES}
    (model_dir / "_MODEL_COMPLETE.json").write_text(json.dumps({"files": files}))
    with write_once(h.dataset_dir("ioi", "k"), kind="prompts") as tmp:
        (tmp / "prompts.parquet").write_bytes(b"data")
    ds = h.prompts_path("ioi", "k")
    with write_once(h.sae_dir("m", "s1"), kind="sae") as tmp:
        (tmp / "cfg.json").write_text("{}")
    from storage.refs import CorpusRef, DatasetRef, ModelRef, TableRef, ZooRef, ZooSAERef

    m = DatasetRef(path=h.relative(ds), hash=file_hash(ds), task="ioi")
    zoo = ZooRef(model=ModelRef(path=h.relative(model_dir), hash=model_hash(model_dir)), datasets=(m,),
                 corpus=CorpusRef(path=m.path, hash=m.hash), model_eval=TableRef(path="t", hash="t"),
                 saes=(ZooSAERef(path=h.relative(h.sae_dir("m", "s1")), hash="x", name="s1"),))
    write_zoo_record(h, "m", "k1", zoo)
    assert read_zoo_record(h, "m", "k1", ["s1"]) == zoo  # the references come back typed
    assert read_zoo_record(h, "m", "k2", ["s1"]) is None  # another config or code
    assert read_zoo_record(h, "m", "k1", ["s1", "s2"]) is None  # a planned SAE is missing
    (model_dir / "model.safetensors").write_text("other weights")
    assert read_zoo_record(h, "m", "k1", ["s1"]) is None  # the model changed on disk
    (model_dir / "model.safetensors").write_text("model.safetensors bytes")
    assert read_zoo_record(h, "m", "k1", ["s1"]) is not None
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

    from sage_core.model.transformer import ModelConfig, build_model
    from storage import zoo

    h = SageHome(tmp_path)
    model = build_model(ModelConfig(name="m", d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32), len(tokenizer))
    zoo.save_tokenizer(h.tokenizer_dir("m"), tokenizer)
    zoo.save_model(h, "m", model, {})
    assert model.cfg.dtype == torch.float32  # the saved config writes dtype as a string, not into the model
    tokens = torch.tensor([[tokenizer.bos_token_id, 5, 6]])
    loaded = zoo.load_model(h.model_dir("m"))
    assert torch.allclose(model(tokens), loaded(tokens), atol=1e-6)


def test_a_model_whose_files_changed_is_not_complete_and_names_the_file(tmp_path):
    import json

    from storage.atomic import file_digest
    from storage.zoo import MODEL_FILES, model_is_complete, model_problem

    for name in MODEL_FILES:
        (tmp_path / name).write_text(f"{name} bytes")
    assert not model_is_complete(tmp_path)  # no marker yet
    (tmp_path / "_MODEL_COMPLETE.json").write_text(json.dumps({"model_hash": "x"}))
    assert "before SAGE recorded checksums" in model_problem(tmp_path)  # an old marker: rebuilt
    files = {n: {"size": (tmp_path / n).stat().st_size, "digest": file_digest(tmp_path / n)} for n in MODEL_FILES}
    (tmp_path / "_MODEL_COMPLETE.json").write_text(json.dumps({"files": files}))
    assert model_is_complete(tmp_path)
    (tmp_path / "model.safetensors").write_text("model.safetensors byteZ")  # same size, other bytes
    assert "model.safetensors changed" in model_problem(tmp_path) and not model_is_complete(tmp_path)


def test_a_failed_table_or_record_write_leaves_nothing_behind(tmp_path, monkeypatch):
    """A full disk during a zoo table or a flow record: the old file is kept and no temp file is left (issue #15
    item 12), rerun after rerun."""
    import errno
    import os
    from pathlib import Path

    import polars as pl
    import pytest

    from storage.records import write_record
    from storage.zoo import write_table

    table, record = tmp_path / "t.parquet", tmp_path / "r.json"
    write_table(table, pl.DataFrame({"a": [1]}))
    write_record(record, "k", {"a": 1})
    before = table.read_bytes(), record.read_bytes()

    def full_parquet(_df, path, *_a, **_kw):
        Path(path).write_bytes(b"PAR1 half a table")  # the disk fills midway: a partial file is there
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_text(path, *_a, **_kw):
        path.write_bytes(b'{"half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full_parquet)
    monkeypatch.setattr(Path, "write_text", full_text)
    for _ in range(2):
        with pytest.raises(OSError):
            write_table(table, pl.DataFrame({"a": [2]}))
        with pytest.raises(OSError):
            write_record(record, "k", {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "t.parquet"]
    assert (table.read_bytes(), record.read_bytes()) == before


def test_the_model_hash_is_computed_once_while_its_files_are_unchanged(tmp_path, monkeypatch):
    """Hash once per command (issue #16 item 4): the weights are read again only when a file's size or mtime moved."""
    from storage import zoo
    from storage.atomic import write_once

    model_dir = tmp_path / "model"
    with write_once(model_dir / "tokenizer", kind="tokenizer") as tmp:
        (tmp / "tokenizer.json").write_text("{}")
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights")
    reads: list[str] = []
    real = zoo.content_file_hash  # the model's files hash by their canonical content
    monkeypatch.setattr(zoo, "content_file_hash", lambda p: reads.append(p.name) or real(p))
    first = zoo.model_hash(model_dir)
    assert zoo.model_hash(model_dir) == first and reads.count("model.safetensors") == 1
    (model_dir / "model.safetensors").write_bytes(b"other weights")
    assert zoo.model_hash(model_dir) != first and reads.count("model.safetensors") == 2
