"""Listing the sources of SAEs a watch looks at: folders (local and fsspec URLs), registry-format YAML files, and the
SAELens registry shipped with sae_lens, parsed and filtered through its own API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid

import fsspec
import pytest
import torch
from huggingface_hub import constants
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file, save_file

from sage_core.watch.sources import FolderSource, HubSource, RegistrySource, YamlSource, parse_source
from storage.atomic import is_complete
from storage.home import SageHome
from storage.sae_names import split_registry
from storage.sae_sources import load_sae_spec
from storage.watch_sources import SourceError, list_source, watched_root

FILES = ("cfg.json", "sae_weights.safetensors")


def _save(d, seed=0, hook="blocks.0.hook_resid_post", model="sage-test"):
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name=hook, model_name=model)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    sae.save_model(d)
    return d


def _sha(name: str, data: bytes) -> str:
    if name == "cfg.json":
        data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _hash(files: dict[str, bytes]) -> str:
    """The content hash by hand: sha256 over each file's name and its own truncated sha256 (cfg.json's of its JSON
    with sorted keys, no whitespace: the content, not the order it was written in)."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update(_sha(name, files[name]).encode())
    return h.hexdigest()[:16]


def _dir_hash(d) -> str:
    return _hash({f: (d / f).read_bytes() for f in FILES})


