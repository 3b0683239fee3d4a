"""The bytes of one activation-store chunk: the stored dtype (bfloat16 as raw bits), the codec chains SAGE encodes
itself, per-file checksums, the write of one chunk file under a temporary name, and the flush of a store's files to
the disk when it is sealed."""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import xxhash
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec
from zarr.codecs.bytes import Endian

from storage.atomic import DIGEST, remember_digest

# Per-file checksums: xxh3-128 hashes at ~9 GB/s here against sha256's 1.5 GB/s, which was a fifth of a chunk's write
# time. They guard against truncation and accidental change, not forgery. Stores written before format 2 (no
# `checksum` attribute) keep their sha256 records.
CHECKSUM = DIGEST  # the marker's own digest, so a chunk hashed once serves both
DIGESTS: dict[str, Callable[[bytes], str]] = {
    "xxh3_128": xxhash.xxh3_128_hexdigest,
    "sha256": lambda b: hashlib.sha256(b).hexdigest()[:32],
}
Payload = bytes | memoryview  # one chunk file's bytes; a memoryview may alias the caller's array


def compressors(compression: str):
    if compression == "none":
        return None
    return [BloscCodec(cname=compression, clevel=3 if compression == "zstd" else 5, shuffle="shuffle")]


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the stored representation (bfloat16 is kept as its raw 16 bits, with round-to-nearest-even)."""
    if dtype == "float32":
        return x.astype(np.float32, copy=False)
    if dtype == "float16":
        return x.astype(np.float16)
    # torch's own conversion (round to nearest even, NaN kept a NaN), its bits viewed as uint16
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint16).view(np.int16))
        return bits.view(torch.bfloat16).to(torch.float32).numpy()
    return x.astype(np.float32, copy=False)


def storage_dtype(dtype: str) -> str:
    return {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}[dtype]


def chunk_encoder(arr: zarr.Array) -> Callable[[np.ndarray], Payload] | None:
    """The bytes zarr would write for one whole chunk, for the codec chains SAGE creates: little-endian bytes (a view
    of the array itself, not a copy), then optionally Blosc. None for any other chain (the caller falls back to zarr).

    Against zarr's own pipeline (`write_chunk(via_zarr=True)`), `benchmarks.scale_device.store_vs_dd` times both in
    paired rounds, whole store to its seal. On the shared 2-core machine (2026-12-07, 5 runs of 3-5 rounds, 252 MiB)
    SAGE's wall / zarr's was 0.76, 1.35, 0.96, 0.95, 1.12 (run medians; all 17 rounds: median 0.95) with Blosc-LZ4 and
    0.86, 0.96, 0.76, 0.88, 1.02 (all rounds: 0.95) uncompressed: at best 5% faster, within this machine's noise. Kept
    because it also gives the bytes and their checksum in memory (zarr's files are read back to hash them) and a
    separate CPU half (`encode_chunk`) that the capture's io schedule writes on a thread."""
    codecs = tuple(arr.metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or codecs[0].endian not in (None, Endian.little):
        return None
    if len(codecs) == 1:
        return lambda a: memoryview(as_little_endian(a).reshape(-1).view(np.uint8))
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        c = codecs[1]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[c.shuffle.value]
        blosc = Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=shuffle, blocksize=c.blocksize, typesize=c.typesize)
        return lambda a: blosc.encode(np.ascontiguousarray(a))
    return None


def as_little_endian(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)


def pad_chunk(a: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    """zarr stores an edge chunk at full chunk shape, padded with the fill value (0 here)."""
    if a.shape == tuple(chunks):
        return a
    out = np.zeros(chunks, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):  # not Linux
        return None
    f.argtypes, f.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return f


_SYNC_FILE_RANGE = _libc_sync_file_range()


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing `fd`'s dirty pages to the disk now, without waiting (Linux's
    sync_file_range(SYNC_FILE_RANGE_WRITE)): the disk then works while the next files are encoded, and the flush at
    the seal waits only for the last few. A hint: where it is missing or fails, the seal's flush does all the work."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, 2)


def _write_all(fd: int, payload: Payload) -> None:
    view = memoryview(payload).cast("B")
    while view:
        view = view[os.write(fd, view):]


def write_file(path: Path, payload: Payload, checksum: tuple[str, str] | None = None, durable: bool = False) -> None:
    """Write `payload` at `path` via a temporary name (a crash never leaves half a file under the real name) and start
    its writeback. `checksum` (algorithm, digest of `payload`) is remembered for this version of the file, so checking
    it again in this process (sealing) does not read it back. `durable`: on the disk, name included, on return."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, payload)
            if durable:
                os.fdatasync(fd)
            else:
                start_writeback(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:  # a failed write (a full disk) leaves no temporary file
        tmp.unlink(missing_ok=True)
    if durable:
        _sync(path.parent, False)
    if checksum is not None:
        _remember(path, os.stat(path), *checksum)


def _remember(path: Path, st: os.stat_result, algorithm: str, digest: str) -> None:
    """The checksum a chunk file was written with, in `storage.atomic`'s digest cache (xxh3, what stores of format 2
    use; a store of format 1 is hashed with sha256 and read back when checked)."""
    if algorithm == CHECKSUM:
        remember_digest(path, st, digest)


def digest_written(path: Path, algorithm: str) -> str | None:
    """Checksum of a chunk file just written by zarr (None if missing), remembered like `write_file`'s; starts its
    writeback too, as `write_file` does for its own files."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        with open(fd, "rb", closefd=False) as f:
            digest = DIGESTS[algorithm](f.read())
        start_writeback(fd)
    finally:
        os.close(fd)
    _remember(path, st, algorithm, digest)
    return digest


def digest_of(path: Path, digest: Callable[[bytes], str]) -> str | None:
    try:
        return digest(path.read_bytes())
    except FileNotFoundError:
        return None


def _sync(path: Path, data_only: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def flush(files: Iterable[Path], dirs: Iterable[Path]) -> None:
    """Wait until `files` and the names in `dirs` are on the disk: a sealed store is durable before its marker says
    it is whole. Cheap where `start_writeback` began the files' writeback. On many threads: concurrent syncs share
    the filesystem's journal commits (64 files and 60 folders took 0.02 s so, 0.25-0.35 s one by one)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda p: _sync(p, True), files))
        list(pool.map(lambda d: _sync(d, False), dirs))


@contextmanager
def quiet_zarr() -> Iterator[None]:
    """zarr warns about our _progress folder (not a zarr node) and about v3 consolidated metadata; both are known."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield
