"""Where a dictionary lives, as a plain value: importing it costs no torch or TransformerLens, so the typed references
(`storage.refs`) and every command that only reads outputs stay light."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CrossSection(BaseModel):
    """A place a dictionary lives: a hook, optionally one head of it, at one role position."""

    model_config = ConfigDict(frozen=True)
    hook: str
    head: int | None = None
    role: str

    @property
    def label(self) -> str:
        head = f".H{self.head}" if self.head is not None else ""
        return f"{self.hook}{head}@{self.role}"
