"""Typed configuration of a zoo build (the built-in model, its data and its SAEs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sage_core.locate.config import LocateConfig
from sage_core.model.transformer import ModelConfig, TrainConfig
from sage_core.prompts.corpus import CorpusConfig
from sage_core.prompts.corpus_spec import (
    DEFAULT_CONTEXT,
    DEFAULT_TOKENS,
    PRETRAINED_DEFAULT,
    SYNTAX,
    CorpusSpec,
    default_spec,
)
from sage_core.prompts.task_status import MIN_ACCURACY
from sage_core.scoring.score import ScoreConfig
from sage_core.zoo.spec import SAESpec

DEVICE_HELP = ("where models, SAEs and dictionaries run: cpu, cuda (every GPU), cuda:N[,cuda:M...] or auto (every "
               "visible GPU, else the CPU); never part of a result's key")


class PromptsConfig(BaseModel):
    """Per-task prompt datasets (clean prompts; each gets one counterfactual per attribute)."""

    model_config = ConfigDict(frozen=True)
    n_train: int = Field(512, ge=1)
    n_test: int = Field(256, ge=1)
    seed: int = 0


class SAEZooConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    widths: tuple[int, ...] = Field((2, 4), description="dictionary sizes as multiples of d_model")
    n_tokens: int = Field(150_000, ge=1024, description="activations per hook the SAEs train on")
    n_eval_tokens: int = Field(20_000, ge=256, description="held-out activations for explained variance, L0, dead")
    n_ce_sequences: int = Field(1024, ge=1, description="held-out sentences for CE loss recovered")
    epochs: float = 2.0
    include_sublayer: bool = True
    extra: tuple[SAESpec, ...] = Field((), description="more SAEs to train beside the default zoo")


class ZooConfig(BaseModel):
    """Everything `build_zoo` needs; its hash addresses the results."""

    model_config = ConfigDict(frozen=True)
    tasks: tuple[str, ...] = ("ioi", "greater_than", "gendered_pronoun", "sva")
    prompts: PromptsConfig = PromptsConfig()
    corpus: CorpusConfig = CorpusConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    saes: SAEZooConfig = SAEZooConfig()
    heldout_fraction: float = Field(0.05, gt=0, lt=0.5, description="corpus share held out for SAE evaluation")
    device: str = Field("auto", description=DEVICE_HELP)

    def check_tasks(self, names) -> None:
        """One line naming the first of `names` this zoo has no prompts for (the CLI and the flows ask the same)."""
        unknown = [t for t in names or () if t not in self.tasks]
        if unknown:
            raise ValueError(f"task {unknown[0]!r} is not one of the zoo's tasks {list(self.tasks)}")

    @classmethod
    def tiny(cls) -> ZooConfig:
        """A seconds-long build for tests: same pipeline, toy sizes."""
        return cls(
            tasks=("ioi", "sva"),
            prompts=PromptsConfig(n_train=16, n_test=16),
            corpus=CorpusConfig(n_task_sentences=200, n_background=200),
            model=ModelConfig(name="sage-test", d_model=32, n_layers=1, n_heads=2, d_head=16, d_mlp=64),
            train=TrainConfig(steps=20, batch_size=32),
            saes=SAEZooConfig(widths=(2,), n_tokens=2048, n_eval_tokens=256, epochs=1.0),
        )


class EvaluateConfig(BaseModel):
    """Everything `evaluate` needs beyond the SAEs' own files: which zoo (model), tasks, how to locate, fit, score."""

    model_config = ConfigDict(frozen=True)
    zoo: ZooConfig = ZooConfig()
    pretrained: str | None = Field(None, description="a TransformerLens model name (HookedTransformer.from_pretrained) "
                                                     "to evaluate instead of the built-in model; needs `saes`")
    saes: tuple[str, ...] = Field((), description="SAE specs (zoo:<name>, a directory, release/sae_id, "
                                                  "py:module:attr); empty = every SAE of the built-in zoo")
    tasks: tuple[str, ...] | None = Field(None, description="a subset of the zoo's tasks (default: all)")
    locate: LocateConfig = LocateConfig()
    per_group: int = Field(2, ge=1, description="kept cross-sections per attribute and group (residual/sub-layer)")
    score: ScoreConfig = ScoreConfig()
    core_sequences: int = Field(256, ge=1, description="held-out background sentences for the core metrics")
    corpus: str | None = Field(None, description=f"the text the core metrics are computed on: {SYNTAX} (default: "
                                                 f"builtin for the built-in model, {PRETRAINED_DEFAULT} for a "
                                                 "pretrained one)")
    corpus_tokens: int = Field(DEFAULT_TOKENS, ge=2, description="tokens of a text: or hf: corpus the core metrics "
                                                                "read (its first N, in whole sequences)")
    corpus_context: int = Field(DEFAULT_CONTEXT, ge=2, description="tokens per sequence of a text: or hf: corpus, BOS "
                                                                  "first (at most the model's n_ctx)")
    min_task_accuracy: float = Field(MIN_ACCURACY, ge=0, le=1, description="a task runs when the model's accuracy on "
                                     "its held-out prompts reaches this (chance: 0.5); 0 runs every task the tokenizer "
                                     "poses (benchmarks on random weights, toy models)")
    projections: bool = Field(True, description="also score residual SAE families projected onto sub-layer places")
    controls: bool = Field(True, description="oracle and random-decoder reference rows")
    device: str = Field("auto", description=DEVICE_HELP)

    @field_validator("corpus")
    @classmethod
    def _corpus_parses(cls, v: str | None) -> str | None:
        return None if v is None else str(CorpusSpec.parse(v))

    def core_corpus(self) -> CorpusSpec:
        """The corpus of the core metrics: the one given, else the default for this model."""
        return CorpusSpec.parse(self.corpus or default_spec(self.pretrained))

    def model_zoo(self) -> ZooConfig:
        """The zoo config every stage runs under (on this evaluation's device): the built-in zoo, or for a pretrained
        model the same tasks, prompt and corpus settings with the model's own zoo directory name (no model or SAEs
        are trained for it)."""
        zoo = self.zoo.model_copy(update={"device": self.device})
        if self.pretrained is None:
            return zoo
        return zoo.model_copy(update={"model": zoo.model.model_copy(
            update={"name": pretrained_dir_name(self.pretrained)})})


def pretrained_dir_name(name: str) -> str:
    """A pretrained model's directory under zoo/ ("EleutherAI/pythia-70m" -> "EleutherAI__pythia-70m")."""
    return name.replace("/", "__")


class WatchConfig(BaseModel):
    """A watch run: how each group of new SAEs is evaluated (`evaluate`: the zoo, tasks, scoring and device; its
    `saes` and `pretrained` are set per group by the watch), how long a claim holds, how many SAEs one run takes on."""

    model_config = ConfigDict(extra="forbid")
    evaluate: EvaluateConfig = EvaluateConfig()
    lease_hours: float = Field(12.0, gt=0, description="a claim older than this is taken to belong to a dead run")
    max_new: int | None = Field(None, ge=1, description="evaluate at most this many new SAEs per run; the rest wait "
                                                        "for the next run (default: all)")

    @classmethod
    def tiny(cls) -> WatchConfig:
        return cls(evaluate=EvaluateConfig(zoo=ZooConfig.tiny(), min_task_accuracy=0.0))
