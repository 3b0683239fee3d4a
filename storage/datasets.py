"""Prompt tables and the training corpus as parquet (plain polars can read them).

Each is a write-once directory whose marker records the table's size and checksum; a reader checks them before
parsing, and a writer that finds the directory missing, incomplete or damaged writes it again."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from storage.atomic import is_whole, read_marker, write_once
from storage.home import SageHome
from storage.integrity import read_parquet
from storage.records import file_ref
from storage.refs import CorpusRef, DatasetRef


def write_prompts(home: SageHome, task: str, key: str, df: pl.DataFrame, meta: dict | None = None) -> Path:
    path = home.prompts_path(task, key)
    if not is_whole(path.parent):
        with write_once(path.parent, meta, kind="prompts") as tmp:
            df.write_parquet(tmp / path.name)
    return path


def read_prompts(path: str | Path) -> pl.DataFrame:
    """The prompt table at `path`, checked against its directory's marker; StoreError in one line naming the file if
    it is missing, truncated or changed."""
    return read_parquet(Path(path), Path(path).parent)


def write_corpus(home: SageHome, key: str, df: pl.DataFrame, meta: dict | None = None) -> Path:
    d = home.corpus_dir(key)
    if not is_whole(d):
        with write_once(d, meta, kind="corpus") as tmp:
            df.write_parquet(tmp / "corpus.parquet")
    return d / "corpus.parquet"


def read_corpus(path: str | Path) -> pl.DataFrame:
    return read_prompts(path)


def prompts_ref(home: SageHome, task: str, key: str) -> DatasetRef:
    """The prompt table of `task` written under the stage key `key`, with what its marker says of posing the task
    on the tokenizer (skipped: why not; note: the words it dropped)."""
    path = home.prompts_path(task, key)
    posed = read_marker(path.parent).get("posed", {})
    return file_ref(home, DatasetRef, path, task=task, skipped=posed.get("skipped"), note=posed.get("note", ""))


def corpus_ref(home: SageHome, key: str) -> CorpusRef:
    return file_ref(home, CorpusRef, home.corpus_dir(key) / "corpus.parquet")