@pytest.fixture
def home(tmp_path):
    return SageHome(tmp_path / "home")


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """Whatever this machine's own Hugging Face cache holds must not change what a listing says."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-empty"))


# -- folders ----------------------------------------------------------------------------------------------------------
def test_a_folder_lists_each_sae_directory(tmp_path, home):
    root = tmp_path / "watched"
    a, b = _save(root / "a", seed=0), _save(root / "b", seed=1, hook="blocks.0.attn.hook_z")
    (root / "README.md").write_text("not an SAE")
    (root / "notes").mkdir()  # a directory without SAE files: not an SAE, nothing to report
    listing = list_source(FolderSource(url=str(root)), home)
    assert listing.unreadable == []
    assert [(f.sae_id, f.spec, f.model, f.hook, f.release, f.source) for f in listing.found] == [
        (str(a), str(a), "sage-test", "blocks.0.hook_resid_post", "", f"dir:{root}"),
        (str(b), str(b), "sage-test", "blocks.0.attn.hook_z", "", f"dir:{root}")]
    assert [f.content_hash for f in listing.found] == [_dir_hash(a), _dir_hash(b)]
    assert listing.found[0].content_hash != listing.found[1].content_hash
    assert load_sae_spec(listing.found[0].spec).content_hash == listing.found[0].content_hash
    # the folder named is itself an SAE directory
    assert [f.sae_id for f in list_source(FolderSource(url=str(a)), home).found] == [str(a)]


def test_the_hash_follows_the_files(tmp_path, home):
    root = tmp_path / "watched"
    _save(root / "a")
    shutil.copytree(root / "a", root / "copy")
    shutil.copytree(root / "a", root / "new-weights")
    w = load_file(str(root / "new-weights" / "sae_weights.safetensors"))
    w["W_dec"][0, 0] += 1.0
    save_file(w, str(root / "new-weights" / "sae_weights.safetensors"))
    shutil.copytree(root / "a", root / "new-cfg")
    cfg = json.loads((root / "new-cfg" / "cfg.json").read_text())
    (root / "new-cfg" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    hashes = {os.path.basename(f.sae_id): f.content_hash for f in list_source(FolderSource(url=str(root)), home).found}
    assert hashes["a"] == hashes["copy"] == _dir_hash(root / "a")
    assert len({hashes["a"], hashes["new-weights"], hashes["new-cfg"]}) == 3
    assert hashes["new-weights"] == _dir_hash(root / "new-weights")


def test_unreadable_entries_are_reported_not_fatal(tmp_path, home):
    root = tmp_path / "watched"
    _save(root / "good")
    for name, cfg in {"bad-json": "{not json", "a-list": "[1, 2]", "no-model": json.dumps({"d_in": 8}),
                      "old-layout": json.dumps({"model_name": "gpt2-small", "hook_point": "blocks.1.hook_resid_pre"})
                      }.items():
        shutil.copytree(root / "good", root / name)
        (root / name / "cfg.json").write_text(cfg)
    (root / "cfg-only").mkdir()
    (root / "cfg-only" / "cfg.json").write_text("{}")
    listing = list_source(FolderSource(url=str(root)), home)
    assert [os.path.basename(f.sae_id) for f in listing.found] == ["good", "old-layout"]
    assert (listing.found[1].model, listing.found[1].hook) == ("gpt2-small", "blocks.1.hook_resid_pre")
    reasons = {os.path.basename(p): why for p, why in listing.unreadable}
    assert sorted(reasons) == ["a-list", "bad-json", "cfg-only", "no-model"]
    assert reasons["bad-json"].startswith("cfg.json is not JSON")
    assert reasons["a-list"] == "cfg.json holds a JSON list, not an object"
    assert reasons["no-model"] == "cfg.json names no model (metadata.model_name); add it"
    assert reasons["cfg-only"].startswith("missing sae_weights.safetensors")
    assert all("\n" not in why for why in reasons.values())


def test_hostile_entries_are_skipped_never_followed(tmp_path, home):
    root, outside = tmp_path / "watched", tmp_path / "outside"
    _save(root / "good")
    _save(outside / "elsewhere", seed=2)
    _save(root / "evil\nname", seed=3)
    (root / "escape").symlink_to(outside / "elsewhere")  # a directory link leading out
    _save(root / "half-out", seed=4)
    (root / "half-out" / "sae_weights.safetensors").unlink()
    (root / "half-out" / "sae_weights.safetensors").symlink_to(outside / "elsewhere" / "sae_weights.safetensors")
    (root / "alias").symlink_to(root / "good")  # stays inside: listed like the directory it names
    listing = list_source(FolderSource(url=str(root)), home)
    assert [os.path.basename(f.sae_id) for f in listing.found] == ["alias", "good"]
    reasons = dict(listing.unreadable)
    assert reasons == {str(root / "escape"): "a symlink leading outside the watched folder; not followed",
                       str(root / "half-out"): "sae_weights.safetensors is a symlink leading outside the watched "
                                               "folder; not followed",
                       f"{root}/'evil\\nname'": "its name holds control characters; rename it"}
    assert all("\n" not in p for p in reasons)


def test_a_folder_that_is_not_there_says_what_to_do(tmp_path, home):
    with pytest.raises(SourceError, match=r"does not exist; create it \(mkdir -p .*\) or fix the path") as e:
        list_source(FolderSource(url=str(tmp_path / "nope")), home)
    assert "\n" not in str(e.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="is a file"):
        list_source(FolderSource(url=str(tmp_path / "file")), home)
    with pytest.raises(SourceError, match="Protocol not known"):
        list_source(FolderSource(url="nosuchproto://x"), home)
    with pytest.raises(SourceError, match="does not exist"):
        list_source(FolderSource(url=f"memory://nope-{uuid.uuid4().hex}"), home)


def test_a_remote_folder_is_copied_into_a_content_addressed_snapshot(tmp_path, home, monkeypatch):
    local = _save(tmp_path / "a")
    files = {f: (local / f).read_bytes() for f in FILES}
    base = f"memory://watch-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for f, data in files.items():
        fs.pipe_file(f"{base}/sae-a/{f}", data)
    fs.pipe_file(f"{base}/junk.txt", b"x")
    try:
        listing = list_source(FolderSource(url=base), home)
        assert listing.unreadable == []
        (found,) = listing.found
        h = _hash(files)
        canonical = "memory:///" + base.removeprefix("memory://")  # fsspec's form of the URL: one key however typed
        assert found.content_hash == h and found.sae_id == f"{canonical}/sae-a"
        assert found.spec == str(watched_root(home) / h) and is_complete(found.spec)
        assert (found.model, found.hook) == ("sage-test", "blocks.0.hook_resid_post")
        assert load_sae_spec(found.spec).content_hash == h

        # unchanged files: the note on (URL, sizes, versions) names the snapshot, nothing is copied again
        with monkeypatch.context() as m:
            m.setattr(type(fs), "get_file", lambda *a, **k: pytest.fail("copied again"))
            assert list_source(FolderSource(url=base), home).found == [found]

        w = load_file(str(local / "sae_weights.safetensors"))
        w["W_dec"][0, 0] += 1.0
        save_file(w, str(local / "sae_weights.safetensors"))
        fs.pipe_file(f"{base}/sae-a/sae_weights.safetensors", (local / "sae_weights.safetensors").read_bytes())
        (changed,) = list_source(FolderSource(url=base), home).found
        assert changed.content_hash == _dir_hash(local) != h
        assert is_complete(found.spec), "the old snapshot stays: it is written once"
        assert sorted(p.name for p in watched_root(home).iterdir() if not p.name.startswith(".")) == sorted(
            [h, changed.content_hash, "seen"])

        fs.pipe_file(f"{base}/broken/cfg.json", b"{")
        fs.pipe_file(f"{base}/broken/sae_weights.safetensors", b"x")
        listing = list_source(FolderSource(url=base), home)
        assert [u[0] for u in listing.unreadable] == [f"{canonical}/broken"]
        assert not any(p.name.startswith(".incoming-") for p in watched_root(home).iterdir())
    finally:
        fs.rm(base.removeprefix("memory://"), recursive=True)


# -- registry-format YAML ---------------------------------------------------------------------------------------------
LAB_YAML = """
lab-res:
  repo_id: my-lab/saes
  model: sage-test
  saes:
    - id: blocks.0.hook_resid_post
      path: res/l0
    - id: wide
      path: 3
