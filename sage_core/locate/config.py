"""How the location search is set up, as plain values: importing them costs no torch or TransformerLens, so the
configs (`sage_core.config`) and every command that only reads outputs stay light."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SUBLAYER_KINDS = ("head", "attn_out", "mlp_out")
RESID_KINDS = ("resid_pre", "resid_post")


class LocateConfig(BaseModel):
    """How to search for an attribute's cross-sections."""

    model_config = ConfigDict(frozen=True)
    split: str = Field("train", description="prompts the search uses (ground truth is judged on test prompts later)")
    n_pairs: int = Field(128, ge=2, description="counterfactual pairs per attribute")
    share: float = Field(0.8, gt=0, le=1, description="keep the smallest set covering this share of total |AtP|")
    cap: int = Field(8, ge=1, description="at most this many kept components per group (residual / sub-layer)")
    ig_steps: int = Field(4, ge=1, description="1 = plain AtP (2 forward + 1 backward per batch); more = AtP-IG")
    kinds: tuple[str, ...] = (*SUBLAYER_KINDS, *RESID_KINDS)
    n_validate_top: int = Field(12, ge=0, description="real patching of the top-N by |AtP| per group")
    n_validate_random: int = Field(12, ge=0, description="... and of this many random others per group")
    batch_size: int = 64
    seed: int = 0
