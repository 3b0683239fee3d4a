"""Planning scoring units: a bracket whose projector is the identity is scored once (issue #15 item 7); units carry
typed SAE references and are named for the Prefect UI (issue #16)."""

from sage_core.config import EvaluateConfig
from sage_core.ground_truth.sections import CrossSection
from storage.refs import SAERef


def _sae(name: str) -> SAERef:
    return SAERef(spec=f"zoo:{name}", name=name, hook=name.split("--")[0], hash=f"h-{name}", arch="topk", d_sae=512,
                  d_in=64, source="zoo")


SAES = [_sae("blocks.0.hook_resid_pre--topk-512"), _sae("blocks.0.hook_resid_mid--topk-512")]
SECTIONS = [CrossSection(hook="blocks.0.hook_attn_out", head=None, role="END")]


def _mappings(same=frozenset()) -> list[str]:
    from tasks.plan import plan_units

    return sorted(u.mapping for u in plan_units(SAES, SECTIONS, EvaluateConfig(), same) if u.kind == "trained"
                  and u.mapping != "native")


def test_both_mappings_are_planned_where_the_projector_is_not_the_identity():
    assert _mappings() == ["difference", "projection"]


def test_a_bracket_whose_projector_is_the_identity_is_scored_once_as_projection():
    from sage_core.scoring import mapping as mp
    from tasks.plan import plan_units

    bracket = mp.bracket(SECTIONS[0].hook)
    units = plan_units(SAES, SECTIONS, EvaluateConfig(), frozenset({bracket}))
    assert sorted(u.mapping for u in units if u.kind == "trained" and u.mapping != "native") == ["projection"]


def test_units_hold_sae_references_and_short_names():
    from tasks.plan import plan_units

    units = {u.name: u for u in plan_units(SAES, SECTIONS, EvaluateConfig())}
    native = units["blocks.0.hook_resid_pre--topk-512"]
    assert native.saes == (SAES[0],) and isinstance(native.saes[0], SAERef)
    assert native.label == "L0.resid_pre--topk-512"
    pair = units["topk-512:projection[L0.resid_pre->L0.resid_mid]"]
    assert pair.saes == tuple(SAES) and pair.bracket == ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid")
    assert pair.label == pair.name and units["control:oracle"].saes == ()


def test_a_unit_reaches_only_its_own_places():
    from tasks.plan import plan_units

    units = {u.name: u for u in plan_units(SAES, SECTIONS, EvaluateConfig())}
    resid = CrossSection(hook="blocks.0.hook_resid_pre", role="END")
    head = CrossSection(hook="blocks.0.attn.hook_z", head=1, role="END")
    assert units["blocks.0.hook_resid_pre--topk-512"].reaches(resid)
    assert not units["blocks.0.hook_resid_mid--topk-512"].reaches(resid)
    assert units["topk-512:projection[L0.resid_pre->L0.resid_mid]"].reaches(head)
    assert not units["topk-512:difference[L0.resid_pre->L0.resid_mid]"].reaches(head)
    assert units["control:random"].reaches(head) and units["control:oracle"].reaches(resid)


def test_sae_families():
    from tasks.plan import sae_family

    assert sae_family(SAES[0]) == "topk-512"
    reg = SAERef(spec="gpt2-small-res-jb/blocks.3.hook_resid_pre", name="gpt2-small-res-jb/blocks.3.hook_resid_pre",
                 hook="blocks.3.hook_resid_pre", hash="x", arch="standard", d_sae=24576, d_in=768, source="registry")
    assert sae_family(reg) == "gpt2-small-res-jb"
    own = SAERef(spec="/saes/a", name="a", hook="blocks.0.hook_resid_pre", hash="y", arch="jumprelu", d_sae=32,
                 d_in=8, source="dir")
    assert sae_family(own) == "jumprelu-32"


def test_task_run_names_say_what_a_run_does():
    from storage.refs import DatasetRef
    from tasks import plan, report, score
    from tasks.plan import plan_units

    unit = next(u for u in plan_units(SAES, SECTIONS, EvaluateConfig()) if u.mapping == "native")
    work = score.SAEWork(name=SAES[0].name, sae=SAES[0], jobs=(score.UnitJob(unit=unit, task="ioi"),
                                                               score.UnitJob(unit=unit, task="sva")))
    assert score._work_name({"work": work}) == "score L0.resid_pre--topk-512 on ioi, sva + core"
    controls = score.SAEWork(name="controls", jobs=(score.UnitJob(unit=unit, task="ioi"),))
    assert score._work_name({"work": controls}) == "score controls on ioi"
    ds = DatasetRef(path="datasets/ioi/k/prompts.parquet", hash="d", task="ioi")
    assert score._references_name({"dataset": ds}) == "references ioi"
    assert plan._plan_name({"tasks": ["ioi", "gender", "sva", "capital"]}) == "plan-units 4 tasks"
    assert report._leaderboard_name({"run": "nightly"}) == "leaderboard nightly"
    assert report._leaderboard_name({"run": None, "model_label": "gpt2", "n_saes": 3}) == "leaderboard gpt2, 3 SAEs"
    assert score.resolve_sae.task_run_name.format(spec="zoo:x") == "resolve zoo:x"


def test_one_dispatched_unit_per_sae_holds_its_units_on_every_task_and_the_pairs_it_closes():
    from sage_core.model.capture import CaptureRequest
    from storage.refs import GroundTruthPartRef
    from tasks.plan import ScoringPlan, TaskPlan, plan_units, sae_works

    units = tuple(plan_units(SAES, SECTIONS, EvaluateConfig()))
    part = GroundTruthPartRef(path="ground_truth/p", hash="g", task="ioi", section=SECTIONS[0])
    tps = tuple(TaskPlan(task=t, parts=(part,), request=CaptureRequest(hooks=("x",), positions="roles"), units=units)
                for t in ("ioi", "sva"))
    works = sae_works(ScoringPlan(units=units, tasks=tps), SAES)
    assert [w.name for w in works] == [s.name for s in SAES] + ["controls"]
    by = {w.name: w for w in works}
    first, second = by[SAES[0].name], by[SAES[1].name]
    assert first.sae == SAES[0] and {(j.unit.name, j.task) for j in first.jobs} == {(SAES[0].name, "ioi"),
                                                                                  (SAES[0].name, "sva")}
    # a pair goes with its later SAE: each (unit, task) is dispatched exactly once
    assert {j.unit.mapping for j in second.jobs} == {"native", "projection", "difference"}
    every = [(j.unit.name, j.task) for w in works for j in w.jobs]
    assert sorted(every) == sorted((u.name, t) for u in units for t in ("ioi", "sva"))
    assert by["controls"].sae is None and {j.unit.kind for j in by["controls"].jobs} == {"oracle", "random"}
    # an SAE that reaches no task still gets its core metrics
    alone = sae_works(ScoringPlan(units=units, tasks=()), SAES[:1])
    assert [(w.name, w.jobs) for w in alone] == [(SAES[0].name, ())]


def test_the_plan_task_gives_each_task_the_units_that_reach_it(monkeypatch, tmp_path):
    """ioi keeps layer 0's attn_out, whose projector is made the identity here (no difference unit), sva keeps
    resid_pre, gender kept nothing."""
    from storage.refs import GroundTruthPartRef, GroundTruthRef, ModelRef
    from tasks import plan

    asked = []
    monkeypatch.setattr(plan.loaded, "shared_model", lambda home, model: "weights")
    monkeypatch.setattr(plan.mp, "projection_is_difference",
                        lambda weights, *bracket: asked.append((weights, bracket)) or True)
    attn, resid = SECTIONS[0], CrossSection(hook="blocks.0.hook_resid_pre", role="END")
    parts = {t: GroundTruthPartRef(path=f"ground_truth/{t}", hash=t, task=t, section=c)
             for t, c in (("ioi", attn), ("sva", resid))}
    gt = GroundTruthRef(path="ground_truth/x", hash="x", parts=tuple(parts.values()))
    got = plan.plan_scoring.fn(SAES, gt, ["ioi", "sva", "gender"], ModelRef(path="models/m", hash="m"),
                               EvaluateConfig(), str(tmp_path))
    pre, mid = SAES[0].name, SAES[1].name
    pair = "topk-512:projection[L0.resid_pre->L0.resid_mid]"
    assert asked == [("weights", ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid"))]
    assert [u.name for u in got.units] == [pre, mid, pair, "control:oracle", "control:random"]
    by = {tp.task: tp for tp in got.tasks}
    assert list(by) == ["ioi", "sva"] and got.empty == ("gender",)
    assert [u.name for u in by["ioi"].units] == [pair, "control:oracle", "control:random"]
    assert by["ioi"].request.hooks == ("blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_pre")
    assert by["ioi"].parts == (parts["ioi"],) and by["ioi"].request.positions == "roles"
    assert [u.name for u in by["sva"].units] == [pre, "control:oracle", "control:random"]
    assert by["sva"].request.hooks == ("blocks.0.hook_resid_pre",)
    assert list(got.unreached) == [{"sae": pre, "task": "ioi", "hook": SAES[0].hook},
                                   {"sae": mid, "task": "ioi", "hook": SAES[1].hook},
                                   {"sae": mid, "task": "sva", "hook": SAES[1].hook}]
