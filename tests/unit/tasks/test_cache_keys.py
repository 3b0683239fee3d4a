"""One key per output (issue #15 items 1, 3, 8): made from the inputs' content, the config and the code of the modules
the stage runs; never from paths or the data root; cache records are plain JSON."""

from __future__ import annotations

import json

import pytest

from storage import hashing


@pytest.fixture
def edit_module(monkeypatch):
    """Pretend a project module's source changed (the code-version caches are cleared before and after)."""
    edits: dict[str, bytes] = {}
    real = hashing.module_source

    def clear():
        hashing.stage_code_version.cache_clear()
        hashing.module_closure.cache_clear()

    def edit(name: str) -> None:
        assert hashing.module_file(name) is not None, name
        edits[name] = b"\n# edited\n"
        clear()

    monkeypatch.setattr(hashing, "module_source", lambda name: real(name) + edits.get(name, b""))
    clear()
    yield edit
    clear()


def _inputs():
    from sage_core.config import ZooConfig
    from storage.refs import ModelRef

    m = ModelRef(path="zoo/m/model", hash="h-model")
    return {"cfg": ZooConfig.tiny(), "model": m, "home": "/data/a"}


def _keys() -> dict[str, str]:
    from tasks import fit, locate, score, zoo

    tasks = [zoo.make_tokenizer, zoo.train_model, zoo.train_sae, zoo.capture_sae_activations, locate.locate_one,
             fit.fit_section, score.section_references]
    from tasks.common import task_key

    keys = {t.name: task_key(t, _inputs()) for t in tasks}
    sae, model, inputs, corpus = _scoring_inputs()
    unit = score.ScoringUnit(name=sae.name, kind="trained", mapping="native", saes=(sae,))
    keys["score-unit"] = score.part_key(unit, model, inputs, "m", score.ScoreConfig())
    keys["core-metrics"] = score.core_key(sae, model, corpus, 8, "m")
    return keys


def _scoring_inputs():
    from storage.refs import CorpusRef, DatasetRef, ModelRef, ReferencesRef, SAERef, StoreRef
    from tasks.score import TaskInputs

    sae = SAERef(spec="zoo:x", name="x", hook="blocks.0.hook_resid_post", hash="h-x", arch="topk", d_sae=8, d_in=4,
                 source="zoo")
    model = ModelRef(path="zoo/m/model", hash="h-model")
    inputs = TaskInputs(dataset=DatasetRef(path="datasets/ioi/p.parquet", hash="d", task="ioi"),
                        store=StoreRef(path="activations/s", hash="s", n_chunks=1, model_hash="h-model",
                                       dataset_hash="d"),
                        refs=ReferencesRef(path="scores/references/r", hash="r", task="ioi"))
    return sae, model, inputs, CorpusRef(path="corpus/c.parquet", hash="c")


def test_a_scoring_change_moves_the_score_keys_and_not_the_zoo_keys(edit_module):
    before = _keys()
    edit_module("sage_core.scoring.score")
    after = _keys()
    changed = {k for k in before if before[k] != after[k]}
    assert {"score-unit", "section-references", "core-metrics"} <= changed
    assert not changed & {"make-tokenizer", "train-model", "train-sae", "capture-sae-activations", "locate-attribute",
                          "fit-section"}, changed


def test_a_report_change_moves_no_key(edit_module):
    from flows.build_zoo import zoo_key
    from sage_core.config import ZooConfig

    before, zoo_before = _keys(), zoo_key(ZooConfig.tiny())
    from report.controls import random_floor  # the report's reading of the leaderboard

    # the leaderboard and verdict wording (sage_core.scoring.leaderboard) are report code too
    for name in ("report.summary", "storage.reports", "flows.cli.render", "sage_core.scoring.leaderboard", random_floor.__module__):
        edit_module(name)
    assert _keys() == before and zoo_key(ZooConfig.tiny()) == zoo_before


def test_a_zoo_code_change_moves_the_zoo_key(edit_module):
    from flows.build_zoo import zoo_key
    from sage_core.config import ZooConfig

    before, zoo_before = _keys(), zoo_key(ZooConfig.tiny())
    edit_module("sage_core.zoo.train")
    assert _keys()["train-sae"] != before["train-sae"] and zoo_key(ZooConfig.tiny()) != zoo_before


