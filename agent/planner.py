"""The planner: how the search understands a request and asks for formulae.

The offline planner is deterministic rules (``tools.spec.parse_request`` and the offline
proposer). With ``ANTHROPIC_API_KEY`` set, Claude reads the request into a narrow schema (only
what the request decides: chemistry, family, properties; never the budget, seed or generator)
and proposes formulae, with the formulae already tried and the screen's verdicts fed back on
later rounds. Any Claude failure falls back to the rules for that step; a fatal one (bad key,
retired model) ends Claude use for the run. The planner records which path really ran each step
(:meth:`Planner.record`), so results, reports and eval records name it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from tools.claude import ClaudeError, ClaudeSession, claude_configured
from tools.claude_proposer import propose
from tools.families import FAMILIES
from tools.formula import FormulaError, parse_formula
from tools.proposer import Proposal, propose_offline
from tools.spec import ANION_CLASSES, SearchSpec, SpecConflict, application_fields, parse_request, spec_conflicts
from tools.vocabulary import vocabulary

log = logging.getLogger(__name__)
RETRIEVED_PASSAGES = 4
SEARCHABLE = ("family", "stoichiometry", "required_elements", "allowed_elements", "anion_class", "band_gap",
              "electronic", "spacegroup", "n_elements")

FamilyName = Literal[tuple(f.name for f in FAMILIES)]  # type: ignore[valid-type]
AnionClass = Literal[tuple(ANION_CLASSES)]  # type: ignore[valid-type]
ApplicationName = Literal[tuple(a.name for a in vocabulary().applications)]  # type: ignore[valid-type]


class RequestReading(BaseModel):
    """What a materials request asks for, in genms's terms. Leave a field empty when the request does not say."""

    family: FamilyName | None = Field(None, description="the structure family the request names, if any")
    stoichiometry: str | None = Field(None, description="atom-ratio pattern such as '1:2:4', when the request fixes one")
    required_elements: list[str] = Field(default_factory=list, description="element symbols that must appear")
    allowed_elements: list[str] | None = Field(None, description="element symbols, when only these may appear")
    excluded_elements: list[str] = Field(default_factory=list, description="element symbols that must not appear")
    anion_class: AnionClass | None = Field(None, description="the anion class the request names")
    novel_against: list[Literal["MP", "ICSD", "OQMD", "genms"]] = Field(
        default_factory=list, description="databases whose compounds are not wanted ('genms' = earlier genms runs)")
    exclude_formulas: list[str] = Field(default_factory=list, description="formulae the request rules out")
    band_gap: float | None = Field(None, description="target band gap, eV (0-15)")
    band_gap_tolerance: float | None = Field(None, description="accepted deviation from the band gap target, eV")
    electronic: Literal["metal", "semiconductor", "insulator"] | None = None
    density: float | None = Field(None, description="target density, g/cm^3")
    high_density: bool = Field(False, description="the request asks for dense phases")
    spacegroup: int | None = Field(None, description="international space group number (1-230) the request names")
    n_elements: int | None = Field(None, description="number of distinct elements: binary 2, ternary 3, quaternary 4")
    application: ApplicationName | None = Field(None, description="the application the request names, if any")
    ignored_words: list[str] = Field(default_factory=list, description="words of the request that no field above can "
                                     "express (e.g. an application such as 'battery cathode'), at most 20")


def spec_from_reading(request: str, reading: RequestReading, overrides: dict) -> tuple[SearchSpec, list[str]]:
    """The spec from Claude's reading, field by field: an invalid field is dropped with a note, not the
    whole reading; the caller's ``overrides`` win. Returns (spec, notes on dropped fields)."""
    base = {**overrides, "request": request}
    SearchSpec(**base)  # the caller's own fields must be valid on their own
    kept, notes = {}, []
    values = reading.model_dump(exclude_none=True)
    if reading.application:  # the application's constraints, as the offline reader applies them
        implied = application_fields(request, set(reading.required_elements), set(reading.excluded_elements), reading.application)
        values["required_elements"] = sorted(set(values.get("required_elements", [])) | set(implied.pop("required_elements", [])))
        values["excluded_elements"] = sorted(set(values.get("excluded_elements", [])) | set(implied.pop("excluded_elements", [])))
        values = {**{k: v for k, v in implied.items() if v is not None}, **values}
    for name, value in values.items():
        if name in overrides or value == [] or value is False:  # empty: the request does not say (0 eV is a value)
            continue
        try:
            SearchSpec(**base, **kept, **{name: value})
        except ValidationError as exc:
            notes.append(f"{name}={str(value)[:60]} ignored ({exc.errors()[0]['msg'][:120]})")
            continue
        kept[name] = value
    return SearchSpec(**base, **kept), notes


