"""Real text for the core metrics (`--corpus text:PATH` / `hf:DATASET[:SPLIT[:COLUMN]]`): found, with what identifies
its content (a file's hash, a dataset's revision), read piece by piece, and the packed sequences written in the corpus
layout (`storage.datasets`: datasets/corpus/<key>/corpus.parquet, split "heldout").

Every failure is one line that says what to do; whatever `datasets` or the hub raise is wrapped. Offline (the
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE switches, or a hub out of reach), a hub dataset is read from its copy in the
local Hugging Face cache, or failing that from a corpus SAGE already prepared from it; else the error names
`--corpus text:FILE`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from sage_core.prompts.corpus_spec import CorpusSpec
from storage.atomic import cached_marker, is_whole
from storage.datasets import corpus_ref, write_corpus
from storage.hashing import HASH_LEN, dir_hash, file_hash
from storage.home import SageHome
from storage.refs import CorpusRef, ModelRef

BLOCK_CHARS = 1 << 20  # a text file is read in blocks of whole lines of about this many characters
DATA_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text",
                 ".arrow": "arrow"}
TRUE = {"1", "on", "yes", "true"}


class Unreachable(ValueError):
    """A hub dataset that cannot be read here: offline (or the hub out of reach) and no local copy."""


class TextSource(BaseModel):
    """A spec made concrete: where its text is read from and what identifies that text."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: CorpusSpec
    location: str  # the file; or what `datasets.load_dataset` is given: a hub name, a local folder or data file
    revision: str | None = None  # the hub commit streamed (None: a local copy)
    content: str  # the file's or local data's hash, or the dataset's revision


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def absolute(spec: CorpusSpec) -> CorpusSpec:
    """The spec with a local path made absolute (a flow's tasks may run in another directory than the command)."""
    if spec.kind == "text":
        return spec.model_copy(update={"path": str(Path(spec.path).expanduser().resolve())})
    if spec.kind == "hf" and is_local(spec.dataset):
        return spec.model_copy(update={"dataset": str(Path(spec.dataset).expanduser().resolve())})
    return spec


def is_local(dataset: str) -> bool:
    """A dataset given as a local folder or data file, not a hub name."""
    return dataset.startswith(("/", ".", "~")) or Path(dataset).expanduser().exists()


