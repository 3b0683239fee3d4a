"""Activation stores: zarr v3, one array per hook, chunked along `prompt`, resumable, verifiable, xarray-readable.

Layout of one store (a zarr group):
    tokens      (prompt, position) int32   right-padded with the pad id
    length      (prompt,)          int32   real positions per prompt
    prompt_id   (prompt,)          str     coordinate, matches prompts.parquet
    role        (position,)        str     coordinate, only when positions == "roles"
    role_pos    (prompt, position) int32   token position of each role, only when positions == "roles"
    <hook>      (prompt, position, d) or (prompt, position, head, d_head)
    _progress/<chunk>.json                 checksum of every chunk file written for that chunk (attribute `checksum`)
    _COMPLETE.json                         written last: the content hash, and the size and xxh3 digest of every file
                                           (as `storage.atomic` markers have), so `storage.atomic.verify_dir` checks it

Every hook array shares one chunking along `prompt`, so "chunk i" means the same prompts everywhere; a capture writes
chunk by chunk and records each chunk after its files are on disk, so a killed capture resumes at the first chunk
not recorded, and the result is bitwise identical to an uninterrupted run.

Opening a store checks every chunk file (size, then checksum; remembered per process while the file is unchanged)
and every read re-checks the chunks it reads before zarr decodes them, so a damaged chunk is named in one line
(store, chunk, hook) instead of reaching Blosc. Resuming a capture drops the records of damaged chunks, so the
capture rewrites exactly those. A chunk's pass writes its prompt-derived files (`tokens`, `role_pos`) too, from the
prompt table the capture was given (`attach_prompts`), and computes from that table, never from the store's own copy:
what a chunk's record lists is only ever what that pass wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from storage import chunk_io
from storage.atomic import DIGEST, MARKER, StoreError
from storage.chunk_io import CHECKSUM, from_storage, quiet_zarr, to_storage
from storage.hashing import stable_hash
from storage.store_checks import StoreChecks

FORMAT_VERSION = 2
_log = logging.getLogger(__name__)
EncodedChunk = dict[str, tuple[bytes, str]]  # hook -> (bytes of its chunk file, their checksum)


class ActivationStore(StoreChecks):
    """One store on disk. Create with `create_or_resume`, fill with `write_chunk`, seal with `finalize`, read with
    `open` (which refuses incomplete, tampered or foreign stores)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._meta: dict[str, Any] | None = None  # array name -> its zarr metadata
        self._prompts: dict[str, np.ndarray] | None = None
        self._n_prompts: int | None = None

    # -- layout ----------------------------------------------------------------------------------------------------
    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        return self._group

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:  # every chunk a pass writes is a file, zeros too: its record lists it
            self._arrays[name] = self.group[name].with_config({"write_empty_chunks": True})
        return self._arrays[name]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def hooks(self) -> list[str]:
        return list(self.attrs["hooks"])

    @property
    def n_prompts(self) -> int:
        if self._n_prompts is None:  # asked for every chunk: zarr opens the array each time
            self._n_prompts = int(self.group["length"].shape[0])
        return self._n_prompts

    @property
    def chunk_prompts(self) -> int:
        return int(self.attrs["chunk_prompts"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_prompts // self.chunk_prompts)

    def chunk_range(self, i: int) -> tuple[int, int]:
        return i * self.chunk_prompts, min((i + 1) * self.chunk_prompts, self.n_prompts)

    @property
    def checksum_algorithm(self) -> str:
        """The chunk files' checksum (`xxh3_128`; stores from before format 2 have no attribute: `sha256`)."""
        return self.attrs.get("checksum", "sha256")

    # -- writing ---------------------------------------------------------------------------------------------------
    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        *,
        attrs: dict[str, Any],
        hook_shapes: dict[str, tuple[tuple[int, ...], tuple[str, ...]]],
        tokens: np.ndarray,
        lengths: np.ndarray,
        prompt_ids: list[str],
        chunk_prompts: int,
        dtype: str,
        compression: str,
        roles: list[str] | None = None,
        role_pos: np.ndarray | None = None,
    ) -> ActivationStore:
        """Create the group and its arrays, or reopen an unfinished one made by the same request.

        `hook_shapes[hook] = (trailing shape, trailing dim names)`. A store at `path` from another request (model,
        dataset, hooks, ...) is refused rather than overwritten.
        """
        path = Path(path)
        identity = {k: attrs[k] for k in ("model_hash", "dataset_hash", "request_hash")}
        if (path / "zarr.json").exists():
            store = cls(path)
            try:
                existing = store.attrs
            except Exception as exc:  # unreadable metadata: nothing trustworthy to resume
                raise StoreError(f"{path} exists but is not a readable store ({exc}); delete it and rerun") from exc
            mine = {k: existing.get(k) for k in identity}
            if mine != identity:
                raise StoreError(f"{path} holds activations of another request {mine}; refusing to mix them")
            store._check_metadata()
            store.attach_prompts(tokens, lengths, role_pos)
            damaged = store._damaged_chunks()
            if damaged:
                _log.warning(f"{path}: recapturing what changed since capture: {'; '.join(damaged.values())}")
                store.drop_damaged_chunks()
            if not (path / MARKER).is_file():  # unchecked by any marker: rewrite the prompt-derived arrays
                with quiet_zarr():
                    store.group["length"][:] = lengths
                    store.group["prompt_id"][:] = np.asarray(prompt_ids, dtype=object)
                    if roles:
                        store.group["role"][:] = np.asarray(roles, dtype=object)
            return store
        n, width = tokens.shape
        group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={  # one write, not one per key
            **attrs, "hooks": list(hook_shapes), "dtype": dtype, "chunk_prompts": chunk_prompts, "compression":
            compression, "format_version": FORMAT_VERSION, "checksum": CHECKSUM,
            "positions_kind": "roles" if roles else "all"})
        comp = chunk_io.compressors(compression)
        small = {"compressors": comp, "config": {"write_empty_chunks": True}}
        group.create_array("tokens", shape=(n, width), chunks=(chunk_prompts, width), dtype="int32",
                           dimension_names=("prompt", "token_position"), fill_value=0, **small)[:] = tokens
        group.create_array("length", shape=(n,), chunks=(max(n, 1),), dtype="int32", dimension_names=("prompt",),
                           fill_value=0, **small)[:] = lengths
        group.create_array("prompt_id", shape=(n,), chunks=(max(n, 1),), dtype=str,
                           dimension_names=("prompt",))[:] = np.asarray(prompt_ids, dtype=object)
        n_pos = width
        if roles:
            n_pos = len(roles)
            group.create_array("role", shape=(n_pos,), chunks=(n_pos,), dtype=str,
                               dimension_names=("position",))[:] = np.asarray(roles, dtype=object)
            group.create_array("role_pos", shape=(n, n_pos), chunks=(chunk_prompts, n_pos), dtype="int32",
                               dimension_names=("prompt", "position"), fill_value=0, **small)[:] = role_pos
        for hook, (trailing, names) in hook_shapes.items():
            group.create_array(
                hook, shape=(n, n_pos, *trailing), chunks=(chunk_prompts, n_pos, *trailing),
                dtype=chunk_io.storage_dtype(dtype), dimension_names=("prompt", "position", *names), fill_value=0,
                attributes={"coordinates": "prompt_id", "sage_dtype": dtype}, **small)
        store = cls(path)
        store.attach_prompts(tokens, lengths, role_pos)
        return store

    def attach_prompts(self, tokens: np.ndarray, lengths: np.ndarray, role_pos: np.ndarray | None = None) -> None:
        """The prompt table's arrays (as `create_or_resume` takes them) that capturing computes from and writes."""
        want = {"tokens": self.group["tokens"].shape, "length": self.group["length"].shape}
        got = {"tokens": np.shape(tokens), "length": np.shape(lengths)}
        if "role_pos" in self.group:
            want["role_pos"], got["role_pos"] = self.group["role_pos"].shape, np.shape(role_pos)
        if got != want:
            raise StoreError(f"{self.path} holds prompts of shapes {want}, the prompt table gives {got}; "
                             f"delete the store and rerun the capture")
        self._prompts = {"tokens": np.asarray(tokens, dtype=np.int32), "length": np.asarray(lengths, dtype=np.int32)}
        if "role_pos" in self.group:
            self._prompts["role_pos"] = np.asarray(role_pos, dtype=np.int32)

    def prompt_chunk(self, i: int) -> dict[str, np.ndarray]:
        """Chunk `i`'s rows of the attached prompt table: `tokens`, `length` and (with roles) `role_pos`."""
        if self._prompts is None:
            raise StoreError(f"{self.path}: capturing needs the prompt table; open the store with "
                             f"`storage.capture.open_or_create_store` (or `attach_prompts`)")
        start, stop = self.chunk_range(i)
        return {name: a[start:stop] for name, a in self._prompts.items()}

    def _prompt_files(self, i: int) -> dict[str, np.ndarray]:
        """The per-chunk prompt-derived arrays a chunk's pass writes (everything of `prompt_chunk` but `length`)."""
        return {k: v for k, v in self.prompt_chunk(i).items() if k != "length"}

    def write_chunk(self, i: int, arrays: dict[str, np.ndarray], writers: int = 1, via_zarr: bool = False) -> None:
        """Write chunk `i` of every hook (float32 in, stored dtype on disk), then record it as done. Each file is
        encoded, hashed and written by one task, on as many threads as cores (at least 2, at least `writers`): Blosc,
        the hash and the write release the GIL, so one file's encoding overlaps another's write. Uncompressed files are
        written from `arrays` themselves: do not refill them before this returns. `via_zarr`: through zarr's own codec
        pipeline instead (what `benchmarks.scale_device.store_vs_dd` compares, and what codec chains SAGE does not
        encode itself take)."""
        data = self._chunk_data(i, arrays)
        encoders = {name: chunk_io.chunk_encoder(self._array(name)) for name in data}
        if via_zarr or not all(encoders.values()):
            start, stop = self.chunk_range(i)

            async def write_all() -> None:
                await asyncio.gather(*[self._array(n).async_array.setitem(slice(start, stop), a) for n, a in data.items()])

            with self._write_errors(i):
                sync(write_all())
                self._record(i)
            return
        files, algorithm = self._chunk_files(i), self.checksum_algorithm

        def write_one(name: str) -> tuple[str, str]:
            payload = encoders[name](chunk_io.pad_chunk(data[name], self._array(name).chunks))
            checksum = chunk_io.DIGESTS[algorithm](payload)
            chunk_io.write_file(self.path / files[name], payload, (algorithm, checksum))
            return name, checksum

        with self._write_errors(i):
            with ThreadPoolExecutor(max_workers=min(len(data), max(2, writers, os.cpu_count() or 1))) as pool:
                checksums = dict(pool.map(write_one, data))
            self._record(i, checksums)

    def _chunk_data(self, i: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every array's rows of chunk `i` in the stored dtype: the hooks' from `arrays`, the prompt files'."""
        start, stop = self.chunk_range(i)
        for hook in self.hooks:
            if arrays[hook].shape[0] != stop - start:
                raise StoreError(f"chunk {i} of {hook}: got {arrays[hook].shape[0]} prompts, expected {stop - start}")
        dtype = self.attrs["dtype"]
        return {**{h: to_storage(arrays[h], dtype) for h in self.hooks}, **self._prompt_files(i)}

    def encode_chunk(self, i: int, arrays: dict[str, np.ndarray]) -> EncodedChunk | None:
        """The CPU half of writing chunk `i`: each file's bytes (never a view of `arrays`, which the caller refills
        while they are written) with their checksums. None when a codec chain is not one SAGE encodes itself
        (`write_chunk` then uses zarr's pipeline)."""
        data = self._chunk_data(i, arrays)
        encoders = {name: chunk_io.chunk_encoder(self._array(name)) for name in data}
        if not all(encoders.values()):
            return None
        digest = chunk_io.DIGESTS[self.checksum_algorithm]

        def encode_one(name: str) -> tuple[str, tuple[bytes, str]]:
            payload = bytes(encoders[name](chunk_io.pad_chunk(data[name], self._array(name).chunks)))
            return name, (payload, digest(payload))

        # every array at once: Blosc and the hash release the GIL
        with ThreadPoolExecutor(max_workers=min(len(data), max(2, os.cpu_count() or 1))) as pool:
            return dict(pool.map(encode_one, data))

    def write_encoded(self, i: int, encoded: EncodedChunk, writers: int = 1) -> None:
        """The I/O half: write the files of `encode_chunk(i, ...)` (on `writers` threads), then record chunk `i` as
        done."""
        files, algorithm = self._chunk_files(i), self.checksum_algorithm

        def write_one(h: str) -> None:
            chunk_io.write_file(self.path / files[h], encoded[h][0], (algorithm, encoded[h][1]))

        with self._write_errors(i):
            if writers > 1:
                with ThreadPoolExecutor(max_workers=writers) as pool:
                    list(pool.map(write_one, encoded))
            else:
                for h in encoded:
                    write_one(h)
            self._record(i, {h: checksum for h, (_, checksum) in encoded.items()})

    @contextmanager
    def _write_errors(self, i: int) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreError(
                f"could not write chunk {i} of {self.path}: {exc.strerror or exc}; fix the disk (space, permissions) "
                f"and rerun the same command: the {len(self.done_chunks())} finished chunks are kept"
            ) from exc

    def _chunk_files(self, i: int) -> dict[str, str]:
        """Relative paths of every file holding chunk `i` (of each hook and of the per-chunk metadata arrays), as each
        array's own metadata names its chunks."""
        if self._meta is None:
            names = [*self.hooks, "tokens", *(["role_pos"] if "role_pos" in self.group else [])]
            self._meta = {name: self.group[name].metadata for name in names}
        return {name: f"{name}/{m.encode_chunk_key((i, *[0] * (len(m.shape) - 1)))}" for name, m in self._meta.items()}

    def _record(self, i: int, known: dict[str, str] | None = None) -> None:
        """Record chunk `i` as done with the checksum of each of its files, every one written by this chunk's pass
        (`known`: checksums of the bytes just written; without it, zarr just wrote them and they are read back)."""
        files = self._chunk_files(i)
        if known is not None and set(known) != set(files):
            raise StoreError(f"chunk {i} of {self.path}: wrote {sorted(known)}, not every file {sorted(files)}")
        hashes = {name: known[name] if known is not None else
                  chunk_io.digest_written(self.path / rel, self.checksum_algorithm) for name, rel in files.items()}
        chunk_io.write_file(self.path / "_progress" / f"{i:06d}.json", json.dumps(hashes, sort_keys=True).encode())

    def finalize(self) -> str:
        """Check every chunk is recorded, consolidate metadata, write the marker last (with the size and digest of
        every file). Returns the content hash."""
        missing = sorted(set(range(self.n_chunks)) - self.done_chunks())
        if missing:
            raise StoreError(f"{self.path}: chunks {missing[:5]}... not captured yet; rerun the capture to finish it")
        self._verify_chunks(range(self.n_chunks))  # a chunk damaged since it was written is not sealed as whole
        with quiet_zarr():
            zarr.consolidate_metadata(str(self.path))
        content = self.content_hash()
        files = self._file_records()
        chunk_io.flush([self.path / rel for rel in files], {(self.path / rel).parent for rel in files})
        marker = {"content_hash": content, **self.attrs, "kind": "activations", "digest_algorithm": DIGEST,
                  "files": files}
        chunk_io.write_file(self.path / MARKER, json.dumps(marker, indent=1, default=str).encode(), durable=True)
        return content

    def content_hash(self) -> str:
        d = self.path / "_progress"
        records = [json.loads((d / f"{i:06d}.json").read_text()) for i in range(self.n_chunks)]
        meta = {k: v for k, v in self.attrs.items()}
        return stable_hash(meta, records)

    # -- reading ---------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, expect: dict[str, str] | None = None, verify: bool = True) -> ActivationStore:
        """Open a finished store, always checking it (size and checksum of every file: the first open in a process
        reads the store once, later ones `stat` it). Refuses an incomplete store, one whose files changed since
        capture, and one whose model/dataset/request hashes differ from `expect`.

        `verify=False` no longer skips the check (scores were once computed from a damaged store that way); it is
        accepted so that older callers keep working, with a warning."""
        if not verify:
            warnings.warn("ActivationStore.open(verify=False) no longer skips verification; drop the argument",
                          DeprecationWarning, stacklevel=2)
        store = cls(path)
        if not (store.path / MARKER).is_file():
            raise StoreError(f"{path} is not a complete activation store (capture unfinished?); rerun the capture")
        for k, v in (expect or {}).items():
            if store.attrs.get(k) != v:
                raise StoreError(f"{path} was captured with {k}={store.attrs.get(k)!r}, not {v!r}; refusing it")
        store.verify()
        return store

    def to_xarray(self):
        """The store as an `xarray.Dataset` (lazy): named dims, `prompt_id` (and `role`) coordinates.

        bfloat16 arrays appear as their raw uint16 bits here (attribute sage_dtype); `iter_chunks` and `read` decode.
        """
        import xarray as xr

        self._verify_chunks(range(self.n_chunks))
        with quiet_zarr():
            ds = xr.open_zarr(str(self.path), consolidated=True, zarr_format=3)
        if "role" in ds:
            ds = ds.set_coords("role")
        return ds

    def iter_chunks(self, hook: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """Stream one hook chunk by chunk as float32: (start, stop, array). Memory is one chunk."""
        arr = self.group[hook]
        dtype = self.attrs["dtype"]
        for i in range(self.n_chunks):
            self._verify_chunks([i], [hook])
            start, stop = self.chunk_range(i)
            yield start, stop, from_storage(arr[start:stop], dtype)

    def read(self, hook: str, prompts: slice | np.ndarray = slice(None)) -> np.ndarray:
        """One hook's prompts as float32; the chunks read are checked first (a `stat` each once checked)."""
        self._verify_chunks(self._chunks_of(prompts), [hook])
        return from_storage(self.group[hook][prompts], self.attrs["dtype"])

    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def describe(self) -> dict[str, Any]:
        a = self.attrs
        return {
            "path": str(self.path), "complete": self.is_complete(), "model": a.get("model_name"),
            "model_hash": a.get("model_hash"), "dataset_hash": a.get("dataset_hash"), "dtype": a.get("dtype"),
            "positions": a.get("positions_kind"), "n_prompts": self.n_prompts, "chunk_prompts": self.chunk_prompts,
            "chunks_done": f"{len(self.done_chunks())}/{self.n_chunks}", "bytes_on_disk": self.nbytes_on_disk(),
            "arrays": {h: {"shape": list(self.group[h].shape),
                           "dims": list(self.group[h].metadata.dimension_names or [])} for h in self.hooks},
        }
