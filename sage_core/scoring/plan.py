"""Which scoring units an evaluation runs, pure (docs/METHOD.md §5): per SAE its native unit; per residual family
that brackets a sub-layer cross-section a projection unit and a difference unit; the two controls. Then, per task,
the units that reach one of its cross-sections and the hooks its capture must hold; and how the units are dispatched
(one work per SAE, the controls in one more).

The SAEs are whatever the caller resolved (`storage.refs.SAERef` in the tasks), read through `SAEFacts`; a `Unit`
holds them as given, so the tasks turn units into their typed form without a lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sage_core.ground_truth.cross_section import CrossSection
from sage_core.model.hooks import short_hook
from sage_core.scoring import mapping as mp
from sage_core.scoring.rows import Kind, MappingName

CONTROLS = "controls"  # the dispatched work that holds the control units


class SAEFacts(Protocol):
    """What planning reads of a resolved SAE."""

    @property
    def name(self) -> str: ...
    @property
    def hook(self) -> str: ...
    @property
    def spec(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def d_sae(self) -> int: ...


S = TypeVar("S", bound=SAEFacts)


@dataclass(frozen=True)
class Unit(Generic[S]):
    """One scoring unit: what one leaderboard row scores."""

    name: str
    kind: Kind
    mapping: MappingName
    saes: tuple[S, ...] = ()  # (sae,) native, (before, after) projected, () control
    bracket: tuple[str, str] | None = None


class UnitLike(Protocol):
    """A unit as `Unit` or the tasks' typed `ScoringUnit` hold it."""

    @property
    def kind(self) -> str: ...
    @property
    def mapping(self) -> str: ...
    @property
    def saes(self) -> Sequence[SAEFacts]: ...
    @property
    def bracket(self) -> tuple[str, str] | None: ...


U = TypeVar("U", bound=UnitLike)


def sae_family(s: SAEFacts) -> str:
    """SAEs of one family share everything but their hook: the zoo's `<hook>--<arch>-<width>`, a registry release,
    or architecture-width."""
    if "--" in s.name:
        return s.name.split("--", 1)[1]
    if s.source == "registry":
        return s.spec.replace(":", "/").split("/", 1)[0]
    return f"{s.arch}-{s.d_sae}"


def sublayer_brackets(sections: Iterable[CrossSection]) -> list[tuple[str, str]]:
    """The (before, after) residual hooks around every sub-layer cross-section, sorted, each once."""
    return sorted({mp.bracket(c.hook) for c in sections if mp.is_sublayer(c.hook)})


def plan_units(saes: Sequence[S], sections: Iterable[CrossSection], projections: bool = True, controls: bool = True,
               same_as_difference: frozenset[tuple[str, str]] = frozenset()) -> list[Unit[S]]:
    """Native units, projection / difference units for every residual family bracketing a sub-layer cross-section,
    and the two controls. A bracket in `same_as_difference` (P_c is the identity there) gets no `difference` unit: it
    would repeat the projection's figures row for row. Of a family's SAEs at one residual place (resid_pre of layer
    L > 0 is resid_post of L - 1) the last given brackets it."""
    units: list[Unit[S]] = [Unit(name=s.name, kind="trained", mapping="native", saes=(s,)) for s in saes]
    if projections:
        by_family: dict[str, dict[str, S]] = {}
        for s in saes:
            hook = mp.canonical_hook(s.hook)
            if "resid" in hook:
                by_family.setdefault(sae_family(s), {})[hook] = s
        brackets = sublayer_brackets(sections)
        for fam, members in sorted(by_family.items()):
            for before, after in brackets:
                if before in members and after in members:
                    for mapping in ("projection", "difference"):
                        if mapping == "difference" and (before, after) in same_as_difference:
                            continue
                        name = f"{fam}:{mapping}[{short_hook(before)}->{short_hook(after)}]"
                        units.append(Unit(name=name, kind="trained", mapping=mapping,
                                          saes=(members[before], members[after]), bracket=(before, after)))
    if controls:
        units += [Unit(name="control:oracle", kind="oracle", mapping="control"),
                  Unit(name="control:random", kind="random", mapping="control")]
    return units


def reaches(unit: UnitLike, section: CrossSection) -> bool:
    """Whether `unit` is scored at `section` (`mapping.reaches`)."""
    return mp.reaches(unit.kind, unit.mapping, unit.saes[0].hook if unit.saes else None, unit.bracket, section)


def task_share(units: Sequence[U], sections: Sequence[CrossSection]) -> tuple[tuple[U, ...], tuple[str, ...]]:
    """One task's share of the units: those that reach one of its cross-sections, in plan order, and the hooks its
    capture must hold (every section's and every reaching unit's SAEs'), sorted."""
    reaching = tuple(u for u in units if any(reaches(u, c) for c in sections))
    hooks = {c.hook for c in sections} | {s.hook for u in reaching for s in u.saes}
    return reaching, tuple(sorted(hooks))


def unreached(units: Iterable[U], reaching: Sequence[U]) -> list[U]:
    """The native units of trained SAEs not among `reaching`: their hook holds none of the task's cross-sections."""
    return [u for u in units if u.kind == "trained" and u.mapping == "native" and u not in reaching]


def owner(unit: UnitLike) -> str:
    """The work a unit is dispatched with: its SAE's (a projected pair: its later SAE's, which closes the pair), or
    the controls'."""
    return unit.saes[-1].name if unit.saes else CONTROLS


def dispatch(jobs: Iterable[tuple[U, str]], names: Sequence[str]) -> dict[str, list[tuple[U, str]]]:
    """(unit, task) jobs grouped by `owner`: every SAE of `names`, in their order and with no jobs where it reaches no
    task (it still gets its core metrics), then `CONTROLS` where a control has a job."""
    out: dict[str, list[tuple[U, str]]] = {n: [] for n in names}
    for unit, task in jobs:
        out.setdefault(owner(unit), []).append((unit, task))
    return out
