"""Shared fixtures. Prefect gets a throwaway PREFECT_HOME before anything imports it."""

from __future__ import annotations

import os
import tempfile

from flows.quiet import quiet_prefect

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sage-prefect-home-"))
quiet_prefect(api_logs=False)
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.prompts.corpus import background_vocabulary
    from sage_core.prompts.library import TASKS, get_task

    words = background_vocabulary()
    for name in TASKS:
        words |= get_task(name).vocabulary()
    return build_tokenizer(words)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def tiny_zoo(prefect_harness, tmp_path_factory):
    """The --tiny zoo built twice by the flow: the second run without the flow's own record (which would end it at
    once), so it walks every task and every one is a cache hit."""
    from flows.build_zoo import build_zoo
    from flows.settings import results_in
    from sage_core.config import ZooConfig
    from storage.home import SageHome

    home = tmp_path_factory.mktemp("sage-home")
    cfg = ZooConfig.tiny()
    with results_in(SageHome(home)):
        first = build_zoo(cfg=cfg, home=str(home), return_state=True)
        SageHome(home).zoo_record(cfg.model.name).unlink()
        second = build_zoo(cfg=cfg, home=str(home), return_state=True)
    return home, cfg, first, second


@pytest.fixture(scope="session")
def gpt2_small_hf(tmp_path_factory):
    """A Hugging Face cache holding GPT-2 small's configuration and real tokenizer with random weights (500 MB, a few
    seconds: written once per session): (its root, the environment that makes `from_pretrained("gpt2")` read it)."""
    from tests.acceptance.hf_cache import write_gpt2_small

    root = tmp_path_factory.mktemp("gpt2-small-hf")
    return root, write_gpt2_small(root)
