"""Planning scoring units: a bracket whose projector is the identity is scored once (issue #15 item 7)."""

from sage_core.config import EvaluateConfig
from sage_core.ground_truth.sections import CrossSection


def _sae(name: str) -> dict:
    return {"spec": f"zoo:{name}", "name": name, "hook": name.split("--")[0], "source": "zoo"}


SAES = [_sae("blocks.0.hook_resid_pre--topk-512"), _sae("blocks.0.hook_resid_mid--topk-512")]
SECTIONS = [CrossSection(hook="blocks.0.hook_attn_out", head=None, role="END")]


def _mappings(same=frozenset()) -> list[str]:
    from flows.evaluate import plan_units

    return sorted(u.mapping for u in plan_units(SAES, SECTIONS, EvaluateConfig(), same) if u.kind == "trained"
                  and u.mapping != "native")


def test_both_mappings_are_planned_where_the_projector_is_not_the_identity():
    assert _mappings() == ["difference", "projection"]


def test_a_bracket_whose_projector_is_the_identity_is_scored_once_as_projection():
    from flows.evaluate import plan_units
    from sage_core.scoring import mapping as mp

    bracket = mp.bracket(SECTIONS[0].hook)
    units = plan_units(SAES, SECTIONS, EvaluateConfig(), frozenset({bracket}))
    assert sorted(u.mapping for u in units if u.kind == "trained" and u.mapping != "native") == ["projection"]
