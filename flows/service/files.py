"""The service's own files: secrets readable by their owner only, and where another user is shut out."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:  # readable by its owner only, never for an instant by others
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def closed_dir(path: Path) -> Path | None:
    """The first directory on the way to `path` (itself included) that other users cannot enter; None if all let
    them through."""
    path = Path(path)
    for p in [*reversed(path.parents), *([path] if path.is_dir() else [])]:
        if not p.stat().st_mode & 0o001:
            return p
    return None
