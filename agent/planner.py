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
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from tools.claude import ClaudeError, ClaudeSession, claude_configured
from tools.claude_proposer import propose
from tools.families import FAMILIES
from tools.formula import FormulaError, parse_formula
from tools.proposer import Proposal, propose_offline
from tools.spec import (
    ANION_CLASSES,
    CRYSTAL_SYSTEMS,
    CrystalSystem,
    SearchSpec,
    SpecConflict,
    application_fields,
    parse_request,
    spec_conflicts,
)
from tools.vocabulary import structure_type_named, vocabulary

log = logging.getLogger(__name__)
RETRIEVED_PASSAGES = 4
SEARCHABLE = ("family", "stoichiometry", "required_elements", "allowed_elements", "anion_class", "band_gap",
              "electronic", "spacegroup", "n_elements")

FamilyName = Literal[tuple(f.name for f in FAMILIES)]  # type: ignore[valid-type]
AnionClass = Literal[tuple(ANION_CLASSES)]  # type: ignore[valid-type]
ApplicationName = Literal[tuple(a.name for a in vocabulary().applications)]  # type: ignore[valid-type]
StructureTypeName = Literal[tuple(t.name for t in vocabulary().structure_types)]  # type: ignore[valid-type]


class RequestReading(BaseModel):
    """What a materials request asks for, in genms's terms. Leave a field empty when the request does not say."""

    family: FamilyName | None = Field(None, description="the structure family the request names, if any")
    stoichiometry: str | None = Field(None, description="atom-ratio pattern such as '1:2:4', when the request fixes one")
    required_elements: list[str] = Field(default_factory=list, description="element symbols that must appear")
    allowed_elements: list[str] | None = Field(None, description="element symbols, when only these may appear")
    excluded_elements: list[str] = Field(default_factory=list, description="element symbols that must not appear")
    required_any: list[list[str]] = Field(
        default_factory=list, description="element groups the request names as wanted, each as its element symbols: "
        "at least one of each must appear ('a germanate with an alkaline earth' [[Be, Mg, Ca, Sr, Ba]]); groups that "
        "the application or structure type implies are added by genms")
    anion_class: AnionClass | None = Field(None, description="the anion class the request names")
    structure_type: StructureTypeName | None = Field(
        None, description="a structure type that is no family ('kesterite', 'NASICON-type', 'anti-perovskite'); genms adds its "
        "ratio, anion class and element groups unless the request gives its own")
    novel_against: list[Literal["MP", "ICSD", "OQMD", "genms"]] = Field(
        default_factory=list, description="databases whose compounds are not wanted: 'novel', 'new', 'unreported', "
        "'hypothetical' ... mean ['MP', 'ICSD']; 'not in the Materials Project' ['MP']; 'genms' = earlier genms runs")
    exclude_formulas: list[str] = Field(default_factory=list, description="formulae the request rules out")
    band_gap: float | None = Field(None, description="target band gap, eV (0-15)")
    band_gap_tolerance: float | None = Field(None, description="accepted deviation from the band gap target, eV")
    electronic: Literal["metal", "semiconductor", "insulator"] | None = None
    density: float | None = Field(None, description="target density, g/cm^3")
    high_density: bool = Field(False, description="the request asks for dense phases")
    spacegroup: int | None = Field(None, description="international space group number (1-230) the request names")
    crystal_system: CrystalSystem | None = Field(None, description="the crystal system the request names ('rhombohedral' is trigonal)")
    layered: bool = Field(False, description="the request asks for a layered crystal ('layered', '2D', 'van der Waals')")
    max_e_above_hull: float | None = Field(
        None, description="eV/atom above the convex hull the request accepts: 'stable', 'on the hull', 'ground state' 0.05; "
        "'metastable', 'near the hull', 'synthesizable' 0.1; a number it writes ('within 30 meV/atom of the hull' 0.03). "
        "Empty when it says nothing about stability or means stability in air, water or heat")
    n_elements: int | None = Field(None, description="number of distinct elements: binary 2, ternary 3, quaternary 4")
    application: ApplicationName | None = Field(None, description="the application the request names, if any")
    n_results: int | None = Field(None, description="how many results the request asks for ('five spinels' 5), 1-100")
    ignored_words: list[str] = Field(default_factory=list, description="words of the request that no field above can "
                                     "express (e.g. an application such as 'battery cathode'), at most 20")


def spec_from_reading(request: str, reading: RequestReading, overrides: dict) -> tuple[SearchSpec, list[str]]:
    """The spec from Claude's reading, field by field: an invalid field is dropped with a note, not the
    whole reading; the caller's ``overrides`` win. Returns (spec, notes on dropped fields)."""
    base = {**overrides, "request": request}
    SearchSpec(**base)  # the caller's own fields must be valid on their own
    kept, notes = {}, []
    values = {k: v for k, v in reading.model_dump(exclude_none=True).items() if v != [] and v is not False}
    stype = structure_type_named(reading.structure_type)
    if stype:  # the structure type's ratio, anion class and layering; the reading's own fields win
        implied = {"stoichiometry": stype.stoichiometry, "anion_class": stype.anion_class, "layered": stype.layered or None}
        values = {**{k: v for k, v in implied.items() if v is not None}, **values}
    applied = application_fields(request, set(reading.required_elements), set(reading.excluded_elements),
                                 reading.application) if reading.application else {}
    if applied:  # the application's constraints, as the offline reader applies them
        values["required_elements"] = sorted(set(values.get("required_elements", [])) | set(applied.pop("required_elements", [])))
        values["excluded_elements"] = sorted(set(values.get("excluded_elements", [])) | set(applied.pop("excluded_elements", [])))
        values = {**{k: v for k, v in applied.items() if v is not None and k != "required_any"}, **values}
    groups = [*reading.required_any, *applied.get("required_any", [])]
    if stype and stype.require_any:  # 'NASICON': one polyanion former, besides any the application needs
        excluded = set(values.get("excluded_elements", []))
        groups += [[el for el in g if el not in excluded] for g in stype.require_any]
    unique = {tuple(sorted(g)): sorted(g) for g in groups if g}  # the reading may repeat an implied group
    if unique:
        values["required_any"] = list(unique.values())
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


