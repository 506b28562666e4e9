"""Argument bounds and result models of the MCP tools (``agent/mcp_server.py``).

Arguments are bounded where clients send them: counts, string lengths and sizes out of range
are refused by validation, before any work starts, as tool errors. Budget bounds come from
``tools.spec`` (the same ones the CLI and the search use); generator names from
``tools.generation.GENERATORS``; text, formula, CIF and batch bounds from ``tools.limits``
(every input limit in one place); the passage count from ``tools.knowledge``. Result
models list the keys that clients can rely on and allow extra keys, so a tool that reports
more does not break the schema.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tools.generation import GENERATORS
from tools.knowledge import MAX_K as MAX_PASSAGES
from tools.limits import (
    MAX_CIF_CHARS,  # per CIF text; the readers take 2 MB files, MCP clients send at most 1 MB each
    MAX_EXCLUDED_FORMULAS,
    MAX_FORMULA_LENGTH,
    MAX_FORMULAS,
    MAX_LOOKUP_CHARS,
    MAX_LOOKUP_ROWS,
    MAX_QUERY_CHARS,
    MAX_REQUEST_CHARS,
    MAX_STRUCTURES,
)
from tools.relaxation import FMAX_RANGE, MAX_STEPS_RANGE
from tools.spec import Budget, SearchSpec

MAX_SEED = 2**32 - 1
MAX_LISTED_FORMULA_CHARS = 1000  # a formula in a list: longer than MAX_FORMULA_LENGTH gets its own error report
MAX_RECALLED = 500  # the bound tools.knowledge.recall_candidates checks


def _bounds(model: type[BaseModel], name: str) -> list:
    """The constraints (ge, le, ...) a pydantic model declares on a field, to reuse them here."""
    return list(model.model_fields[name].metadata)


# The generators that exist, as a string enum that grows with tools.generation.GENERATORS.
GeneratorName = Enum("GeneratorName", {name.upper(): name for name in GENERATORS}, type=str)
GeneratorName.__doc__ = "A structure generator of tools.generation.GENERATORS."

Request = Annotated[str, Field(min_length=1, max_length=MAX_REQUEST_CHARS, description="The request in plain language, e.g. 'a novel spinel oxide containing Mn'.")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Random seed; another seed gives other results.")]
Proposals = Annotated[int, *_bounds(Budget, "proposals"), Field(description="H: formulae proposed per round.")]
Formulas = Annotated[int, *_bounds(Budget, "formulas"), Field(description="W: formulae sent to the generator at a time.")]
StructuresPerFormula = Annotated[int, *_bounds(Budget, "structures_per_formula"), Field(description="L: structures generated per formula.")]
Rounds = Annotated[int, *_bounds(Budget, "rounds"), Field(description="Proposal rounds at most.")]
RelaxSteps = Annotated[int, *_bounds(Budget, "relax_steps"), Field(description="CHGNet relaxation steps for each formula's best structure (0: none).")]
Seconds = Annotated[float, *_bounds(Budget, "seconds"), Field(description="Wall-clock budget, seconds.")]
Results = Annotated[int, *_bounds(SearchSpec, "n_results"), Field(description="Good candidates wanted.")]
Formula = Annotated[str, Field(min_length=1, max_length=MAX_LISTED_FORMULA_CHARS)]
FormulaList = Annotated[list[Formula], Field(min_length=1, max_length=MAX_FORMULAS, description="Chemical formulas, e.g. ['SrTiO3', 'LiMn2O4'].")]
ExcludeList = Annotated[list[Formula], Field(max_length=MAX_EXCLUDED_FORMULAS, description="Formulas the user already knows; matches count as not unique.")]
Cif = Annotated[str, Field(min_length=1, max_length=MAX_CIF_CHARS, description=f"A crystal structure as CIF text (at most {MAX_CIF_CHARS:,} characters).")]
CifList = Annotated[list[Cif], Field(min_length=1, max_length=MAX_STRUCTURES, description=f"Crystal structures as CIF texts (1-{MAX_STRUCTURES}).")]
OneFormula = Annotated[str, Field(min_length=1, max_length=MAX_FORMULA_LENGTH, description="A formula, e.g. 'MgAl2O4'.")]
FamilyName = Annotated[str, Field(min_length=1, max_length=60, description="Crystal family, e.g. 'spinel'; default: every family the formula fits.")]
StructureCount = Annotated[int, Field(ge=1, le=MAX_STRUCTURES, description="How many structures (L).")]
Fmax = Annotated[float, Field(ge=FMAX_RANGE[0], le=FMAX_RANGE[1], description="Relaxation force criterion, eV/Å.")]
MaxSteps = Annotated[int, Field(ge=MAX_STEPS_RANGE[0], le=MAX_STEPS_RANGE[1], description="Relaxation step limit.")]
Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look up, e.g. 'pyrochlore A2B2O7'.")]
PassageCount = Annotated[int, Field(ge=1, le=MAX_PASSAGES, description="How many passages.")]
RecallQuery = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to recall, e.g. 'the spinels we found'.")]
RecallCount = Annotated[int, Field(ge=1, le=MAX_RECALLED, description="How many candidates.")]
RecallFamily = Annotated[str, Field(min_length=1, max_length=60, description="Only this crystal family, e.g. 'spinel' (a family named in the query also filters).")]
LookupText = Annotated[str, Field(min_length=1, max_length=MAX_LOOKUP_CHARS, description="A known material's formula, optionally with a polymorph name: 'TiO2', 'anatase TiO2', 'wurtzite ZnO', 'calcite'.")]
LookupLimit = Annotated[int, Field(ge=1, le=MAX_LOOKUP_ROWS, description="How many polymorphs (MP entries) to return at most.")]
RunLimit = Annotated[int, Field(ge=1, le=200, description="How many runs, newest first.")]
RunId = Annotated[str, Field(min_length=1, max_length=200, description="A run id from list_runs or search_materials.")]


class _Open(BaseModel):
    """A result whose listed keys are guaranteed; tools may add more."""

    model_config = ConfigDict(extra="allow")


class FormulaReport(_Open):
    input: str
    valid: bool
    error: str | None = None
    reduced_formula: str | None = None
    elements: list[str] | None = None
    charge_balanced: bool | None = None
    oxidation_states: dict[str, list[int]] | None = None
    electronegativity_ok: bool | None = None
    composition_valid: bool | None = None
    known_in: list[str] | None = Field(None, description="Which of MP, ICSD, OQMD hold the reduced formula.")
    in_exclusion_list: bool | None = None
    unique: bool | None = Field(None, description="In neither MP nor ICSD nor the exclusion list.")
    families: list[str] | None = None


class CheckFormulasOutput(BaseModel):
    results: list[FormulaReport]


class StructureReport(_Open):
    cif_valid: bool
    structurally_valid: bool | None = Field(None, description="Every interatomic distance > 0.5 Å.")
    min_distance: float | None = Field(None, description="Å, periodic images included.")
    volume_per_atom: float | None = Field(None, description="Å^3.")
    composition_valid: bool | None = None
    charge_balanced: bool | None = None
    reduced_formula: str | None = None
    spacegroup_number: int | None = None
    spacegroup_symbol: str | None = None
    n_sites: int | None = None
    known_in: list[str] | None = None
    families: list[str] | None = None
    error: str | None = None


class Proposal(_Open):
    formula: str
    reduced_formula: str | None = None
    passed: bool
    rejected_by: str | None = Field(None, description="The first failed screen: regex, charge_neutrality, uniqueness or compliance.")
    reason: str | None = None
    score: float | None = Field(None, description="Screen score in [0, 1] of a survivor.")
    rationale: str | None = None
    known_in: list[str] | None = None


class ProposeFormulasOutput(BaseModel):
    spec: str = Field(description="The request as understood.")
    proposer: str = Field(description="The proposer that really ran: claude, or offline (with the reason after a fallback).")
    proposals: list[Proposal]
    claude: dict[str, Any] | None = Field(None, description="Claude's call, tokens and estimated cost (null: not used).")


class GeneratedStructure(_Open):
    formula: str
    generator: str
    family: str | None = None
    prototype: str | None = None
    assignment: dict[str, str] = Field(default_factory=dict)
    variant: int = 0
    notes: list[str] = Field(default_factory=list)
    n_sites: int
    cif: str


class GenerateStructuresOutput(BaseModel):
    structures: list[GeneratedStructure]


class ScoreReport(_Open):
    index: int = Field(description="Position of the CIF in the input list.")
    reduced_formula: str | None = None
    n_sites: int | None = None
    energy_per_atom: float | None = Field(None, description="CHGNet, eV/atom.")
    formation_energy_per_atom: float | None = Field(None, description="eV/atom, MP scale.")
    e_above_hull: float | None = Field(None, description="eV/atom above the MP hull.")
    decomposition: dict[str, float] | None = None
    max_force: float | None = Field(None, description="eV/Å.")
    max_stress: float | None = Field(None, description="GPa.")
    plausible: bool
    reason: str | None = None
    relaxed_cif: str | None = None
    relax_converged: bool | None = None
    rmsd: float | None = Field(None, description="Å.")
    energy_drop_per_atom: float | None = None
    relax_steps: int | None = None


class ScoreStructuresOutput(BaseModel):
    results: list[ScoreReport]


class Candidate(_Open):
    rank: int
    good: bool = Field(description="Plausible, valid, charge balanced and within 1 eV/atom of the hull.")
    formula: str
    reduced_formula: str | None = None
    family: str | None = None
    prototype: str | None = None
    generator: str | None = None
    formation_energy_per_atom: float | None = None
    e_above_hull: float | None = None
    energy_per_atom: float | None = None
    density: float | None = Field(None, description="g/cm^3.")
    known_in: list[str] | None = None
    plausible: bool | None = None
    reason: str | None = None
    cif_uri: str | None = Field(None, description="The candidate's CIF as an MCP resource.")


class RunResources(BaseModel):
    report: str
    results: str
    cifs: list[str]


class SearchOutput(_Open):
    run_id: str
    request: str
    planner: str
    seconds: float
    spec: dict[str, Any] | None = None
    n_candidates: int
    n_good: int
    candidates: list[Candidate]
    decisions: list[dict[str, Any]] = Field(default_factory=list, description="Every branch the search took, with its reason.")
    dropped: list[dict[str, Any]] = Field(default_factory=list)
    steps: dict[str, Any] = Field(default_factory=dict, description="The path each planner step really took (claude, rules, offline, gfn).")
    claude: dict[str, Any] | None = Field(None, description="Claude's calls, tokens and estimated cost in US dollars (null: not configured).")
    resources: RunResources


class RunSummary(_Open):
    run_id: str
    saved_at: str | None = None
    request: str | None = None
    planner: str | None = None
    seconds: float | None = None
    family: str | None = None
    n_candidates: int | None = None
    n_good: int | None = None
    best: list[dict[str, Any]] = Field(default_factory=list)
    report_uri: str


class ListRunsOutput(BaseModel):
    runs: list[RunSummary]


class RunRecord(_Open):
    """A run's results.json (spec, candidates, decisions, dropped, screened, timings) with its summary."""

    run_id: str
    summary: dict[str, Any]
    files: list[str]
    resources: list[str] = Field(description="The run's files as MCP resource URIs.")


