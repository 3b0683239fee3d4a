"""Checking an activation store against its own records: is it finished and whole, which chunk file changed since it
was written, and forgetting damaged chunks so a resumed capture rewrites exactly those.

`StoreChecks` is the half of `storage.activations.ActivationStore` that reads records and never writes an array."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from storage import chunk_io
from storage.atomic import DIGEST, MARKER, StoreError, cached_marker, file_digest, verify_dir

RECAPTURE = "rerun the capture (e.g. `sage capture`, or the command that captured it): it rewrites damaged chunks"


def no_record(i: int, rec: Path, exc: BaseException | None) -> str:
    """One line: chunk `i`'s record `rec` cannot be read, and why (the OS's or the JSON parser's words)."""
    why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc).splitlines()[0] if exc else "unknown"
    return f"chunk {i} has no readable record ({rec.name}: {why})"


class StoreChecks:
    """Verification of a store at `self.path` (the store class provides its layout: chunks, files, content hash)."""

    path: Path

    def is_complete(self) -> bool:
        """Finished and whole: a marker listing its files, every one unchanged (a marker from before that list is
        finished again, which re-checks every chunk and rewrites the marker; a damaged chunk is recaptured by resuming,
        see `create_or_resume`). Checks are remembered per process while the files are unchanged."""
        return self.is_whole()

    def _marker(self) -> dict[str, Any]:
        return cached_marker(self.path) or {}

    def is_whole(self) -> bool:
        """Complete and every file unchanged since capture."""
        if not isinstance(self._marker().get("files"), dict):
            return False
        try:
            self.verify()
        except StoreError:
            return False
        return True

    def problem(self) -> str | None:
        """Why this store is not finished and whole (one line naming the file at fault), or None."""
        if not self.path.is_dir():
            return f"{self.path} is missing"
        if not isinstance(self._marker().get("files"), dict):
            return f"{self.path} is unfinished (no marker listing its files)"
        try:
            self.verify()
        except StoreError as exc:
            return str(exc).split("; ")[0]
        return None

    def done_chunks(self) -> set[int]:
        d = self.path / "_progress"
        return {int(p.stem) for p in d.glob("*.json")} if d.is_dir() else set()

    def verify(self) -> None:
        """Every chunk file against its record (size first when the marker lists sizes), the records against the
        marker, and every other file the marker lists. Raises StoreError in one line naming the store and chunk."""
        self._verify_chunks(range(self.n_chunks))
        marker = self._marker()
        if marker.get("content_hash") != self.content_hash():
            raise StoreError(f"{self.path} is corrupt: its records do not match its marker; {RECAPTURE}")
        if isinstance(marker.get("files"), dict):
            try:
                verify_dir(self.path)  # the chunks passed above: what fails here is metadata, not rewritten by resuming
            except StoreError as exc:
                raise StoreError(f"{self.path} is corrupt ({str(exc).split('; ')[0]}); delete the store and rerun "
                                 f"the capture") from exc

    def _file_records(self) -> dict[str, dict[str, Any]]:
        """Size and xxh3 digest of every file of the store (chunk digests come from their records when those are
        xxh3, so finalizing does not read the store again)."""
        known: dict[str, str] = {}
        if self.checksum_algorithm == DIGEST:
            for i in range(self.n_chunks):
                rec = self._chunk_record(i)
                known.update({rel: rec[name] for name, rel in self._chunk_files(i).items()})
        found = []  # os.walk: pathlib's rglob took a tenth of a 256 MiB store's seal
        for root, _, names in os.walk(self.path):
            found += [Path(root, name) for name in names if not name.startswith(".")]
        out = {}
        for p in sorted(found):
            rel = p.relative_to(self.path).as_posix()
            if rel != MARKER and p.is_file():
                st = p.stat()
                out[rel] = {"size": st.st_size, "digest": known.get(rel) or file_digest(p, st)}
        return out

    def _chunk_record(self, i: int) -> dict[str, str]:
        rec = self.path / "_progress" / f"{i:06d}.json"
        try:
            return json.loads(rec.read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path} is corrupt: {no_record(i, rec, exc)}; {RECAPTURE}") from exc

    def _chunk_problem(self, i: int, names: list[str] | None = None) -> str | None:
        """Why chunk `i` (of `names`, default every array) cannot be trusted, or None."""
        try:
            want = self._chunk_record(i)
        except StoreError as exc:
            return no_record(i, self.path / "_progress" / f"{i:06d}.json", exc.__cause__)
        sizes = self._marker().get("files")
        algorithm = self.checksum_algorithm
        for name, rel in self._chunk_files(i).items():
            if names is not None and name not in names:
                continue
            p = self.path / rel
            try:
                st = p.stat()
            except FileNotFoundError:
                return f"chunk {i} of {name} is missing ({rel})"
            if isinstance(sizes, dict) and rel in sizes and sizes[rel].get("size") != st.st_size:
                return f"chunk {i} of {name} was truncated or modified ({rel}: {st.st_size} bytes, not " \
                       f"{sizes[rel].get('size')})"
            got = file_digest(p, st) if algorithm == DIGEST else chunk_io.digest_of(p, chunk_io.DIGESTS[algorithm])
            if got != want.get(name):
                return f"chunk {i} of {name} was truncated or modified ({rel}: checksum mismatch)"
        return None

    def _verify_chunks(self, chunks, names: list[str] | None = None) -> None:
        for i in chunks:
            problem = self._chunk_problem(i, names)
            if problem:
                raise StoreError(f"{self.path} is corrupt: {problem}; {RECAPTURE}")

    def _check_metadata(self) -> None:
        """The files of a sealed store other than chunks and their records (resuming cannot rewrite them)."""
        files = self._marker().get("files")
        if not isinstance(files, dict):
            return
        rewritable = {rel for i in range(self.n_chunks) for rel in self._chunk_files(i).values()}
        for rel, want in files.items():
            if rel in rewritable or rel.startswith("_progress/"):
                continue
            p = self.path / rel
            if not p.is_file() or p.stat().st_size != want.get("size") or file_digest(p) != want.get("digest"):
                raise StoreError(f"{self.path} is corrupt ({rel} changed since capture); delete the store and rerun "
                                 f"the capture")

    def drop_damaged_chunks(self) -> list[int]:
        """Forget every recorded chunk whose files changed since they were written (and the marker, if any was), so
        resuming the capture rewrites exactly those chunks. Returns their indices."""
        bad = sorted(self._damaged_chunks())
        if bad:
            (self.path / MARKER).unlink(missing_ok=True)
            for i in bad:
                (self.path / "_progress" / f"{i:06d}.json").unlink(missing_ok=True)
        return bad

    def _damaged_chunks(self) -> dict[int, str]:
        """Each recorded chunk whose files changed since they were written, with what is wrong (naming the file)."""
        problems = {i: self._chunk_problem(i) for i in sorted(self.done_chunks())}
        return {i: p for i, p in problems.items() if p}

    def _chunks_of(self, prompts: slice | np.ndarray) -> range | np.ndarray:
        """The chunks a read of `prompts` (a slice, indices or a mask) touches: those checked before it."""
        if isinstance(prompts, slice):
            idx = range(*prompts.indices(self.n_prompts))
            if len(idx) == 0:
                return range(0)
            lo, hi = min(idx[0], idx[-1]), max(idx[0], idx[-1])
            return range(lo // self.chunk_prompts, hi // self.chunk_prompts + 1)
        a = np.asarray(prompts)
        if a.dtype == bool:
            a = np.flatnonzero(a)
        return np.unique((a.astype(np.int64) % max(self.n_prompts, 1)) // self.chunk_prompts)