def _plain(pattern: str) -> str:
    """A vocabulary pattern's first wording, for people: 'rare[- ]earths?(?:[- ]elements?)?' -> 'rare earths'."""
    text = re.sub(r"\(\?:[^()]*\)\?", "", pattern)  # optional groups
    text = re.sub(r"\(\?:([^()|]*)[^()]*\)", r"\1", text)  # a group: its first alternative
    return text.split("|")[0].replace("[- ]", " ").replace("?", "").replace("\\", "")


def reading_guide() -> str:
    """How the offline reader understands a request's words (tools/data/vocabulary.yaml), for Claude's reading:
    the same vocabulary, so both planners read a request alike."""
    v = vocabulary()
    cuts = [w for w in v.stability_wordings if w.kind == "cut"]
    lines = [
        "How genms reads the words of a request (fill the fields this way):",
        "- Novelty: " + ", ".join(f"'{p}'" for p in v.novelty_phrases) + " mean novel_against ['MP', 'ICSD']; "
        "'not in the Materials Project' ['MP'], 'not in ICSD' ['ICSD'], 'not in OQMD' ['OQMD']; "
        "'not found in earlier runs' adds 'genms'.",
        "- Stability, as max_e_above_hull (eV/atom above the convex hull): "
        + "; ".join(f"{', '.join(repr(e) for e in w.examples)}: {w.cut:g} ({w.why})" for w in cuts)
        + ". A number the request writes wins ('within 30 meV/atom of the hull' 0.03, 'E_hull < 0.08 eV/atom' 0.08); "
        "several wordings: the loosest ('stable or metastable' 0.1). Stability in air, water, heat or of phonons "
        "('air-stable', 'stable in water', 'thermally stable') is no hull cut: leave it empty and list the words in ignored_words.",
        ("- Crystal systems (crystal_system): " + ", ".join(CRYSTAL_SYSTEMS) + "; 'rhombohedral' is trigonal. "
         "'a cubic perovskite' is family perovskite and crystal_system cubic. Several systems or a negated one: leave it empty."),
        ("- layered: true for 'layered', '2D', 'two-dimensional', 'van der Waals', 'vdW' ('layered perovskite' is also "
         "family ruddlesden_popper)."),
        "- Structure types (structure_type): " + "; ".join(
            f"{t.name} ({t.example}): ratio {t.stoichiometry}" + (f", {t.anion_class}" if t.anion_class else "")
            + (", one of " + ", ".join(t.require_any[0]) if t.require_any else "") + (", layered" if t.layered else "")
            for t in v.structure_types) + ". Their words name no elements ('Cu2ZnSnS4-type' requires no Cu).",
        ("- 'X-like', 'X-type', 'X-structured' mean family or structure type X ('olivine-like' olivine); a formula written "
         "as a type ('a CsPbI3-like compound', no family named) gives its atom ratio as stoichiometry ('1:1:3') and requires "
         "none of its elements. 'Zintl' is not searchable: list it in ignored_words."),
        "- Element counts (n_elements): " + ", ".join(f"{word} {n}" for word, n in v.element_counts.items()) + ".",
        "- Anion prefixes set a single-anion class ('thiospinel' sulfide): " + ", ".join(
            f"{prefix}- {symbol}" for prefix, symbol in v.anion_prefixes.items()) + ". Mixed-anion classes (oxynitride ...) "
        "require both anions.",
        "- -ate / -ite names require their element and mean an oxide (after an anion prefix, that anion's class: "
        "'thiophosphate' sulfide): " + ", ".join(f"{name} {symbol}" for name, symbol in v.oxoanion_names.items()) + ".",
        "- Element groups stand for all their members (e.g. 'without rare earths' excludes each): " + "; ".join(
            f"{_plain(pattern.pattern[5:-3])}: {', '.join(sorted(members))}" for pattern, members, _ in v.element_groups) + ".",
        "- Applications (application; genms adds the working ion, element groups, band gap and anion class it implies): "
        + "; ".join(f"{a.name}: {a.why}" for a in v.applications) + ".",
        "- n_results: the count the request asks for ('five spinels' 5, 'a dozen' 12).",
    ]
    return "\n".join(lines)


def _claude_spec(request: str, overrides: dict, session: ClaudeSession) -> tuple[SearchSpec, list[str]]:
    """Claude fills :class:`RequestReading`; the spec is validated field by field and checked for conflicts."""
    system = ("You read materials-science requests for a crystal-structure search (genms) into its schema. "
              "Families: " + "; ".join(f"{f.name} ({f.title})" for f in FAMILIES) + ". Use element symbols. "
              "Leave a field empty when the request does not say; never invent constraints.")
    reading = session.ask(RequestReading, purpose="understand", system=[system, reading_guide()], prompt=[f"Request: {request}"],
                          answer_tokens=768)
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
