"""Prompt tables and the training corpus as parquet (plain polars can read them)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from storage.atomic import StoreError, is_complete, write_once
from storage.home import SageHome


def write_prompts(home: SageHome, task: str, key: str, df: pl.DataFrame, meta: dict | None = None) -> Path:
    path = home.prompts_path(task, key)
    if not is_complete(path.parent):
        with write_once(path.parent, meta) as tmp:
            df.write_parquet(tmp / path.name)
    return path


def read_prompts(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not is_complete(path.parent):
        raise StoreError(f"prompt table {path} is missing or incomplete; regenerate it with `sage zoo build`")
    return pl.read_parquet(path)


def write_corpus(home: SageHome, key: str, df: pl.DataFrame, meta: dict | None = None) -> Path:
    d = home.corpus_dir(key)
    if not is_complete(d):
        with write_once(d, meta) as tmp:
            df.write_parquet(tmp / "corpus.parquet")
    return d / "corpus.parquet"


def read_corpus(path: str | Path) -> pl.DataFrame:
    return read_prompts(path)
