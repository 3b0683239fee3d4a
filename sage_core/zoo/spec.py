"""One SAE of the zoo as a plain value: importing it costs no torch, SAELens or TransformerLens, so the configs
(`sage_core.config`) and every command that only reads outputs stay light."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Architecture = Literal["standard", "topk", "jumprelu"]


class ZooError(ValueError):
    """An SAE spec does not fit the model; the message says what to fix."""


class SAESpec(BaseModel):
    """One SAE of the zoo. Sparsity knobs not used by the architecture are ignored (but still hashed)."""

    model_config = ConfigDict(frozen=True)
    hook: str
    architecture: Architecture = "topk"
    d_sae: int = Field(512, ge=1)
    k: int = Field(16, ge=1, description="TopK: active latents per token")
    # defaults tuned on the built-in model's activations (normalised to E||x|| = sqrt(d_in))
    l1_coefficient: float = Field(1.0, description="standard: L1 penalty")
    l0_coefficient: float = Field(1.0, description="JumpReLU: L0 penalty")
    jumprelu_init_threshold: float = 0.3
    # 3e-3 because the zoo's schedule is short (~300 steps): at 1e-3 every architecture was still far from converged,
    # a standard SAE most (L0 at IOI's END position 66 -> 25 -> 10 over 2/6/20 epochs, explained variance there 0.05),
    # TopK too (background EV 0.91 -> 0.98 at L0.resid_pre, END EV 0.65 -> 0.77 at L0.mlp_out); a JumpReLU threshold
    # moves ~lr per step. With L1 1.0 standard SAEs sit at background L0 8-33, beside TopK's 16 and JumpReLU's 22-34,
    # so the architectures are compared at similar sparsity
    lr: float = Field(3e-3, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = 1024
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.hook}--{self.architecture}-{self.d_sae}"
