"""Load once per process (issue #16 item 4): the model, an SAE and a task's references are read from disk once, keyed
by content hash, however many threads ask at once; the cache is bounded; an SAE whose files changed since it was
resolved is refused; a model instance is lent to one thread at a time (TransformerLens hooks live on the instance)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from storage.home import SageHome
from storage.refs import ModelRef, ReferencesRef, SAERef
from tasks import loaded
from tasks import score as score_tasks


@pytest.fixture(autouse=True)
def fresh():
    loaded.clear()
    yield
    loaded.clear()


class FakeModel:
    """Stands in for a HookedTransformer: what matters here is identity and that it can be copied."""

    def __init__(self, path):
        self.path = path
        self.hooks: list[str] = []


@pytest.fixture
def slow_models(monkeypatch):
    """`load_model` that takes a while (so concurrent callers overlap) and records every call."""
    calls = []

    def load(path, device="cpu"):
        calls.append((str(path), device))
        time.sleep(0.2)
        return FakeModel(path)

    monkeypatch.setattr(loaded.zoo_store, "load_model", load)
    return calls


def _model(h: str = "m1") -> ModelRef:
    return ModelRef(path=f"zoo/{h}/model", hash=h)


def test_a_model_is_loaded_once_however_many_threads_ask(tmp_path, slow_models):
    home = SageHome(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: loaded.shared_model(home, _model()), range(8)))
    assert len(slow_models) == 1 and loaded.LOADS["model"] == 1
    assert all(m is got[0] for m in got)
    # another content hash is another model; the same one stays loaded
    loaded.shared_model(home, _model("m2"))
    loaded.shared_model(home, _model())
    assert len(slow_models) == 2 and loaded.LOADS["model"] == 2


def _tiny_transformer(path, device="cpu"):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_vocab=10, act_fn="relu",
                                  d_mlp=16, device=device)
    return HookedTransformer(cfg)


def test_model_instances_are_lent_exclusively(tmp_path, monkeypatch):
    """Thread a runs a hooked forward pass while thread b borrows the model: b gets its own instance, and none of
    a's hooks (TransformerLens attaches them to the instance) ever fires in b's forward passes, then or later."""
    import torch

    monkeypatch.setattr(loaded.zoo_store, "load_model", _tiny_transformer)
    home = SageHome(tmp_path)
    tokens = torch.tensor([[1, 2, 3]])
    a_hooked, b_done = threading.Event(), threading.Event()
    fired: list[str] = []
    held = []

    def spy(act, hook):
        fired.append(threading.current_thread().name)
        return act

    def a():
        with loaded.model(home, _model()) as m:
            held.append(m)
            with m.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", spy)]):
                a_hooked.set()
                assert b_done.wait(30)  # b borrows and runs while a's hook is attached
                m(tokens)

    def b():
        assert a_hooked.wait(30)
        with loaded.model(home, _model()) as m:
            held.append(m)
            m(tokens)
        b_done.set()

    threads = [threading.Thread(target=a, name="a"), threading.Thread(target=b, name="b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(held) == 2 and held[0] is not held[1]
    assert fired == ["a"], fired
    assert loaded.LOADS["model"] == 1 and loaded.LOADS["model-copy"] == 1
    # both instances went back to the pool: later users reuse them, nothing is loaded or copied again, and no
    # hook is left behind on either
    fired.clear()
    for _ in range(3):
        with loaded.model(home, _model()) as m:
            assert any(m is h for h in held)
            m(tokens)
    assert fired == [] and loaded.LOADS["model"] == 1 and loaded.LOADS["model-copy"] == 1


def test_a_failed_load_is_not_kept(tmp_path, monkeypatch):
    home = SageHome(tmp_path)
    attempts = []

    def flaky(path, device="cpu"):
        attempts.append(path)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return FakeModel(path)

    monkeypatch.setattr(loaded.zoo_store, "load_model", flaky)
    with pytest.raises(OSError):
        loaded.shared_model(home, _model())
    assert isinstance(loaded.shared_model(home, _model()), FakeModel)
    assert len(attempts) == 2 and loaded.LOADS["model"] == 1


def test_the_cache_is_bounded_least_recently_used_first(tmp_path, monkeypatch):
    home = SageHome(tmp_path)
    reads = []
    monkeypatch.setattr(score_tasks.sc_store, "load_references", lambda d: reads.append(d.name) or [d.name])
    monkeypatch.setitem(loaded.MAX_ENTRIES, "references", 2)

    def refs(h: str) -> ReferencesRef:
        return ReferencesRef(path=f"scores/references/{h}", hash=h, task="ioi")

    assert score_tasks.loaded_references(home, refs("a")) == ["a"]
    score_tasks.loaded_references(home, refs("b"))
    score_tasks.loaded_references(home, refs("a"))  # a is now the most recently used
    score_tasks.loaded_references(home, refs("c"))  # evicts b
    assert reads == ["a", "b", "c"]
    score_tasks.loaded_references(home, refs("a"))
    score_tasks.loaded_references(home, refs("b"))  # read again: it was evicted
    assert reads == ["a", "b", "c", "b"] and loaded.LOADS["references"] == 4


def test_saes_are_kept_within_a_byte_budget_so_a_worker_stays_flat(monkeypatch):
    import torch

    def sae(mib: int) -> SimpleNamespace:
        module = torch.nn.Linear(1, 1, bias=False)
        module.weight = torch.nn.Parameter(torch.zeros(mib << 18))  # float32: `mib` MiB
        return SimpleNamespace(sae=module)

    assert loaded.nbytes(sae(3)) == 3 << 20 and loaded.nbytes(object()) == 0
    monkeypatch.setitem(loaded.MAX_BYTES, "sae", 10 << 20)
    for i in range(5):
        loaded.keep("sae", (f"h{i}", f"s{i}"), sae(4))
    # 4 MiB each under a 10 MiB budget: the two most recent stay, the older ones go (read again if asked)
    assert list(loaded._cache["sae"]) == [("h3", "s3"), ("h4", "s4")]
    assert sum(loaded._sizes["sae"].values()) == 8 << 20
    monkeypatch.setenv(loaded.KEEP_ENV, "1")  # the operator's setting: 1 MiB; the newest is always kept
    loaded.keep("sae", ("h5", "s5"), sae(4))
    assert list(loaded._cache["sae"]) == [("h5", "s5")]
    loaded.clear()
    assert not loaded._sizes["sae"]


def test_core_references_count_their_own_bytes_and_stay_within_their_budget(monkeypatch):
    """The clean passes kept per model, hook and text (`sage_core.scoring.core.CoreReference`) weigh what they hold;
    `peek` reads a kept value without loading one."""
    def ref(mib: int) -> SimpleNamespace:
        return SimpleNamespace(nbytes=mib << 20)

    assert loaded.nbytes(ref(5)) == 5 << 20
    monkeypatch.setitem(loaded.MAX_BYTES, "core-reference", 10 << 20)
    assert loaded.peek("core-reference", ("a",)) is None
    for name in "abc":
        loaded.keep("core-reference", (name,), ref(4))
    assert list(loaded._cache["core-reference"]) == [("b",), ("c",)]
    assert loaded.peek("core-reference", ("a",)) is None and loaded.peek("core-reference", ("c",)).nbytes == 4 << 20


def _sae_dir(tmp_path, seed: int = 0):
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    d = tmp_path / "sae"
    sae.save_model(str(d))
    return d


def _ref(d, content_hash: str) -> SAERef:
    return SAERef(spec=str(d), name=d.name, hook="blocks.0.hook_resid_pre", hash=content_hash, arch="standard",
                  d_sae=16, d_in=8, source="dir")


def test_an_sae_is_loaded_once_and_refused_once_its_files_changed(tmp_path):
    from storage.sae_sources import load_sae_spec

    home = SageHome(tmp_path)
    d = _sae_dir(tmp_path)
    resolved = load_sae_spec(str(d))
    ref = _ref(d, resolved.content_hash)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: score_tasks.loaded_sae(home, ref, None), range(4)))
    assert all(s is got[0] for s in got) and loaded.LOADS["sae"] == 1
    assert got[0].content_hash == ref.hash

    _sae_dir(tmp_path, seed=1)  # the directory is swapped for another SAE mid-run
    loaded.clear()
    with pytest.raises(ValueError, match="changed since it was resolved") as e:
        score_tasks.loaded_sae(home, ref, None)
    assert "\n" not in str(e.value)
    assert loaded.LOADS["sae"] == 0


def test_an_sae_whose_hash_does_not_match_is_never_cached(tmp_path, monkeypatch):
    home = SageHome(tmp_path)
    monkeypatch.setattr(score_tasks, "load_sae_spec", lambda spec, h, name: SimpleNamespace(content_hash="other"))
    for _ in range(2):
        with pytest.raises(ValueError, match="changed since it was resolved"):
            score_tasks.loaded_sae(home, _ref(tmp_path / "x", "expected"), None)
    assert loaded.LOADS["sae"] == 0
