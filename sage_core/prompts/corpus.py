"""The built-in training corpus: task sentences (train split only) mixed with background sentences.

Background sentences use the same vocabulary in other contexts, so the model (and the SAEs trained on its
activations) see a wider distribution than the tasks alone. Test-split prompts never enter the corpus: task sentences
are drawn only from train-split attribute combinations.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from sage_core.prompts.task import Task
from sage_core.prompts.tasks.vocab import FEMALE_NAMES, MALE_NAMES, NOUNS, OBJECTS, PLACES

ADJECTIVES = ["big", "small", "old", "new", "red", "happy", "quiet", "busy"]
VERBS_PAST = ["saw", "liked", "found", "visited", "painted", "cleaned"]


class CorpusConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    n_task_sentences: int = Field(12_000, ge=1, description="per task")
    n_background: int = Field(12_000, ge=0)
    seed: int = 0


def background_vocabulary() -> set[str]:
    words = {"The", "the", "is", "are", "near", "said", "that", "he", "she", "In", "and", "walked", "to", "went",
             "gave", ".", ",", "was", "very", "because", "a"}
    words |= set(ADJECTIVES) | set(VERBS_PAST) | set(MALE_NAMES) | set(FEMALE_NAMES) | set(PLACES) | set(OBJECTS)
    words |= {w for pair in NOUNS for w in pair}
    return words


def background_sentence(rng: random.Random) -> str:
    """One sentence from a small grammar that keeps agreement and pronoun gender consistent with the tasks."""
    male = rng.random() < 0.5
    name = rng.choice(MALE_NAMES if male else FEMALE_NAMES)
    other = rng.choice([n for n in MALE_NAMES + FEMALE_NAMES if n != name])
    sg, pl = rng.choice(NOUNS)
    k = rng.randrange(8)
    if k == 0:
        return f"{name} {rng.choice(VERBS_PAST)} the {sg} near the {rng.choice(PLACES)}."
    if k == 1:
        return f"The {sg} near the {rng.choice(PLACES)} is {rng.choice(ADJECTIVES)}."
    if k == 2:
        return f"The {pl} are very {rng.choice(ADJECTIVES)}."
    if k == 3:
        return f"{name} said that {'he' if male else 'she'} {rng.choice(VERBS_PAST)} the {rng.choice(OBJECTS)}."
    if k == 4:
        return f"In {rng.randrange(11, 19)}{rng.randrange(0, 100):02d}, {name} went to the {rng.choice(PLACES)}."
    if k == 5:
        return f"{name} and {other} walked to the {rng.choice(PLACES)}."
    if k == 6:
        return f"{name} gave the {rng.choice(OBJECTS)} to {other}."
    return f"The {pl} near the {sg} are {rng.choice(ADJECTIVES)}."


def task_sentence(task: Task, rng: random.Random, seed: int) -> str:
    """A train-split prompt of `task` followed by its continuation."""
    while True:
        a = task.sample(rng)
        if task.split_of(a, seed) == "train":
            return task.render(a) + task.answer_prefix + task.continuation(a, rng)


def build_corpus(tasks: list[Task], cfg: CorpusConfig, dataset_seed: int) -> list[str]:
    """Shuffled list of sentences. `dataset_seed` is the prompt datasets' seed, which fixes the train/test split."""
    rng = random.Random(f"corpus:{cfg.seed}")
    lines = [task_sentence(t, rng, dataset_seed) for t in tasks for _ in range(cfg.n_task_sentences)]
    lines += [background_sentence(rng) for _ in range(cfg.n_background)]
    rng.shuffle(lines)
    return lines