def test_keys_ignore_the_data_root_and_paths_but_not_content():
    from storage.refs import ModelRef
    from tasks import score
    from tasks.common import task_key

    t = score.section_references
    a = {"dataset": {"name": "s", "hash": "1"}, "model": ModelRef(path="zoo/m/model", hash="m"), "home": "/x"}
    moved = {**a, "home": "/elsewhere", "model": ModelRef(path="other/place", hash="m")}
    other = {**a, "model": ModelRef(path="zoo/m/model", hash="m2")}
    assert task_key(t, a) == task_key(t, moved)
    assert task_key(t, a) != task_key(t, other)
    sae, model, inputs, corpus = _scoring_inputs()
    unit = score.ScoringUnit(name=sae.name, kind="trained", mapping="native", saes=(sae,))
    relocated = inputs.model_copy(update={"store": inputs.store.model_copy(update={"path": "elsewhere/s"})})
    changed = inputs.model_copy(update={"store": inputs.store.model_copy(update={"hash": "s2"})})
    key = score.part_key(unit, model, inputs, "m", score.ScoreConfig())
    assert key == score.part_key(unit, model.model_copy(update={"path": "x"}), relocated, "m", score.ScoreConfig())
    assert key != score.part_key(unit, model, changed, "m", score.ScoreConfig())


def _cached_tasks() -> list:
    import importlib
    import pkgutil

    from prefect import Task

    import tasks
    from tasks.common import StageCache

    found = {}
    for m in pkgutil.iter_modules(tasks.__path__):
        for t in vars(importlib.import_module(f"tasks.{m.name}")).values():
            if isinstance(t, Task) and isinstance(t.cache_policy, StageCache):
                found[t.name] = t
    return list(found.values())


def test_every_cached_task_keys_every_parameter_but_the_one_unkeyed_list():
    """A parameter is left out of a key only by name, on one explicit list (`UNKEYED_PARAMS`: the data root and the
    device); every other parameter of every cached task moves its key."""
    import inspect

    from sage_core.config import ZooConfig
    from tasks.common import UNKEYED_PARAMS, task_key

    cached = _cached_tasks()
    assert len(cached) >= 12, [t.name for t in cached]  # every stage_options task of the package
    assert {"home", "device"} == UNKEYED_PARAMS  # noqa: SIM300 (the list, as the README states it)
    seen = set()
    for t in cached:
        params = list(inspect.signature(t.fn).parameters)
        selects = t.cache_policy.key_inputs is not None  # keys on parts of `cfg` (tested apart below)
        base = {p: ZooConfig.tiny() if p == "cfg" and selects else 0 for p in params}
        for p in params:
            if p == "cfg" and selects:
                continue
            moved = task_key(t, {**base, p: 1}) != task_key(t, base)
            assert moved == (p not in UNKEYED_PARAMS), f"{t.name}: parameter {p!r}"
            seen.add(p)
    assert {"home", "device"} <= seen  # the list is not idle: cached tasks do take both


def test_closure_follows_from_imports_and_skips_type_checking_ones():
    closure = hashing.module_closure("tasks.zoo")
    assert "sage_core.zoo.train" in closure and "storage.atomic" in closure
    assert "sage_core.scoring.score" not in closure and "sage_core.config" not in closure
    assert "sage_core.scoring.score" in hashing.module_closure("tasks.score")


def test_progress_reporting_is_in_no_stage_key(edit_module):
    """Every stage imports tasks.progress, which only counts and tells: how progress is shown moves no key."""
    import inspect

    import tasks.zoo

    assert "from tasks import loaded, progress" in inspect.getsource(tasks.zoo)  # the exemption is needed
    before = _keys()
    edit_module("tasks.progress")
    assert _keys() == before


def test_manifests_persist_as_plain_json_and_other_records_are_refused():
    import pickle

    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    from storage.refs import TableRef
    from tasks.common import SERIALIZER, ManifestSerializer, serializer_of

    s = ManifestSerializer()
    m = TableRef(path="a/b", hash="x")
    assert s.loads(s.dumps(m)) == m and json.loads(s.dumps(m)) == m.model_dump(mode="json")
    with pytest.raises(TypeError):
        s.dumps({"obj": object()})  # a manifest is plain data: anything else is a bug, not a pickle
    good = ResultRecord(metadata=ResultRecordMetadata(serializer=s, storage_key="k1"), result=m)
    assert serializer_of(good.serialize()) == SERIALIZER
    assert ResultRecord.deserialize(good.serialize()).result == m
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key="k2"),
                           result=pickle.dumps)
    assert serializer_of(planted.serialize()) == "pickle"


