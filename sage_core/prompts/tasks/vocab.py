"""The built-in tasks' vocabularies: every item is one token for the built-in word-level tokenizer (a published
tokenizer keeps the items it spells as one token in context: `sage_core.prompts.adapt`)."""

from __future__ import annotations

import random

from sage_core.prompts.task import TaskError

MALE_NAMES = ["John", "James", "Robert", "Michael", "David", "Thomas", "Daniel", "Paul", "Mark", "George",
              "Kevin", "Brian", "Edward", "Jacob", "Peter", "Henry"]
FEMALE_NAMES = ["Mary", "Sarah", "Linda", "Susan", "Karen", "Lisa", "Nancy", "Emma", "Anna", "Laura",
                "Alice", "Rachel", "Julia", "Grace", "Helen", "Kate"]
PLACES = ["store", "garden", "school", "park", "station", "office", "market", "beach", "library", "restaurant"]
OBJECTS = ["drink", "book", "ring", "kiss", "bone", "basketball", "computer", "necklace", "flower", "letter"]
# (singular, plural): both forms are single tokens
NOUNS = [("key", "keys"), ("dog", "dogs"), ("teacher", "teachers"), ("box", "boxes"), ("car", "cars"),
         ("book", "books"), ("bird", "birds"), ("girl", "girls"), ("boy", "boys"), ("cat", "cats"),
         ("table", "tables"), ("window", "windows"), ("doctor", "doctors"), ("chair", "chairs"),
         ("farmer", "farmers"), ("picture", "pictures")]
EVENTS = ["war", "expedition", "drought", "reign", "project", "famine", "strike", "voyage", "siege", "festival"]


def other_value(rng: random.Random, pool: list[str], exclude: set[str]) -> str:
    choices = [x for x in pool if x not in exclude]
    if not choices:
        raise TaskError("vocabulary too small to draw a counterfactual value; add more items")
    return rng.choice(choices)
