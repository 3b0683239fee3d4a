"""The GPT-2-small-shaped Hugging Face cache of tests/acceptance/hf_cache.py (issue 24 item 6): the real
`HookedTransformer.from_pretrained("gpt2")` and `SAE.from_pretrained(release, sae_id)` read it offline, with GPT-2
small's shape and tokenizer, and an SAE release registered for the test. The loads run in a subprocess: huggingface_hub
and transformers read HF_HOME and HF_HUB_OFFLINE when imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.hf_cache import REVISION, registered_release, write_sae_release

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "sage-test-gpt2-small-res"
HOOK = "blocks.8.hook_resid_pre"
SAES = [(HOOK, HOOK, 768, 24576, "standard"), (f"{HOOK}-topk", HOOK, 768, 3072, "topk"),
        (f"{HOOK}-jumprelu", HOOK, 768, 3072, "jumprelu")]

LOAD = r"""
import json, sys
from sae_lens import SAE
from transformer_lens import HookedTransformer
from tests.acceptance.hf_cache import registered_release

entry = json.loads(sys.argv[1])
model = HookedTransformer.from_pretrained("gpt2", device="cpu")
tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
_, cache = model.run_with_cache(tokens, names_filter=sys.argv[2])
x = cache[sys.argv[2]][0, 1:]  # not BOS
out = {"cfg": {k: getattr(model.cfg, k) for k in ("n_layers", "d_model", "n_heads", "n_ctx", "d_vocab")},
       "mary": model.to_tokens(" Mary", prepend_bos=False)[0].tolist(), "bos": tokens[0, 0].item(), "saes": {}}
with registered_release(entry):
    for sae_id in entry["saes_map"]:
        sae = SAE.from_pretrained(entry["release"], sae_id, device="cpu")
        out["saes"][sae_id] = {"d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "hook": sae.cfg.metadata.hook_name,
                               "architecture": sae.cfg.architecture(),
                               "l0": (sae.encode(x) > 0).sum(-1).float().mean().item()}
print("RESULT " + json.dumps(out))
"""


def _clean_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without the user's Hugging Face settings, then `env`."""
    mine = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    return {**mine, **env}


@pytest.fixture(scope="module")
def release(gpt2_small_hf):
    root, env = gpt2_small_hf
    start = time.perf_counter()
    entry = write_sae_release(root, RELEASE, "gpt2", SAES, seed=0)
    print(f"SAE release written in {time.perf_counter() - start:.1f} s")
    return root, env, entry


def test_the_cache_holds_gpt2_small_and_its_tokenizer(gpt2_small_hf):
    from safetensors import safe_open

    root, env = gpt2_small_hf
    assert env == {"HF_HOME": str(root), "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1"}
    snap = root / "hub" / "models--gpt2" / "snapshots" / REVISION
    assert (root / "hub" / "models--gpt2" / "refs" / "main").read_text() == REVISION
    cfg = json.loads((snap / "config.json").read_text())
    assert {k: cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "n_ctx", "vocab_size", "bos_token_id",
                                "eos_token_id")} == {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024,
                                                     "n_ctx": 1024, "vocab_size": 50257, "bos_token_id": 50256,
                                                     "eos_token_id": 50256}
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["activation_function"] == "gelu_new"
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (snap / name).is_file(), name
    with safe_open(str(snap / "model.safetensors"), "pt") as f:
        wte = f.get_slice("transformer.wte.weight")
        assert wte.get_shape() == [50257, 768] and wte.get_dtype() == "F32"  # float32, as the real one


def test_transformer_lens_and_sae_lens_load_it_offline(release):
    root, env, entry = release
    r = subprocess.run([sys.executable, "-c", LOAD, json.dumps(entry), HOOK], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=_clean_env(env))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["cfg"] == {"n_layers": 12, "d_model": 768, "n_heads": 12, "n_ctx": 1024, "d_vocab": 50257}
    assert out["mary"] == [5335] and out["bos"] == 50256  # GPT-2's real tokenizer
    std = out["saes"][HOOK]
    assert (std["d_in"], std["d_sae"], std["hook"], std["architecture"]) == (768, 24576, HOOK, "standard")
    assert 1 <= std["l0"] <= 0.02 * 24576, std  # sane random weights: a moderate L0 on the model's activations
    topk = out["saes"][f"{HOOK}-topk"]
    assert topk["architecture"] == "topk" and topk["l0"] == 64
    jump = out["saes"][f"{HOOK}-jumprelu"]
    assert jump["architecture"] == "jumprelu" and 0 < jump["l0"] <= 0.02 * 3072, jump


def test_registered_release_is_taken_out_again(release):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    _, _, entry = release
    directory = get_pretrained_saes_directory()
    assert RELEASE not in directory
    with registered_release(entry) as lookup:
        assert directory[RELEASE] is lookup and lookup.repo_id == f"sage-test/{RELEASE}"
        assert lookup.saes_map[HOOK] == HOOK
    assert RELEASE not in directory
    shadowed = next(iter(directory))  # a release it shadows comes back
    before = directory[shadowed]
    with registered_release({**entry, "release": shadowed}):
        assert directory[shadowed] is not before
    assert directory[shadowed] is before
    with pytest.raises(RuntimeError), registered_release(entry):
        raise RuntimeError("a failing test")
    assert RELEASE not in directory