def _zoo_keys(cfg) -> dict[str, str]:
    """The key of each zoo stage for `cfg`, its upstream manifests held fixed (their own keys are checked here too)."""
    from sage_core.zoo.plan import plan_zoo
    from storage.refs import CorpusRef, ModelRef, TokenizerRef, ZooActivationsRef
    from tasks import zoo
    from tasks.common import task_key

    tok, corpus = TokenizerRef(path="t", hash="h-tok"), CorpusRef(path="c", hash="h-corpus")
    model, acts = ModelRef(path="m", hash="h-model"), ZooActivationsRef(path="a", hash="h-acts")
    plan = plan_zoo(cfg)
    base = {"cfg": cfg, "home": "/h"}
    return {
        "make-tokenizer": task_key(zoo.make_tokenizer, base),
        "make-dataset": task_key(zoo.make_dataset, {**base, "task_name": cfg.tasks[0], "tokenizer": tok}),
        "make-corpus": task_key(zoo.make_corpus, {**base, "tokenizer": tok}),
        "train-model": task_key(zoo.train_model, {**base, "tokenizer": tok, "corpus": corpus}),
        "capture-sae-activations": task_key(zoo.capture_sae_activations,
                                            {**base, "model": model, "corpus": corpus, "hooks": plan.hooks}),
        "train-sae": task_key(zoo.train_sae, {**base, "spec": plan.specs[0], "model": model, "acts": acts}),
    }


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def test_an_sae_setting_moves_that_sae_key_only():
    """README: change an SAE's settings and the next build retrains that SAE, not the data, model or activations."""
    from sage_core.config import ZooConfig

    cfg = ZooConfig.tiny()
    saes = cfg.saes
    assert _changed(_zoo_keys(cfg), _zoo_keys(cfg.model_copy(update={"saes": saes.model_copy(
        update={"epochs": saes.epochs * 2})}))) == {"train-sae"}
    # another width or an extra SAE adds SAEs: the first one, and everything upstream, keep their keys
    more = saes.model_copy(update={"widths": (*saes.widths, 16), "extra": (*saes.extra, *saes.extra)})
    assert _changed(_zoo_keys(cfg), _zoo_keys(cfg.model_copy(update={"saes": more}))) == set()


def test_model_training_settings_do_not_move_the_data_keys():
    from sage_core.config import ZooConfig

    cfg = ZooConfig.tiny()
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": cfg.train.steps + 1})})
    assert _changed(_zoo_keys(cfg), _zoo_keys(other)) == {"train-model"}
    prompts = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"n_test": cfg.prompts.n_test + 1})})
    assert _changed(_zoo_keys(cfg), _zoo_keys(prompts)) == {"make-dataset"}


def test_the_flow_records_follow_the_flows_code(edit_module):
    """The zoo record depends on sage_core.zoo.plan (each SAE's spec and settings) and the flow; the fit record on its wiring."""
    from flows.build_zoo import zoo_key
    from flows.fit import fit_key
    from sage_core.config import ZooConfig
    from sage_core.locate.attribution import LocateConfig
    from storage.refs import ModelRef, TokenizerRef

    cfg = ZooConfig.tiny()
    m, tok = ModelRef(path="m", hash="h-model"), TokenizerRef(path="t", hash="h-tok")

    def keys():
        return zoo_key(cfg), fit_key(m, tok, cfg, LocateConfig(), 2, ["lda"], list(cfg.tasks))

    for module, which in (("sage_core.zoo.plan", 0), ("flows.build_zoo", 0), ("flows.locate", 1), ("flows.fit", 1)):
        before = keys()
        edit_module(module)
        assert keys()[which] != before[which], module