@dataclass
class Planner:
    """Decides the spec and the formulae; ``name`` says which planner is configured ('offline' or 'claude').

    One planner serves one run: ``session`` holds that run's Claude calls and ``steps`` the path
    each step took ({"understand": ..., "propose": [...]}).
    """

    use_claude: bool = False
    use_retrieval: bool = True  # ground proposals in retrieved passages (GenMS's RAG; off for ablations)
    use_gfn: bool = True  # Crystal-GFN for open exploration under a property target (off for ablations)
    session: ClaudeSession | None = None
    steps: dict = field(default_factory=lambda: {"understand": None, "propose": []})

    def __post_init__(self):
        if self.use_claude and self.session is None:
            self.session = ClaudeSession()

    @property
    def name(self) -> str:
        return "claude" if self.use_claude else "offline"

    def understand(self, request: str, **overrides) -> SearchSpec:
        """The request as a spec (raises RequestNotUnderstood / SpecConflict with an explanation).

        Claude reads the request into :class:`RequestReading` when it is the planner; the spec is
        validated field by field and checked for conflicts. If Claude fails or reads nothing
        searchable, the rule-based parser decides. ``steps["understand"]`` says which did.
        """
        if self.use_claude:
            try:
                spec, notes = _claude_spec(request, overrides, self.session)
                self.steps["understand"] = "claude" + (f" ({'; '.join(notes)})" if notes else "")
                return spec
            except ClaudeError as exc:
                log.warning("Claude could not read the request, using the rule-based parser: %s", exc)
                self.steps["understand"] = f"rules (Claude failed: {exc.kind}: {str(exc)[:200]})"
            except _NothingSearchable:
                self.steps["understand"] = "rules (Claude read nothing searchable)"
        else:
            self.steps["understand"] = "rules"
        return parse_request(request, **overrides)

    def retrieve(self, spec: SearchSpec) -> tuple[list[dict], str]:
        """Passages about the request (seeded articles, Wikipedia when online) and a status line."""
        if not self.use_retrieval:
            return [], "retrieval off"
        from tools.knowledge import search_knowledge

        found = search_knowledge(spec.request or spec.summary(), k=RETRIEVED_PASSAGES)
        return [p.as_dict() for p in found.passages], found.wikipedia

    def gfn_choice(self, spec: SearchSpec) -> tuple[str | None, str]:
        """Crystal-GFN's reward when the request is open exploration under a property target
        (a band gap, dense phases; no family or ratio), else None; with the reason either way."""
        if not self.use_gfn:
            return None, "Crystal-GFN off"
        from tools.gfn_generation import gfn_reward_for

        return gfn_reward_for(spec)

    def propose(self, spec: SearchSpec, n: int, seed: int, avoid: set[str], tried: list[str],
                context: list[dict] = ()) -> tuple[list[Proposal], str]:
        """``n`` new formulae (none whose key is in ``avoid``) and which proposer made them.

        Open exploration under a property target: Crystal-GFN's sampler for that reward proposes
        (source 'gfn'; the search then places those formulae with Crystal-GFN). Otherwise Claude
        reads the retrieved ``context`` (fenced as data) and the formulae already ``tried`` with
        their verdicts; the offline proposer works from the catalogue and substitution statistics.
        """
        proposals, proposer = self._propose(spec, n, seed, avoid, tried, context)
        self.steps["propose"].append(proposer)
        return proposals, proposer

    def _propose(self, spec, n, seed, avoid, tried, context) -> tuple[list[Proposal], str]:
        if self.gfn_choice(spec)[0] is not None:
            from tools.generation import GenerationError
            from tools.gfn_generation import propose_gfn

            try:
                return propose_gfn(spec, n, seed=seed, avoid=avoid), "gfn"
            except GenerationError as exc:
                log.warning("Crystal-GFN could not propose, using the formula proposer: %s", exc)
        if not self.use_claude:
            return propose_offline(spec, n, seed=seed, avoid=avoid), "offline"
        proposals, proposer = propose(spec, n, seed=seed, context=list(context), use_claude=True, tried=tried,
                                      session=self.session)
        return [p for p in proposals if _key(p.formula) not in avoid], proposer

    def ran(self) -> str:
        """The planner that really ran: 'offline', 'claude', or 'claude, partly offline (why)' / 'offline (why)'."""
        if not self.use_claude:
            return "offline"
        paths = [p for p in [self.steps["understand"], *self.steps["propose"]] if p and p != "gfn"]
        fell_back = [p for p in paths if not p.startswith("claude")]
        if not fell_back:
            return "claude"
        reason = fell_back[0].partition("(")[2].rstrip(")") or fell_back[0]
        return f"claude, partly offline ({reason})" if len(fell_back) < len(paths) else f"offline ({reason})"

    def record(self) -> dict:
        """What the run's records keep: the planner that ran, each step's path, Claude's calls and cost."""
        return {"planner": self.ran(), "steps": {"understand": self.steps["understand"], "propose": list(self.steps["propose"])},
                "claude": self.session.as_dict() if self.session else None}


def _key(formula: str) -> str | None:
    """Composition key of a proposed formula (None for text the screen will reject anyway)."""
    try:
        return parse_formula(formula).key
    except FormulaError:
        return None


class _NothingSearchable(Exception):
    """Claude's reading names nothing the search can act on: the rules decide (and explain)."""


def _claude_spec(request: str, overrides: dict, session: ClaudeSession) -> tuple[SearchSpec, list[str]]:
    """Claude fills :class:`RequestReading`; the spec is validated field by field and checked for conflicts."""
    system = ("You read materials-science requests for a crystal-structure search (genms) into its schema. "
              "Families: " + "; ".join(f"{f.name} ({f.title})" for f in FAMILIES) + ". Use element symbols. "
              "Leave a field empty when the request does not say; never invent constraints.")
    reading = session.ask(RequestReading, purpose="understand", system=[system], prompt=[f"Request: {request}"],
                          answer_tokens=512)
    spec, notes = spec_from_reading(request, reading, overrides)
    if not any(getattr(spec, name) for name in SEARCHABLE):
        raise _NothingSearchable
    problems = spec_conflicts(spec)
    if problems:
        raise SpecConflict("the request cannot be satisfied: " + "; ".join(problems))
    return spec, notes


def default_planner() -> Planner:
    """Claude when a key is set, otherwise the offline planner."""
    return Planner(use_claude=claude_configured())
