"""A damaged activation store is repaired by rerunning the capture flow: exactly the damaged chunks are recaptured,
from the prompt table (never from the store's own, possibly damaged, tokens), and the repaired store's content hash
is the undamaged one's (issue #15 item 12)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sage_core.model.capture import CaptureRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _flip3(path):
    data = bytearray(path.read_bytes())
    for k in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _tokens_plus_one(path):
    """Damage that decodes (no compression): tokens that are wrong, not unreadable."""
    a = np.frombuffer(path.read_bytes(), dtype="<i4").copy()
    a[: len(a) // 2] = (a[: len(a) // 2] + 1) % 7
    path.write_bytes(a.tobytes())


@pytest.mark.parametrize("compression,array,damage", [
    ("lz4", "blocks.0.hook_resid_post", _flip3),
    ("lz4", "blocks.0.hook_resid_post", _truncate),
    ("lz4", "tokens", _flip3),
    ("none", "tokens", _tokens_plus_one),
])
def test_rerunning_the_capture_flow_repairs_a_damaged_chunk(tiny_zoo, compression, array, damage):
    from flows.capture import capture
    from flows.settings import results_in
    from storage.activations import ActivationStore
    from storage.atomic import is_whole
    from storage.home import SageHome

    home, cfg, _, _ = tiny_zoo
    req = CaptureRequest(hooks=("blocks.0.hook_resid_post",), chunk_mb=0.004, compression=compression,
                         batch_size=8)
    with results_in(SageHome(home)):
        out = list(capture(request=req, cfg=cfg, home=str(home), n_shards=2).values())
    store = ActivationStore.open(home / out[0].path)
    assert store.n_chunks >= 3, "the damaged chunk must be one of several"
    good = {o.path: (o.hash, ActivationStore.open(home / o.path).read(req.hooks[0])) for o in out}
    chunk = store.path / store._chunk_files(1)[array]
    others = {rel: (store.path / rel).stat().st_mtime_ns for i in range(store.n_chunks) if i != 1
              for rel in store._chunk_files(i).values()}
    time.sleep(0.05)  # file times are coarse: the damage must not share the checked version's timestamps
    damage(chunk)
    assert not ActivationStore(store.path).is_whole()

    with results_in(SageHome(home)):
        again = list(capture(request=req, cfg=cfg, home=str(home), n_shards=2).values())
    assert [o.hash for o in again] == [o.hash for o in out]
    assert {rel: (store.path / rel).stat().st_mtime_ns for rel in others} == others, "only chunk 1 is recaptured"
    for o in again:
        repaired = ActivationStore.open(home / o.path)
        assert is_whole(repaired.path) and repaired.content_hash() == good[o.path][0]
        np.testing.assert_array_equal(repaired.read(req.hooks[0]), good[o.path][1])


def test_rerunning_the_capture_flow_repairs_a_deleted_store_marker(tiny_zoo):
    """A store whose completion marker was deleted is sealed again by the next run, without recapturing a chunk."""
    from flows.capture import capture
    from flows.settings import results_in
    from storage.activations import ActivationStore
    from storage.atomic import MARKER, is_whole
    from storage.home import SageHome

    home, cfg, _, _ = tiny_zoo
    req = CaptureRequest(hooks=("blocks.0.hook_resid_post",), chunk_mb=0.004, batch_size=8)
    with results_in(SageHome(home)):
        out = list(capture(request=req, cfg=cfg, home=str(home), n_shards=2).values())
    store = ActivationStore.open(home / out[0].path)
    chunks = {rel: (store.path / rel).stat().st_mtime_ns for i in range(store.n_chunks)
              for rel in store._chunk_files(i).values()}
    (store.path / MARKER).unlink()
    assert not is_whole(store.path)
    with results_in(SageHome(home)):
        again = list(capture(request=req, cfg=cfg, home=str(home), n_shards=2).values())
    assert [o.hash for o in again] == [o.hash for o in out]
    assert is_whole(store.path) and ActivationStore.open(store.path).content_hash() == out[0].hash
    assert {rel: (store.path / rel).stat().st_mtime_ns for rel in chunks} == chunks, "no chunk is recaptured"
