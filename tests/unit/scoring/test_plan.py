"""Which scoring units run (sage_core/scoring/plan.py), against units worked out by hand for a small made-up set of
SAEs (plain objects, not storage references) and cross-sections."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from sage_core.ground_truth.sections import CrossSection
from sage_core.scoring import plan as sp

PRE, MID, POST = "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"


@dataclass(frozen=True)
class FakeSAE:
    name: str
    hook: str
    spec: str = ""
    source: str = "zoo"
    arch: str = "topk"
    d_sae: int = 64


def _zoo(hook: str) -> FakeSAE:
    return FakeSAE(name=f"{hook}--topk-64", hook=hook, spec=f"zoo:{hook}--topk-64")


Z0, Z1 = _zoo(PRE), _zoo(MID)
Z2 = _zoo("blocks.1.hook_resid_pre")  # the same tensor as blocks.0.hook_resid_post
M = _zoo("blocks.0.hook_mlp_out")  # a sub-layer SAE: native only
R = FakeSAE(name="rel/blocks.0.hook_resid_mid", hook=MID, spec="rel/blocks.0.hook_resid_mid", source="registry",
            arch="standard", d_sae=128)  # alone in its family: no pair
SAES = [Z0, Z1, Z2, M, R]
ATTN = CrossSection(hook="blocks.0.hook_attn_out", role="END")  # bracket (PRE, MID)
HEAD = CrossSection(hook="blocks.0.attn.hook_z", head=1, role="IO")  # the same bracket, at one head
MLP = CrossSection(hook="blocks.0.hook_mlp_out", role="END")  # bracket (MID, POST)
RESID = CrossSection(hook=POST, role="END")  # a residual place: no bracket
SECTIONS = [ATTN, HEAD, MLP, RESID]


def _rows(units) -> list[tuple]:
    return [(u.name, u.kind, u.mapping, tuple(s.name for s in u.saes), u.bracket) for u in units]


NATIVE = [(s.name, "trained", "native", (s.name,), None) for s in SAES]
CONTROLS = [("control:oracle", "oracle", "control", (), None), ("control:random", "random", "control", (), None)]


def test_families():
    assert sp.sae_family(Z2) == "topk-64"
    assert sp.sae_family(R) == "rel"
    assert sp.sae_family(FakeSAE(name="x", hook=PRE, spec="rel:blocks.0.hook_resid_pre", source="registry")) == "rel"
    assert sp.sae_family(FakeSAE(name="mine", hook=PRE, spec="/saes/mine", source="dir", arch="jumprelu",
                                 d_sae=32)) == "jumprelu-32"


def test_brackets_are_sorted_and_each_once():
    # the head and attn_out share one bracket; resid_mid sorts before resid_pre
    assert sp.sublayer_brackets(SECTIONS) == [(MID, POST), (PRE, MID)]
    assert sp.sublayer_brackets([RESID]) == []


def test_units_of_a_small_zoo():
    """Z2 sits at resid_pre of layer 1, which is resid_post of layer 0: it closes the MLP's bracket."""
    pairs = [(f"topk-64:{m}[{a}->{b}]", "trained", m, ends, bracket)
             for a, b, ends, bracket in (("L0.resid_mid", "L0.resid_post", (Z1.name, Z2.name), (MID, POST)),
                                         ("L0.resid_pre", "L0.resid_mid", (Z0.name, Z1.name), (PRE, MID)))
             for m in ("projection", "difference")]
    assert _rows(sp.plan_units(SAES, SECTIONS)) == NATIVE + pairs + CONTROLS
    # an identity projector: the bracket's difference unit would repeat its projection
    same = sp.plan_units(SAES, SECTIONS, same_as_difference=frozenset({(PRE, MID)}))
    assert _rows(same) == NATIVE + pairs[:3] + CONTROLS
    assert _rows(sp.plan_units(SAES, SECTIONS, projections=False, controls=False)) == NATIVE
    # no sub-layer cross-section: nothing to project onto
    assert _rows(sp.plan_units(SAES, [RESID])) == NATIVE + CONTROLS
    # a pair needs both ends of a bracket in one family
    assert _rows(sp.plan_units([Z0, R], SECTIONS)) == _rows(sp.plan_units([Z0, R], [])) == \
        [(s.name, "trained", "native", (s.name,), None) for s in (Z0, R)] + CONTROLS


def test_what_each_task_gets_and_how_it_is_dispatched():
    units = {u.name: u for u in sp.plan_units(SAES, SECTIONS)}
    proj = units["topk-64:projection[L0.resid_pre->L0.resid_mid]"]
    diff = units["topk-64:difference[L0.resid_pre->L0.resid_mid]"]
    oracle, random = units["control:oracle"], units["control:random"]
    # one head: the projection reaches it, the difference does not (it lives in the residual basis)
    head, head_hooks = sp.task_share(list(units.values()), [HEAD])
    assert head == (proj, oracle, random)
    assert head_hooks == ("blocks.0.attn.hook_z", MID, PRE)  # the section's hook and the pair's SAEs'
    attn, _ = sp.task_share(list(units.values()), [ATTN])
    assert attn == (proj, diff, oracle, random)
    # a residual place: the SAE whose hook names the same tensor, captured at both names
    resid, resid_hooks = sp.task_share(list(units.values()), [RESID])
    assert resid == (units[Z2.name], oracle, random) and resid_hooks == (POST, Z2.hook)
    assert [u.name for u in sp.unreached(units.values(), resid)] == [Z0.name, Z1.name, M.name, R.name]
    # a pair goes with its later SAE, a control with the controls; an SAE with no unit keeps an empty share
    jobs = [(u, "a") for u in head] + [(u, "b") for u in resid]
    assert sp.dispatch(jobs, [s.name for s in SAES]) == {
        Z0.name: [], Z1.name: [(proj, "a")], Z2.name: [(units[Z2.name], "b")], M.name: [], R.name: [],
        "controls": [(oracle, "a"), (random, "a"), (oracle, "b"), (random, "b")]}
    assert sp.dispatch([(units[Z0.name], "a")], [Z0.name]) == {Z0.name: [(units[Z0.name], "a")]}


def test_planning_is_pure():
    """Planning imports neither Prefect nor the storage layer."""
    code = ("import sys, sage_core.scoring.plan; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'storage', 'tasks', 'zarr'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