class Passage(_Open):
    text: str
    title: str | None = None
    source: str | None = Field(None, description="URL, or genms://knowledge/... for genms's own articles.")
    score: float | None = Field(None, description="Similarity to the query, in [-1, 1].")
    kind: str | None = Field(None, description="seed (written by genms), wikipedia or user.")
    chunk: int | None = Field(None, description="Position of the passage in its article.")


class RetrieveKnowledgeOutput(_Open):
    query: str
    wikipedia: str | None = Field(None, description="How Wikipedia was consulted (cached, fetched, off ...).")
    seconds: float | None = None
    passages: list[Passage]


class RecalledCandidate(_Open):
    run_id: str
    rank: int
    formula: str
    reduced_formula: str | None = None
    family: str | None = None
    prototype: str | None = None
    generator: str | None = None
    spacegroup: str | None = None
    formation_energy_per_atom: float | None = Field(None, description="eV/atom, MP scale.")
    e_above_hull: float | None = Field(None, description="eV/atom above the MP hull.")
    good: bool
    novel: bool | None = Field(None, description="In none of MP, ICSD, OQMD.")
    request: str | None = Field(None, description="The request of the run that produced it.")
    description: str | None = None
    score: float | None = Field(None, description="Similarity to the query.")
    cif_uri: str | None = Field(None, description="The candidate's CIF as an MCP resource.")