lab-converted:
  repo_id: my-lab/other
  model: gpt2-small
  conversion_func: gemma_2
  saes:
    - id: a
      path: a
lab-tagged:
  repo_id: my-lab/tagged
  model: sage-test
  config_overrides: {dataset_path: my-lab/corpus}
  saes:
    - id: t
      path: t
lab-normed:
  repo_id: my-lab/normed
  model: sage-test
  config_overrides: {normalize_activations: layer_norm}
  saes:
    - id: n
      path: n
"""


def test_yaml_source_lists_its_releases(tmp_path, home):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB_YAML)
    listing = list_source(YamlSource(url=str(path)), home)
    assert [(f.release, f.sae_id, f.spec, f.model, f.hook, f.content_hash) for f in listing.found] == [
        ("lab-res", "blocks.0.hook_resid_post", "hf:my-lab/saes:res/l0", "sage-test", "blocks.0.hook_resid_post",
         None),
        ("lab-res", "wide", "hf:my-lab/saes:3", "sage-test", "", None),
        ("lab-tagged", "t", "hf:my-lab/tagged:t", "sage-test", "", None)]  # provenance overrides change nothing
    # loaded by repo id, sae_lens would apply neither a conversion nor overrides: not watched, and said so
    assert [p for p, _ in listing.unreadable] == [f"{path}#lab-converted", f"{path}#lab-normed"]
    assert listing.unreadable[0][1].startswith("conversion_func 'gemma_2': only releases sae_lens loads as they are")
    assert listing.unreadable[1][1].startswith("config_overrides ['normalize_activations']: only releases")
    only = list_source(YamlSource(url=str(path), models=("gpt2*",)), home)
    assert only.found == [] and [p for p, _ in only.unreadable] == [f"{path}#lab-converted"]
    assert [f.release for f in list_source(YamlSource(url=str(path), releases=("lab-r*",)), home).found] == [
        "lab-res", "lab-res"]
    # through fsspec
    url = f"memory://lab-{uuid.uuid4().hex}/lab.yaml"
    with fsspec.open(url, "w") as f:
        f.write(LAB_YAML)
    assert list_source(YamlSource(url=url), home).found[0].spec == "hf:my-lab/saes:res/l0"


@pytest.mark.parametrize("text, message", [
    ("a: [1\n", r"is not valid YAML \(line 2: "),
    ("", "holds no releases"),
    ("- a\n- b\n", "holds no releases"),
    ("r: [1, 2]\n", r"release 'r' is a list, not a mapping with repo_id, model and saes"),
    ("r: {model: m, saes: []}\n", r"release 'r' needs 'repo_id' as a non-empty string"),
    ("r: {repo_id: o/r, saes: []}\n", r"release 'r' needs 'model' as a non-empty string"),
    ("r: {repo_id: o/r, model: m, saes: 3}\n", r"release 'r' needs 'saes' as a list"),
    ("r: {repo_id: o/r, model: m, saes: [{id: a, path: p}, {id: b}]}\n", r"release 'r' needs saes\[1\]\.path"),
    ("r: {repo_id: o/r, model: m, saes: [{id: a, path: p}, {id: a, path: q}]}\n", "lists the SAE id 'a' twice"),
    ("r: {repo_id: justaname, model: m, saes: [{id: a, path: p}]}\n", r"release 'r', SAE 'a': .*<org>/<name>"),
    ("r: {repo_id: 'bad repo!', model: m, saes: [{id: a, path: p}]}\n", "is not a Hugging Face repo id"),
    ("r: {repo_id: o/r, model: m, saes: [{id: a, path: ../up}]}\n", r"may not contain '\.\.'"),
    ("r: {repo_id: o/r, model: \"m\\n\", saes: []}\n", "holds control characters"),
    ("r: {repo_id: o/r, model: m, saes: [], config_overrides: [1]}\n", "config_overrides that are not a mapping"),
    ("r: {repo_id: o/r, model: m, saes: [], conversion_func: 3}\n", "conversion_func that is not a name"),
])
def test_a_malformed_yaml_names_the_release_and_field(tmp_path, home, text, message):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    with pytest.raises(SourceError, match=message) as e:
        list_source(YamlSource(url=str(path)), home)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_yaml_that_is_not_there(tmp_path, home):
    with pytest.raises(SourceError, match="does not exist; fix the path"):
        list_source(YamlSource(url=str(tmp_path / "nope.yaml")), home)


# -- the text form of a source ----------------------------------------------------------------------------------------
def test_parse_source_forms():
    assert parse_source("registry:gpt2-small") == RegistrySource(models=("gpt2-small",), releases=("*",))
    r = parse_source(" registry:gpt2-small, pythia*:gpt2-small-res-jb,x ")
    assert (r.models, r.releases, r.label) == (("gpt2-small", "pythia*"), ("gpt2-small-res-jb", "x"),
                                               "registry:gpt2-small,pythia*:gpt2-small-res-jb,x")
    assert parse_source("dir:/data/saes") == FolderSource(url="/data/saes")
    assert parse_source("dir:s3://bucket/saes").label == "dir:s3://bucket/saes"
    assert parse_source("yaml:memory://x/lab.yaml") == YamlSource(url="memory://x/lab.yaml")
    assert parse_source("hub:author=jbloom") == HubSource(author="jbloom")
    h = parse_source(" hub:library=saelens, repo=*gpt2*,repo=my-lab/*, model=gpt2-small ")
    assert (h.author, h.library, h.repos, h.models) == (None, "saelens", ("*gpt2*", "my-lab/*"), ("gpt2-small",))
    assert h.label == "hub:library=saelens,repo=*gpt2*,repo=my-lab/*,model=gpt2-small"
    assert parse_source(h.label) == h  # a label reads back as its source
    assert parse_source("hub:author=my-lab,library=saelens").label == "hub:author=my-lab,library=saelens"


@pytest.mark.parametrize("text, message", [
    ("", "cannot read source"), ("registry", "cannot read source"), ("registry:", "cannot read source"),
    ("registry: , ", "empty pattern list"), ("ftp:/x", "unknown source kind 'ftp'"),
    ("dir:/a\nb", "control characters"),
    ("hub:", "cannot read source"), ("hub:jbloom", r"cannot read 'jbloom' in hub:jbloom: write <key>=<value> pairs"),
    ("hub:author=", "cannot read 'author='"), ("hub:owner=x", "keys author, library, repo, model"),
    ("hub:repo=x/*", "needs author=<name> or library=<tag>"), ("hub:author=a,author=b", "names author= twice"),
    ("hub:author=bad name", "not a Hub user, organisation or tag name"),
    ("hub:author=a,model=x\ty", "control characters"),
])
def test_parse_source_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_source(text)


# -- the SAELens registry shipped with sae_lens ----------------------------------------------------------------------
def test_the_shipped_registry_parsed_and_filtered(home, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("listing the registry used the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    directory = get_pretrained_saes_directory()
    expected = []
    for release, info in directory.items():  # brute force, beside the listing's own filter
        if info.model == "gpt2-small":
            expected += [(release, sae_id) for sae_id in info.saes_map]
    listing = list_source(parse_source("registry:gpt2-small"), home)
    print(f"\nthe SAELens registry of sae_lens lists {len(listing.found)} gpt2-small SAEs "
          f"({len({f.release for f in listing.found})} releases)")
    assert len(listing.found) > 0 and [(f.release, f.sae_id) for f in listing.found] == expected
    releases = tuple(directory)
    assert all(split_registry(f.spec, releases) == (f.release, f.sae_id) for f in listing.found)
    assert {f.model for f in listing.found} == {"gpt2-small"} and listing.unreadable == []
    jb = list_source(parse_source("registry:gpt2-small:gpt2-small-res-jb"), home).found
    assert [f.sae_id for f in jb] == list(directory["gpt2-small-res-jb"].saes_map)
    assert all(f.hook == f.sae_id and f.content_hash is None for f in jb)  # the ids are hook names; nothing cached
    both = list_source(parse_source("registry:gpt2-small:gpt2-small-res-jb*"), home).found
    assert {f.release for f in both} == {"gpt2-small-res-jb", "gpt2-small-res-jb-feature-splitting"}
    assert list_source(parse_source("registry:no-such-model*"), home).found == []


def test_a_dry_run_lists_a_remote_folder_without_writing_under_sage_home(tmp_path, home):
    """`sage watch --dry-run` changes nothing (issue 27): a remote folder's SAE is hashed in a temporary copy outside
    SAGE_HOME, not snapshotted into it; its hash and spec are the ones a real run gives."""
    local = _save(tmp_path / "a")
    base = f"memory://dry-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for f in FILES:
        fs.pipe_file(f"{base}/sae-a/{f}", (local / f).read_bytes())
    try:
        (dry,) = list_source(FolderSource(url=base), home, write=False).found
        assert not home.root.exists(), sorted(map(str, home.root.rglob("*")))
        (real,) = list_source(FolderSource(url=base), home).found
        assert (dry.content_hash, dry.spec) == (real.content_hash, real.spec) and is_complete(real.spec)
        assert list_source(FolderSource(url=base), home, write=False).found == [real]  # found through its note
    finally:
        fs.rm(base.removeprefix("memory://"), recursive=True)