def test_transient_only_retries_a_disk_hiccup_behind_a_store_error():
    import errno

    from storage.atomic import StoreError
    from tasks.common import transient_only

    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=True):  # Prefect's State.result: the exception, raised or returned
            if raise_on_failure:
                raise self.exc
            return self.exc

    def wrapped(code: int | None) -> StoreError:
        try:
            try:
                raise OSError(code, "disk") if code is not None else ValueError("bad input")
            except (OSError, ValueError) as exc:
                raise StoreError("could not write x") from exc
        except StoreError as exc:
            return exc

    assert transient_only(None, None, State(wrapped(errno.EIO)))
    assert transient_only(None, None, State(OSError(errno.EIO, "disk")))
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        assert not transient_only(None, None, State(wrapped(code))), code
        assert not transient_only(None, None, State(OSError(code, "disk"))), code
    assert not transient_only(None, None, State(wrapped(None)))
    assert not transient_only(None, None, State(StoreError("no cause: a bad store")))


def _record_ctx(tmp_path):
    """A task context for `StageCache.compute_key` of make-tokenizer, its records under tmp_path/records."""
    from types import SimpleNamespace

    from storage.home import SageHome
    from tasks import zoo
    from tasks.common import in_home

    task = in_home(zoo.make_tokenizer, SageHome(tmp_path / "home"))
    return SimpleNamespace(task=task, result_store=SimpleNamespace(result_storage=task.result_storage))


@pytest.mark.parametrize("result", ['"{}"', '"[1, 2]"', "3", '"not json"'])
def test_a_tampered_record_is_dropped_in_one_line(tmp_path, caplog, result):

    from sage_core.config import ZooConfig
    from tasks.common import StageCache, record_path

    ctx = _record_ctx(tmp_path)
    inputs = {"cfg": ZooConfig.tiny(), "home": str(tmp_path / "home")}
    key = StageCache().compute_key(ctx, inputs, {})
    path = record_path(ctx.result_store.result_storage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metadata": {"serializer": {"type": "sage-json"}, "storage_key": "k"}})[:-1]
                    + f', "result": {result}}}')
    with caplog.at_level("WARNING"):
        assert StageCache().compute_key(ctx, inputs, {}) == key
    assert not path.exists()
    lines = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info, caplog.text


def test_the_result_store_refuses_a_record_not_naming_the_sage_serializer(tmp_path):
    """The refusal is at read time: whatever compute_key saw, Prefect is never handed a pickle to load."""
    from prefect.results import ResultRecord, ResultRecordMetadata, ResultStore
    from prefect.serializers import PickleSerializer

    from tasks.common import ManifestSerializer

    storage = _record_ctx(tmp_path).result_store.result_storage
    store = ResultStore(result_storage=storage, serializer=ManifestSerializer())
    from storage.refs import TokenizerRef

    good = ResultRecord(metadata=ResultRecordMetadata(serializer=ManifestSerializer(), storage_key="good"),
                        result=TokenizerRef(path="p", hash="h"))
    storage.write_path("good", good.serialize(), _sync=True)
    assert store.exists("good") and store.read("good").result == TokenizerRef(path="p", hash="h")
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key="bad"),
                           result="planted")
    storage.write_path("bad", planted.serialize(), _sync=True)
    assert not store.exists("bad")
    with pytest.raises(ValueError, match="not a SAGE JSON record"):
        store.read("bad")


def test_each_module_is_parsed_once_for_every_stages_code_version(monkeypatch):
    """A process keys every stage (`flows.engine.warm_code_versions`): a module in many stages' closures is parsed
    once, not once per stage (~1 s of CPU in every CLI run, flow run and worker, before)."""
    from collections import Counter

    from flows.engine import warm_code_versions

    parsed: Counter[str] = Counter()
    real = hashing.ast.parse

    def counting(source, filename="<unknown>", *args, **kwargs):
        parsed[filename] += 1
        return real(source, filename, *args, **kwargs)

    monkeypatch.setattr(hashing.ast, "parse", counting)
    hashing._imports_in.cache_clear()
    hashing.stage_code_version.cache_clear()
    hashing.module_closure.cache_clear()
    try:
        warm_code_versions()
    finally:
        hashing.stage_code_version.cache_clear()
        hashing.module_closure.cache_clear()
    assert len(parsed) > 20 and max(parsed.values()) == 1, parsed.most_common(3)
