"""What the ledger's tests share: an SAE as a watched folder lists it, and a recorder of every file opened for writing
under a data root (what a read-only data root would refuse)."""

from __future__ import annotations

import builtins
import io
import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote

from sage_core.watch.sources import FoundSAE


def found(i: int, h: str | None = None) -> FoundSAE:
    return FoundSAE(source="dir:/inbox", sae_id=f"/inbox/sae-{i}", spec=f"/inbox/sae-{i}", model="sage-tiny",
                    hook="blocks.0.hook_resid_post", content_hash=h or f"hash-{i}")


def write_opens(monkeypatch, root) -> list[str]:
    """Every file under `root` opened for writing, by Python (open, io.open, os.open) or by SQLite (any URI but a
    read-only one may write the database, its log or its shared memory): the list it fills. The tests run as root,
    whom a read-only directory does not stop, so this is how they see what a read-only data root would refuse."""
    root = str(Path(root).resolve())
    seen: list[str] = []
    real_open, real_os_open, real_connect = builtins.open, os.open, sqlite3.connect

    def under(p) -> bool:
        return str(Path(os.fsdecode(p)).resolve()).startswith(root)

    def py_open(file, mode="r", *a, **kw):
        if isinstance(file, str | bytes | os.PathLike) and under(file) and set(mode) & set("wax+"):
            seen.append(f"open({file}, {mode})")
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            seen.append(f"os.open({path}, {flags:#o})")
        return real_os_open(path, flags, *a, **kw)

    def connect(database, *a, **kw):
        text = os.fsdecode(database)
        if under(unquote(text.removeprefix("file:").split("?")[0].removeprefix("//"))) and not (
                "mode=ro" in text and kw.get("uri")):
            seen.append(f"sqlite3.connect({text})")
        return real_connect(database, *a, **kw)

    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen
