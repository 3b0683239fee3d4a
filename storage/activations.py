"""Activation stores: zarr v3, one array per hook, chunked along `prompt`, resumable, verifiable, xarray-readable.

Layout of one store (a zarr group):
    tokens      (prompt, position) int32   right-padded with the pad id
    length      (prompt,)          int32   real positions per prompt
    prompt_id   (prompt,)          str     coordinate, matches prompts.parquet
    role        (position,)        str     coordinate, only when positions == "roles"
    role_pos    (prompt, position) int32   token position of each role, only when positions == "roles"
    <hook>      (prompt, position, d) or (prompt, position, head, d_head)
    _progress/<chunk>.json                 checksum of every chunk file written for that chunk (attribute `checksum`)
    _COMPLETE.json                         written last: a store without it is never read as whole

Every hook array shares one chunking along `prompt`, so "chunk i" means the same prompts everywhere; a capture writes
chunk by chunk and records each chunk after its files are on disk, so a killed capture resumes at the first chunk
not recorded, and the result is bitwise identical to an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec
from zarr.codecs.bytes import Endian
from zarr.core.sync import sync

from storage.atomic import MARKER, StoreError
from storage.hashing import stable_hash

FORMAT_VERSION = 2
EncodedChunk = dict[str, tuple[bytes, str]]  # hook -> (bytes of its chunk file, their checksum)
# Per-file checksums: xxh3-128 hashes at ~9 GB/s here against sha256's 1.5 GB/s, which was a fifth of a chunk's write
# time. They guard against truncation and accidental change, not forgery. Stores written before format 2 (no
# `checksum` attribute) keep their sha256 records.
CHECKSUM = "xxh3_128"
_DIGESTS: dict[str, Callable[[bytes], str]] = {
    "xxh3_128": xxhash.xxh3_128_hexdigest,
    "sha256": lambda b: hashlib.sha256(b).hexdigest()[:32],
}
_META_ARRAYS = ("tokens", "length", "prompt_id", "role", "role_pos")


def _compressors(compression: str):
    if compression == "none":
        return None
    return [BloscCodec(cname=compression, clevel=3 if compression == "zstd" else 5, shuffle="shuffle")]


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the stored representation (bfloat16 is kept as its raw 16 bits, with round-to-nearest-even)."""
    if dtype == "float32":
        return x.astype(np.float32, copy=False)
    if dtype == "float16":
        return x.astype(np.float16)
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32, copy=False)


def _storage_dtype(dtype: str) -> str:
    return {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}[dtype]


class ActivationStore:
    """One store on disk. Create with `create_or_resume`, fill with `write_chunk`, seal with `finalize`, read with
    `open` (which refuses incomplete, tampered or foreign stores)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}

    # -- layout ----------------------------------------------------------------------------------------------------
    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        return self._group

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def hooks(self) -> list[str]:
        return list(self.attrs["hooks"])

    @property
    def n_prompts(self) -> int:
        return int(self.group["length"].shape[0])

    @property
    def chunk_prompts(self) -> int:
        return int(self.attrs["chunk_prompts"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_prompts // self.chunk_prompts)

    def chunk_range(self, i: int) -> tuple[int, int]:
        return i * self.chunk_prompts, min((i + 1) * self.chunk_prompts, self.n_prompts)

    @property
    def checksum(self) -> Callable[[bytes], str]:
        return _DIGESTS[self.attrs.get("checksum", "sha256")]

    def is_complete(self) -> bool:
        return (self.path / MARKER).is_file()

    def done_chunks(self) -> set[int]:
        d = self.path / "_progress"
        return {int(p.stem) for p in d.glob("*.json")} if d.is_dir() else set()

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
            return store
        n, width = tokens.shape
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.attrs.update({**attrs, "hooks": list(hook_shapes), "dtype": dtype, "chunk_prompts": chunk_prompts,
                            "compression": compression, "format_version": FORMAT_VERSION, "checksum": CHECKSUM,
                            "positions_kind": "roles" if roles else "all"})
        comp = _compressors(compression)
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
                dtype=_storage_dtype(dtype), dimension_names=("prompt", "position", *names), fill_value=0,
                attributes={"coordinates": "prompt_id", "sage_dtype": dtype}, **small)
        return cls(path)

    def write_chunk(self, i: int, arrays: dict[str, np.ndarray], writers: int = 1) -> None:
        """Write chunk `i` of every hook (float32 in, stored dtype on disk), then record it as done."""
        encoded = self.encode_chunk(i, arrays)
        if encoded is not None:
            return self.write_encoded(i, encoded, writers)
        # a codec chain we do not encode ourselves: zarr's own pipeline
        start, stop = self.chunk_range(i)
        jobs = [(self._array(h).async_array, to_storage(arrays[h], self.attrs["dtype"])) for h in self.hooks]

        async def write_all() -> None:
            await asyncio.gather(*[arr.setitem(slice(start, stop), data) for arr, data in jobs])

        with self._write_errors(i):
            sync(write_all())
            self._record(i)

    def encode_chunk(self, i: int, arrays: dict[str, np.ndarray]) -> EncodedChunk | None:
        """The CPU half of writing chunk `i`: each hook's chunk as the bytes zarr stores, with their checksums.
        None when a hook's codec chain is not one SAGE encodes itself (`write_chunk` then uses zarr's pipeline)."""
        start, stop = self.chunk_range(i)
        dtype = self.attrs["dtype"]
        for hook in self.hooks:
            if arrays[hook].shape[0] != stop - start:
                raise StoreError(f"chunk {i} of {hook}: got {arrays[hook].shape[0]} prompts, expected {stop - start}")
        encoders = {h: _chunk_encoder(self._array(h)) for h in self.hooks}
        if not all(encoders.values()):
            return None
        digest = self.checksum

        def encode_one(h: str) -> tuple[str, tuple[bytes, str]]:
            payload = encoders[h](_pad_chunk(to_storage(arrays[h], dtype), self._array(h).chunks))
            return h, (payload, digest(payload))

        # every hook at once: Blosc and the hash release the GIL
        with ThreadPoolExecutor(max_workers=min(len(self.hooks), max(2, os.cpu_count() or 1))) as pool:
            return dict(pool.map(encode_one, self.hooks))

    def write_encoded(self, i: int, encoded: EncodedChunk, writers: int = 1) -> None:
        """The I/O half: write the files of `encode_chunk(i, ...)` (on `writers` threads), then record chunk `i` as
        done."""
        files = self._chunk_files(i)
        with self._write_errors(i):
            if writers > 1:
                with ThreadPoolExecutor(max_workers=writers) as pool:
                    list(pool.map(lambda h: _write_file(self.path / files[h], encoded[h][0]), encoded))
            else:
                for h, (payload, _) in encoded.items():
                    _write_file(self.path / files[h], payload)
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
        """Relative paths of every file holding chunk `i` (of each hook and of the per-chunk metadata arrays)."""
        out = {}
        for name in [*self.hooks, "tokens", *(["role_pos"] if "role_pos" in self.group else [])]:
            ndim = len(self.group[name].shape)
            out[name] = "/".join([name, "c", str(i), *["0"] * (ndim - 1)])
        return out

    def _record(self, i: int, known: dict[str, str] | None = None) -> None:
        """Record chunk `i` as done with the checksum of each of its files (`known`: checksums of bytes just written,
        so they are not read back)."""
        known = known or {}
        digest = self.checksum
        hashes = {name: known.get(name) or _file_digest(self.path / rel, digest)
                  for name, rel in self._chunk_files(i).items()}
        d = self.path / "_progress"
        d.mkdir(exist_ok=True)
        tmp = d / f".{i:06d}.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(hashes, sort_keys=True))
        os.replace(tmp, d / f"{i:06d}.json")

    def finalize(self) -> str:
        """Check every chunk is recorded, consolidate metadata, write the marker last. Returns the content hash."""
        missing = sorted(set(range(self.n_chunks)) - self.done_chunks())
        if missing:
            raise StoreError(f"{self.path}: chunks {missing[:5]}... not captured yet; rerun the capture to finish it")
        with _quiet_zarr():
            zarr.consolidate_metadata(str(self.path))
        content = self.content_hash()
        (self.path / MARKER).write_text(json.dumps({"content_hash": content, **self.attrs}, indent=1, default=str))
        return content

    def content_hash(self) -> str:
        d = self.path / "_progress"
        records = [json.loads((d / f"{i:06d}.json").read_text()) for i in range(self.n_chunks)]
        meta = {k: v for k, v in self.attrs.items()}
        return stable_hash(meta, records)

    # -- reading ---------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, expect: dict[str, str] | None = None) -> ActivationStore:
        """Open a finished store. Refuses an incomplete store, one whose files changed since capture (`verify`), and
        one whose model/dataset/request hashes differ from `expect`."""
        store = cls(path)
        if not store.is_complete():
            raise StoreError(f"{path} is not a complete activation store (capture unfinished?); rerun the capture")
        for k, v in (expect or {}).items():
            if store.attrs.get(k) != v:
                raise StoreError(f"{path} was captured with {k}={store.attrs.get(k)!r}, not {v!r}; refusing it")
        if verify:
            store.verify()
        return store

    def verify(self) -> None:
        d = self.path / "_progress"
        digest = self.checksum
        for i in range(self.n_chunks):
            rec = d / f"{i:06d}.json"
            if not rec.is_file():
                raise StoreError(f"{self.path} is corrupt: chunk {i} has no record; delete it and recapture")
            want = json.loads(rec.read_text())
            for name, rel in self._chunk_files(i).items():
                if _file_digest(self.path / rel, digest) != want.get(name):
                    raise StoreError(f"{self.path} is corrupt: chunk {i} of {name} was truncated or modified; "
                                     f"delete the store and recapture")
        marker = json.loads((self.path / MARKER).read_text())
        if marker.get("content_hash") != self.content_hash():
            raise StoreError(f"{self.path} is corrupt: its records do not match its marker; delete it and recapture")

    def to_xarray(self):
        """The store as an `xarray.Dataset` (lazy): named dims, `prompt_id` (and `role`) coordinates.

        bfloat16 arrays appear as their raw uint16 bits here (attribute sage_dtype); `iter_chunks` and `read` decode.
        """
        import xarray as xr

        with _quiet_zarr():
            ds = xr.open_zarr(str(self.path), consolidated=True, zarr_format=3)
        if "role" in ds:
            ds = ds.set_coords("role")
        return ds

    def iter_chunks(self, hook: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """Stream one hook chunk by chunk as float32: (start, stop, array). Memory is one chunk."""
        arr = self.group[hook]
        dtype = self.attrs["dtype"]
        for i in range(self.n_chunks):
            start, stop = self.chunk_range(i)
            yield start, stop, from_storage(arr[start:stop], dtype)

    def read(self, hook: str, prompts: slice | np.ndarray = slice(None)) -> np.ndarray:
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


@contextmanager
def _quiet_zarr() -> Iterator[None]:
    """zarr warns about our _progress folder (not a zarr node) and about v3 consolidated metadata; both are known."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def _chunk_encoder(arr: zarr.Array) -> Callable[[np.ndarray], bytes] | None:
    """The bytes zarr would write for one whole chunk, without its async pipeline (which ran at 190–310 MiB/s here
    against ~800 MiB/s for Blosc itself): for the codec chains SAGE creates, little-endian bytes then optionally Blosc.
    None for any other chain (the caller falls back to zarr)."""
    codecs = tuple(arr.metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or codecs[0].endian not in (None, Endian.little):
        return None
    if len(codecs) == 1:
        return lambda a: np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        c = codecs[1]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[c.shuffle.value]
        blosc = Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=shuffle, blocksize=c.blocksize, typesize=c.typesize)
        return lambda a: bytes(blosc.encode(np.ascontiguousarray(a)))
    return None


def _pad_chunk(a: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    """zarr stores an edge chunk at full chunk shape, padded with the fill value (0 here)."""
    if a.shape == tuple(chunks):
        return a
    out = np.zeros(chunks, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def _write_file(path: Path, payload: bytes) -> None:
    """Write `payload` at `path` (via a temporary name, so a crash never leaves half a chunk under the real name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _file_digest(path: Path, digest: Callable[[bytes], str]) -> str | None:
    try:
        return digest(path.read_bytes())
    except FileNotFoundError:
        return None
