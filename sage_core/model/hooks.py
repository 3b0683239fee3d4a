"""Hook names written short, for names people read (task runs, scoring units, reports, the CLI):
blocks.1.hook_resid_post -> L1.resid_post, blocks.0.attn.hook_z -> L0.attn.z."""

from __future__ import annotations

import re
from typing import Any

_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")


def short_hook(hook: str) -> str:
    """A TransformerLens block hook as L<layer>.<site>; any other name as it is."""
    m = _HOOK.fullmatch(hook)
    return f"L{m[1]}." + ".".join(p.removeprefix("hook_") for p in m[2].split(".")) if m else hook


def short_sae(name: str) -> str:
    """A zoo SAE's name with its hook written short: blocks.1.hook_resid_post--topk-4 -> L1.resid_post--topk-4."""
    hook, sep, rest = name.partition("--")
    return f"{short_hook(hook)}{sep}{rest}"


def short_section(section: Any) -> str:
    """A cross-section (hook, head, role) as L0.attn_out@S, or L0.attn.z.H1@END for one head."""
    head = f".H{section.head}" if section.head is not None else ""
    return f"{short_hook(section.hook)}{head}@{section.role}"
