"""Check a zoo config and list its SAEs before anything is trained: bad input fails here, in seconds."""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from sage_core.config import ZooConfig
from sage_core.model.tokenizer import build_tokenizer
from sage_core.model.transformer import build_model
from sage_core.prompts.corpus import background_vocabulary
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts
from sage_core.zoo.train import SAESpec, default_zoo, validate_specs


class ZooPlan(BaseModel):
    model_config = ConfigDict(frozen=True)  # shared between callers (`plan_zoo` keeps it)

    specs: tuple[SAESpec, ...]

    @property
    def hooks(self) -> list[str]:
        return sorted({s.hook for s in self.specs})


@lru_cache(maxsize=8)
def plan_zoo(cfg: ZooConfig) -> ZooPlan:
    """Raise a one-line error for an unknown task, prompts longer than n_ctx, or an SAE at a hook the model lacks.

    Kept per config (about a second: a tokenizer, every task's prompts, a skeleton model), so a command that checks
    its input, builds the zoo and plans its scoring plans once; a config that fails raises again each time."""
    tasks = [get_task(t) for t in cfg.tasks]
    words = background_vocabulary()
    for t in tasks:
        words |= t.vocabulary()
    tok = build_tokenizer(words)
    for t in tasks:
        generate_prompts(t, DatasetConfig(task=t.name, n_train=48, n_test=16, counterfactuals=False), tok,
                         max_len=cfg.model.n_ctx)
    skeleton = build_model(cfg.model, len(tok))
    specs = default_zoo(skeleton, cfg.saes.widths, cfg.saes.include_sublayer)
    specs = [s.model_copy(update={"epochs": cfg.saes.epochs}) for s in specs] + list(cfg.saes.extra)
    validate_specs(skeleton, specs)
    return ZooPlan(specs=tuple(specs))