def offline() -> bool:
    """The user switched the hub off (read now: a test or a caller may set it after the libraries were imported)."""
    return any(os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# -- finding the text ----------------------------------------------------------------------------------------------
def resolve(spec: CorpusSpec) -> TextSource:
    """Where the text of a text: or hf: spec is and what identifies it; ValueError (Unreachable offline) in one line."""
    spec = absolute(spec)
    if spec.kind == "text":
        return TextSource(spec=spec, location=spec.path, content=check_text_file(Path(spec.path)))
    if spec.kind != "hf":
        raise ValueError(f"{spec} is not read from outside: it is the built-in corpus")
    if is_local(spec.dataset):
        p = Path(spec.dataset)
        if not p.exists():
            raise ValueError(f"--corpus {spec}: no folder or data file {p}")
        return TextSource(spec=spec, location=str(p), content=dir_hash(p) if p.is_dir() else file_hash(p))
    revision = None if offline() else _hub_revision(spec)
    if revision is not None:
        return TextSource(spec=spec, location=spec.dataset, revision=revision, content=revision)
    snapshot = _cached_snapshot(spec.dataset)
    if snapshot is None:
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hugging Face hub is out of reach"
        raise Unreachable(f"--corpus {spec}: {why} and dataset {spec.dataset} has no copy in the local Hugging Face "
                          f"cache; give the text as --corpus text:FILE (a UTF-8 file)")
    return TextSource(spec=spec, location=str(snapshot), content=snapshot.name)


def check_text_file(path: Path) -> str:
    """The file's content hash, once it is known to be non-empty UTF-8 text; else ValueError in one line."""
    if not path.is_file():
        raise ValueError(f"--corpus text:{path}: no such file; give a UTF-8 text file")
    h = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    seen_text, offset = False, 0
    try:
        with open(path, "rb") as f:
            while block := f.read(BLOCK_CHARS):
                h.update(block)
                seen_text = bool(decoder.decode(block).strip()) or seen_text
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise ValueError(f"--corpus text:{path}: not UTF-8 text (byte {offset + exc.start}); convert it to UTF-8 "
                         f"(e.g. iconv -t UTF-8)") from None
    except OSError as exc:
        raise ValueError(f"--corpus text:{path}: cannot read it ({exc.strerror or exc})") from None
    if not seen_text:
        raise ValueError(f"--corpus text:{path}: the file holds no text; give a file with some")
    return h.hexdigest()[:HASH_LEN]


def _hub_revision(spec: CorpusSpec) -> str | None:
    """The commit the hub serves for the dataset; None when the hub is out of reach (no network, a timeout)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        return HfApi().dataset_info(spec.dataset, timeout=15).sha
    except GatedRepoError:
        raise ValueError(f"--corpus {spec}: dataset {spec.dataset} is gated; accept its terms on the hub and log in "
                         f"(hf auth login), or give the text as --corpus text:FILE") from None
    except RepositoryNotFoundError:
        raise ValueError(f"--corpus {spec}: no dataset {spec.dataset} on the Hugging Face hub (a typo? a private "
                         f"one needs hf auth login)") from None
    except HfHubHTTPError as exc:
        raise ValueError(f"--corpus {spec}: the hub refused dataset {spec.dataset}: {_one_line(exc)}") from None
    except Exception:  # noqa: BLE001 - any transport failure means the same here: the hub is out of reach
        return None


def _cached_snapshot(dataset: str) -> Path | None:
    """The dataset's folder in the local Hugging Face hub cache (as `huggingface-cli download --repo-type dataset`
    leaves it), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(dataset, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or a cache it cannot read: either way there is no copy
        return None


# -- reading the text ----------------------------------------------------------------------------------------------
def read_pieces(src: TextSource) -> Iterator[tuple[str, bool]]:
    """The text in order, as (piece, starts a new document). A file is one document, in blocks of whole lines; a
    dataset is one document per row. Read only as far as the caller iterates (a dataset is streamed)."""
    if src.spec.kind == "text":
        yield from _file_pieces(Path(src.location))
    else:
        yield from _dataset_pieces(src)


def _file_pieces(path: Path) -> Iterator[tuple[str, bool]]:
    first, block, size = True, [], 0
    with open(path, encoding="utf-8") as f:  # checked as UTF-8 when resolved
        for line in f:
            block.append(line)
            size += len(line)
            if size >= BLOCK_CHARS:
                yield "".join(block), first
                first, block, size = False, [], 0
    if block:
        yield "".join(block), first


def _open_dataset(src: TextSource):
    import datasets

    spec, where = src.spec, Path(src.location)
    if src.revision is None and where.is_file():  # one local data file: its rows are the "train" split
        builder = DATA_BUILDERS.get(where.suffix.lower())
        if builder is None:
            raise ValueError(f"--corpus {spec}: cannot read {where.name} (give a folder, or a "
                             f"{', '.join(DATA_BUILDERS)} file)")
        return datasets.load_dataset(builder, data_files=str(where), split="train", streaming=True)
    return datasets.load_dataset(src.location, split=spec.split, streaming=True, revision=src.revision)


def _dataset_pieces(src: TextSource) -> Iterator[tuple[str, bool]]:
    spec = src.spec
    try:
        rows = iter(_open_dataset(src))
    except ValueError as exc:
        raise ValueError(_one_line(exc) if str(exc).startswith("--corpus") else
                         f"--corpus {spec}: cannot read split {spec.split!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever `datasets` raises becomes one line
        raise ValueError(f"--corpus {spec}: cannot read split {spec.split!r}: {_one_line(exc)}") from None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - a broken file or connection mid-stream
            raise ValueError(f"--corpus {spec}: reading stopped: {_one_line(exc)}") from None
        if spec.column not in row:
            raise ValueError(f"--corpus {spec}: no column {spec.column!r} (it has {', '.join(map(str, row))}); name "
                             f"one as hf:{spec.dataset}:{spec.split}:COLUMN")
        text = row[spec.column]
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"--corpus {spec}: column {spec.column!r} holds {type(text).__name__}, not text; name "
                             f"another as hf:{spec.dataset}:{spec.split}:COLUMN")
        yield text, True


# -- the model's side, and the prepared corpus --------------------------------------------------------------------
def model_context(home: SageHome, model: ModelRef) -> int:
    """The model's context length (n_ctx of its saved config)."""
    return int(json.loads((home.at(model) / "config.json").read_text())["n_ctx"])


def write_packed(home: SageHome, key: str, texts: list[str], sequences: list[list[int]],
                 meta: dict[str, Any]) -> CorpusRef:
    """The packed sequences as a corpus table (every row held out: the core metrics read them all)."""
    df = pl.DataFrame({"text": texts, "tokens": sequences, "split": ["heldout"] * len(sequences)},
                      schema={"text": pl.String, "tokens": pl.List(pl.Int32), "split": pl.String})
    write_corpus(home, key, df, meta=meta)
    return corpus_ref(home, key)


def find_prepared(home: SageHome, same: dict[str, Any]) -> tuple[CorpusRef, dict[str, Any]] | None:
    """The newest whole corpus SAGE prepared whose recorded `plan` has every item of `same` (a spec read before,
    when its source cannot be reached now), with its plan; None if there is none."""
    found = []
    for d in sorted((home.root / "datasets" / "corpus").glob("*")):
        m = cached_marker(d) or {}
        plan = m.get("plan")
        if isinstance(plan, dict) and all(plan.get(k) == v for k, v in same.items()) and is_whole(d):
            found.append((m.get("written_at", 0), d.name, plan))
    if not found:
        return None
    _, key, plan = max(found, key=lambda x: (x[0], x[1]))
    return corpus_ref(home, key), plan


def check_readable(home: SageHome, spec: CorpusSpec) -> None:
    """Before any work (the CLI): the text of a text: or hf: spec can be read, or was prepared here before; else the
    one-line error `resolve` gives."""
    if not spec.real_text:
        return
    try:
        resolve(spec)
    except Unreachable:
        if find_prepared(home, {"spec": absolute(spec).model_dump(mode="json")}) is None:
            raise