class RecallCandidatesOutput(_Open):
    query: str
    candidates: list[RecalledCandidate]


class Polymorph(_Open):
    material_id: str
    dataset: str = Field(description="mp20 (MP-20) or mp2018 (the 2018 MP snapshot).")
    split: str | None = Field(None, description="The MP-20 split (train, val, test) of an mp20 entry.")
    spacegroup_number: int | None = None
    spacegroup_symbol: str | None = None
    spacegroup_source: str | None = Field(None, description="MP-20, or spglib (symprec 0.1 Å, computed from the MP structure); null: not computed.")
    formation_energy_per_atom: float | None = Field(None, description="eV/atom (MP2020-corrected GGA/GGA+U for mp20 entries).")
    band_gap: float | None = Field(None, description="eV, PBE (GGA/GGA+U): underestimates measured gaps.")
    e_above_hull: float | None = Field(None, description="eV/atom above the MP hull (mp20 entries only).")
    n_sites: int | None = None
    names: list[str] = Field(default_factory=list, description="Common names of this polymorph (anatase, rutile ...).")
    match: bool = Field(False, description="The polymorph the look-up named.")
    source: str | None = None


class LookupOutput(_Open):
    query: str
    formula: str = Field(description="The reduced formula looked up.")
    polymorph_name: str | None = Field(None, description="The polymorph name read from the query, if any.")
    polymorph_spacegroups: list[int] = Field(default_factory=list)
    polymorph_note: str | None = None
    n_polymorphs: int = Field(description="MP entries of the formula in the shared data (all, not only those returned).")
    truncated: bool
    polymorphs: list[Polymorph] = Field(description="The named polymorph first, then by energy above hull and formation energy.")
    matbench: dict[str, Any] = Field(description="Matbench composition-level formation energies (eV/atom) and band gaps (eV): n, min, max, values.")
    known_in: list[str] = Field(description="Which of MP, ICSD, OQMD hold the reduced formula.")
    message: str
    note: str = Field(description="What the numbers mean (PBE gaps, corrections) and the data sources.")
    sources: list[str] = Field(default_factory=list)
