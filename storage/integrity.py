"""Checked reads of durable files: each file is verified against its write-once directory's marker (size, then
xxh3 digest; remembered per process while the file is unchanged) before it is parsed, and a file that still fails to
parse is named in one line, never as a library traceback ("File out of specification"). A JSON record rewritten in
place (a flow record, `storage.records`) carries the digest of its own content instead, checked the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from storage.atomic import DIGEST, StoreError, json_digest, verify_file


def _unreadable(path: Path, root: Path | None, exc: BaseException) -> StoreError:
    where = root if root is not None else path.parent
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"{path} is unreadable ({first}); rerun the command: the stage that writes {where} rebuilds it")


def read_parquet(path: str | Path, root: str | Path | None = None, **kwargs: Any) -> pl.DataFrame:
    """`pl.read_parquet` of a file inside a write-once directory (`root`, default its parent), checked first."""
    path = Path(path)
    verify_file(path, root)
    try:
        return pl.read_parquet(path, **kwargs)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _unreadable(path, root and Path(root), exc) from exc


def read_json(path: str | Path, root: str | Path | None = None) -> Any:
    path = Path(path)
    verify_file(path, root)
    try:
        return json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise _unreadable(path, root and Path(root), exc) from exc


def load_safetensors(path: str | Path, root: str | Path | None = None) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a safetensors file inside a write-once directory, checked first."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    verify_file(path, root)
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 - safe_open is no dict
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, root and Path(root), exc) from exc


def rerun_fix(path: str | Path) -> str:
    return f"rerun the command: the stage that writes {path} rebuilds it"


def read_record_json(path: str | Path, fix: str | None = None) -> dict[str, Any]:
    """The {"key", "manifest"} of a record `storage.records.write_record` wrote, once its checksum (`digest`, of the
    canonical JSON of the two) matches; else a StoreError in one line naming the record and what is wrong, then `fix`
    (what to do; default: rerun the command). A record without a checksum (written before SAGE recorded one) does not
    verify either."""
    path = Path(path)
    fix = fix or rerun_fix(path)
    try:
        rec = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"{path} is unreadable ({first}); {fix}") from exc
    if not isinstance(rec, dict) or "key" not in rec or "manifest" not in rec:
        raise StoreError(f"{path} is not a SAGE record (no key and manifest); {fix}")
    if "digest" not in rec:
        raise StoreError(f"{path} was written before SAGE recorded a checksum of its records, so it cannot be "
                         f"checked; {fix}")
    if rec.get("digest_algorithm") != DIGEST:
        raise StoreError(f"{path} has a checksum of an unknown kind ({rec.get('digest_algorithm')!r}); {fix}")
    payload = {"key": rec["key"], "manifest": rec["manifest"]}
    if json_digest(payload) != rec["digest"]:
        raise StoreError(f"{path} changed since it was written (checksum mismatch); {fix}")
    return payload
