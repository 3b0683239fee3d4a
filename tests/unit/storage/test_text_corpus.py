"""Reading real text for the core metrics (issue 24 item 4): a UTF-8 file, a Hugging Face dataset from a local folder
or data file, from the local hub cache offline, and the one-line errors (missing, not UTF-8, empty, offline without
a copy). Every case sets the hub switches itself: none depends on HF_HUB_OFFLINE in the environment."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import polars as pl
import pytest

from sage_core.prompts.corpus_spec import CorpusSpec
from storage import text_corpus as tc
from storage.hashing import file_hash

REVISION = "2" * 40


@pytest.fixture
def hub_off(monkeypatch, tmp_path):
    """Offline, with an empty hub cache of this test's own."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def hub_on(monkeypatch, tmp_path):
    """The switches off, but the hub out of reach (its API raises as without a network), an empty hub cache."""
    import huggingface_hub.constants as hc
    from huggingface_hub import HfApi

    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)

    def unreachable(*_a, **_k):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _rows(n: int) -> list[str]:
    return [f"Document {i} says that the keys near the cabinet are on the table." for i in range(n)]


def _cache_dataset(hub: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """`repo_id` as huggingface_hub caches a dataset repo (blobs, a snapshot linking to them, refs/main)."""
    repo = hub / f"datasets--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def _parquet(tmp_path: Path, rows: list[str], column: str = "text") -> bytes:
    p = tmp_path / "rows.parquet"
    pl.DataFrame({column: rows, "id": list(range(len(rows)))}).write_parquet(p)
    return p.read_bytes()


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# -- text files ----------------------------------------------------------------------------------------------------
def test_a_text_file_is_read_whole_in_blocks_of_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "BLOCK_CHARS", 100)
    text = "".join(f"Line {i}: the café is near the park.\n" for i in range(50))
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    src = tc.resolve(CorpusSpec.parse(f"text:{f}"))
    assert src.content == file_hash(f) and src.location == str(f.resolve())
    pieces = list(tc.read_pieces(src))
    assert len(pieces) > 1 and [p[1] for p in pieces] == [True] + [False] * (len(pieces) - 1)  # one document
    assert "".join(p[0] for p in pieces) == text


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    (b"caf\xe9 au lait\n", "not UTF-8"),
    (b"", "holds no text"),
    (b"  \n\n\t \n", "holds no text"),
])
def test_a_file_that_is_missing_not_utf8_or_empty_fails_in_one_line(tmp_path, content, words):
    f = tmp_path / "bad.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ValueError) as e:
        tc.resolve(CorpusSpec.parse(f"text:{f}"))
    msg = _one_line_error(e)
    assert words in msg and str(f) in msg


def test_a_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tc.absolute(CorpusSpec.parse("text:a.txt")).path == str(tmp_path / "a.txt")
    (tmp_path / "data").mkdir()
    assert tc.absolute(CorpusSpec.parse("hf:./data")).dataset == str(tmp_path / "data")
    assert tc.absolute(CorpusSpec.parse("hf:org/name")).dataset == "org/name"  # a hub name stays one


# -- Hugging Face datasets -----------------------------------------------------------------------------------------
def test_a_local_folder_of_data_files_is_read_row_by_row(tmp_path, hub_off):  # noqa: ARG001 - offline on purpose
    folder = tmp_path / "set"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(_parquet(tmp_path, _rows(7)))
    src = tc.resolve(CorpusSpec.parse(f"hf:{folder}"))
    assert src.revision is None and src.content
    assert list(tc.read_pieces(src)) == [(r, True) for r in _rows(7)]
    with pytest.raises(ValueError) as e:
        list(tc.read_pieces(tc.resolve(CorpusSpec.parse(f"hf:{folder}:train:body"))))
    assert "no column 'body'" in _one_line_error(e) and "text" in str(e.value)
    with pytest.raises(ValueError) as e:
        list(tc.read_pieces(tc.resolve(CorpusSpec.parse(f"hf:{folder}:nosplit"))))
    assert "nosplit" in _one_line_error(e)


def test_a_local_json_lines_file_is_one_split(tmp_path, hub_off):  # noqa: ARG001 - offline on purpose
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"content": r}) + "\n" for r in _rows(3)))
    src = tc.resolve(CorpusSpec.parse(f"hf:{f}::content"))
    assert [p for p, _ in tc.read_pieces(src)] == _rows(3)


def test_offline_a_hub_dataset_is_read_from_the_local_hub_cache(tmp_path, hub_off):
    _cache_dataset(hub_off, "sage/tiny-text", {"data/train-00000.parquet": _parquet(tmp_path, _rows(5))})
    src = tc.resolve(CorpusSpec.parse("hf:sage/tiny-text"))
    assert src.content == REVISION and Path(src.location).name == REVISION
    assert [p for p, _ in tc.read_pieces(src)] == _rows(5)


@pytest.mark.parametrize("hub", ["hub_off", "hub_on"])
def test_offline_without_a_copy_fails_in_one_line_naming_a_text_file(hub, request):
    request.getfixturevalue(hub)
    with pytest.raises(tc.Unreachable) as e:
        tc.resolve(CorpusSpec.parse("hf:NeelNanda/pile-10k"))
    msg = _one_line_error(e)
    assert "--corpus text:" in msg and "NeelNanda/pile-10k" in msg


def test_when_the_hub_is_out_of_reach_its_cached_copy_is_read(tmp_path, hub_on):
    _cache_dataset(hub_on, "sage/tiny-text", {"data/train-00000.parquet": _parquet(tmp_path, _rows(2))})
    assert tc.resolve(CorpusSpec.parse("hf:sage/tiny-text")).content == REVISION


def test_whatever_datasets_raises_is_one_line(tmp_path, hub_off):  # noqa: ARG001 - offline on purpose
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError) as e:
        list(tc.read_pieces(tc.resolve(CorpusSpec.parse(f"hf:{folder}"))))
    assert _one_line_error(e).startswith(f"--corpus hf:{folder}")


def test_online_a_hub_dataset_is_streamed_at_the_revision_the_hub_serves(monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(HfApi, "dataset_info", lambda _self, name, **_k: SimpleNamespace(sha=f"sha-of-{name}"))
    src = tc.resolve(CorpusSpec.parse("hf:NeelNanda/pile-10k"))
    assert (src.location, src.revision, src.content) == ("NeelNanda/pile-10k", "sha-of-NeelNanda/pile-10k",
                                                        "sha-of-NeelNanda/pile-10k")

    class NotFound(RepositoryNotFoundError):
        def __init__(self):
            Exception.__init__(self, "404 Client Error\nRepository Not Found")

    def missing(*_a, **_k):
        raise NotFound()

    monkeypatch.setattr(HfApi, "dataset_info", missing)
    with pytest.raises(ValueError) as e:
        tc.resolve(CorpusSpec.parse("hf:NeelNanda/pile-1O0k"))
    assert "no dataset NeelNanda/pile-1O0k on the Hugging Face hub" in _one_line_error(e)
