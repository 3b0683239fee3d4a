"""`adapt_task` encodes each distinct probe text once, in one batch, and reads each field's words once per task: the
probes it finds (which items each uses, which fail) must be exactly those of probing one prompt at a time."""

from __future__ import annotations

import random

import pytest

from sage_core.prompts import adapt
from sage_core.prompts.adapt import adapt_task
from sage_core.prompts.library import TASKS, get_task
from sage_core.prompts.task import TaskError, token_faults
from tests.tokenizers import gpt2_tokenizer

N = 150  # probes per task: a few hundred prompts, enough to meet GPT-2's splits


def _reference_probes(task, tokenizer, n_probes: int, seed: int):
    """The per-probe path, brute force: draw, tokenise with the tokenizer itself, rebuild the word sets each time."""

    def words(field):
        value = getattr(task, field)
        return set(value.values()) if isinstance(value, dict) else adapt.item_words(value)

    def implicated(a):
        used = [(f, a.slots[s]) for s, fields in task.slot_fields.items() if s in a.slots for f in fields
                if a.slots[s] in words(f)]
        used += [x for w in task.answers(a) for x in task.answer_items(a, w)]
        bad = set()
        for fault in token_faults(task, a, tokenizer):
            if fault.slot is None:
                bad |= set(task.answer_items(a, fault.word))
            else:
                bad |= {(f, fault.word) for f in task.slot_fields.get(fault.slot, ()) if fault.word in words(f)}
        return used, bad

    rng = random.Random(f"adapt:{task.name}:{seed}")
    probes = []
    for _ in range(n_probes):
        a = task.sample(rng)
        probes.append(implicated(a))
        for spec in task.attributes:
            probes.append(implicated(task.counterfactual(a, spec.name, rng)))
    return probes


class Counting:
    """A tokenizer that counts its calls; `batch=False` refuses a list of texts (a tokenizer without a batch API)."""

    def __init__(self, tokenizer, batch: bool = True):
        self.tokenizer, self.batch, self.single, self.batches = tokenizer, batch, 0, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, **kw):
        if isinstance(text, list):
            if not self.batch:
                raise TypeError("one text at a time")
            self.batches += 1
        else:
            self.single += 1
        return self.tokenizer(text, **kw)


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.prompts.corpus import background_vocabulary

    every = set().union(*(get_task(n).vocabulary() for n in TASKS)) | background_vocabulary()
    # GPT-2 splits some years and names; the word tokenizer lacks a name, a noun, an answer word and a year
    return {"builtin": tokenizer, "gpt2": gpt2_tokenizer(),
            "lacking": build_tokenizer(every - {"Mary", "keys", "she", "33"})}


@pytest.mark.parametrize("family", ["builtin", "gpt2", "lacking"])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_batched_probes_are_the_per_probe_ones(tokenizers, family, name):
    task, tok = get_task(name), Counting(tokenizers[family])
    probes = adapt._probes(task, tok, N, seed=3)
    assert probes == _reference_probes(task, tokenizers[family], N, seed=3)
    # every text came from one batch call: none was encoded on its own
    assert tok.batches == 1 and tok.single == 0


def test_faults_are_found_and_the_adaptation_matches_the_reference(tokenizers):
    task, tok = get_task("greater_than"), tokenizers["gpt2"]
    ref = _reference_probes(task, tok, N, 0)
    assert any(bad for _, bad in ref)  # the comparison above meets failing probes, not only clean ones
    assert adapt._drop_order(adapt._probes(task, tok, N, 0)) == adapt._drop_order(ref)
    lacking = adapt_task(get_task("ioi"), tokenizers["lacking"], n_probes=N)[1]
    assert lacking.dropped == {"names": ["Mary"]}


def test_a_tokenizer_without_a_batch_api_gives_the_same_probes(tokenizers):
    task, tok = get_task("gendered_pronoun"), Counting(tokenizers["lacking"], batch=False)
    assert adapt._probes(task, tok, N, 1) == _reference_probes(task, tokenizers["lacking"], N, 1)
    assert adapt_task(task, tok, n_probes=N) == adapt_task(task, tokenizers["lacking"], n_probes=N)


def test_a_failure_is_raised_at_the_probe_where_it_stood(tokenizer):
    class Slow:  # no offsets: token_faults refuses it on the first probe, before any later draw fails
        bos_token_id = tokenizer.bos_token_id
        is_fast = False

        def __call__(self, text, **kw):
            return tokenizer(text, **kw)

    close = get_task("greater_than", years=[40, 41, 42, 43, 44])  # its YY counterfactual cannot be drawn
    with pytest.raises(TaskError, match="fast"):
        adapt_task(close, Slow())
    with pytest.raises(TaskError, match="no year at least 10"):
        adapt_task(close, tokenizer)


def test_probes_with_the_same_text_but_other_attributes_stay_apart(tokenizers):
    # "Alex" is male and female: the same prompt text with the answers the other way round
    both = get_task("gendered_pronoun", male=["John", "James", "Robert", "Alex", "Paul"],
                    female=["Sarah", "Linda", "Alex", "Kate", "Anna"])
    probes = adapt._probes(both, tokenizers["lacking"], N, 0)
    assert probes == _reference_probes(both, tokenizers["lacking"], N, 0)
    # Alex's prompts come with either answer first: a probe keyed on its text alone would give one order to both
    he, she = ("pronouns", "he"), ("pronouns", "she")
    assert {tuple(used[-2:]) for used, _ in probes if ("male", "Alex") in used} == {(he, she), (she, he)}
