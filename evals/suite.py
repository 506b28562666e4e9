"""Evaluation suites: the YAML schema, validated with pydantic, expanded into units of work.

A suite names a ``task`` (how one case is run), its ``cases`` (requests, formulae, models),
the ``systems`` compared (the genms search, a generator alone, Claude writing CIFs, a learned
generator's benchmark), the ``metrics`` to report (names from :data:`evals.metrics.METRICS`)
and a ``budget``; an optional ``grid`` varies budget fields (GenMS Table 2's H and L). Each
(case, repeat, system, grid point) is one unit; its key hashes everything that decides its
result, so a finished unit is never recomputed and a changed budget is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SUITES_DIR = Path(__file__).with_name("suites")
TASKS = ("search", "propose", "best_of_n", "csp", "gfn")
# Which system kinds each task can run.
TASK_SYSTEMS = {
    "search": {"genms", "generator", "llm_cif"},
    "propose": {"genms"},
    "best_of_n": {"generator"},
    "csp": {"generator"},
    "gfn": {"gfn"},
}


class SuiteError(ValueError):
    """A suite file that cannot be run; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """Budgets of one unit. Search fields follow ``genms search`` (H, W, L, rounds, relaxation)."""

    proposals: int = Field(12, ge=1, le=500, description="H: formulae proposed per round")
    formulas: int = Field(4, ge=1, le=100, description="W: formulae sent to the generator")
    structures_per_formula: int = Field(2, ge=1, le=100, description="L: structures per formula")
    rounds: int = Field(1, ge=1, le=20)
    relax_steps: int = Field(30, ge=0, le=2000, description="CHGNet relaxation steps per kept structure")
    seconds: float = Field(600, gt=0, le=86400, description="wall-clock budget of one search")
    samples: int = Field(10, ge=1, le=1000, description="best_of_n: N; gfn: crystals sampled; llm_cif: CIFs asked for")
    shots: int = Field(5, ge=0, le=100, description="llm_cif: reference CIFs in the prompt")


class Expect(_Strict):
    """What a case measures: on each proposed formula (``propose``), or on each returned
    candidate (``spec``: the constraints a scientist reads in the request, as SearchSpec fields)."""

    element: str | None = None
    metal: bool = False
    unique_against: list[str] | None = None
    spec: dict | None = None

    @model_validator(mode="after")
    def _spec_is_a_spec(self):
        if self.spec is not None:
            from tools.conformance import expected_spec

            expected_spec(self.spec)  # raises on unknown fields, elements or applications
        return self


class Case(_Strict):
    """One request (``search``/``propose``), composition (``best_of_n``), or benchmark part."""

    id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.+-]+$")
    request: str | None = None
    family: str | None = None  # the family whose MP references the match rate uses
    formula: str | None = None
    overrides: dict = Field(default_factory=dict, description="SearchSpec fields set for this case")
    expect: Expect | None = None
    options: dict = Field(default_factory=dict, description="task-specific settings (csp: limit; gfn: model, restriction)")
    repeats: int = Field(1, ge=1, le=100, description="independent runs with seeds seed, seed+1, ...")


class System(_Strict):
    """Who answers the cases: ``genms`` (the search), ``generator`` (one generator, no search),
    ``llm_cif`` (Claude writes CIFs, few-shot) or ``gfn`` (the Crystal-GFN sampler). A ``genms``
    system's ``generator`` sets the search's structure generator (auto, diffusion, unimdm, template)."""

    name: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.+-]+$")
    kind: Literal["genms", "generator", "llm_cif", "gfn"]
    generator: str | None = None
    retrieval: bool = True
    options: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _generator_named(self):
        if self.kind == "generator" and not self.generator:
            raise ValueError(f"system {self.name!r}: kind 'generator' needs 'generator' (a name in tools.generation.GENERATORS)")
        return self


class Suite(_Strict):
    name: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.+-]+$")
    description: str = ""
    task: Literal["search", "propose", "best_of_n", "csp", "gfn"]
    cases: list[Case] = Field(min_length=1)
    systems: list[System] = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)
    budget: Budget = Field(default_factory=Budget)
    grid: dict[str, list[int]] = Field(default_factory=dict, description="budget fields to vary, e.g. proposals: [4, 12]")
    seed: int = 0
    table: list[str] | None = None  # metrics shown in the main report table (default: all)

    @model_validator(mode="after")
    def _consistent(self):
        from evals.metrics import METRICS, TASK_METRICS
        from tools.families import get_family

        problems = []
        for kind, names in (("case", [c.id for c in self.cases]), ("system", [s.name for s in self.systems])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                problems.append(f"duplicate {kind} ids: {', '.join(duplicates)}")
        for name in self.metrics:
            if name not in METRICS:
                problems.append(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
            elif name not in TASK_METRICS[self.task]:
                problems.append(f"metric {name!r} does not apply to task {self.task!r} (it applies to: {', '.join(sorted(TASK_METRICS[self.task]))})")
        for system in self.systems:
            if system.kind not in TASK_SYSTEMS[self.task]:
                problems.append(f"system {system.name!r} of kind {system.kind!r} cannot run task {self.task!r} "
                                f"(kinds for it: {', '.join(sorted(TASK_SYSTEMS[self.task]))})")
        for case in self.cases:
            if self.task in ("search", "propose") and not case.request:
                problems.append(f"case {case.id!r}: task {self.task!r} needs a 'request'")
            if self.task == "best_of_n" and not case.formula:
                problems.append(f"case {case.id!r}: task 'best_of_n' needs a 'formula'")
            if "request_conformance" in self.metrics and not (case.expect and case.expect.spec):
                problems.append(f"case {case.id!r}: metric 'request_conformance' needs 'expect: {{spec: ...}}'")
            if self.task == "propose" and case.expect is None:
                problems.append(f"case {case.id!r}: task 'propose' needs 'expect' (element, metal or unique_against)")
            if case.family:
                try:
                    get_family(case.family)
                except KeyError as exc:
                    problems.append(f"case {case.id!r}: {str(exc).strip(chr(34) + chr(39))}")
        for field, values in self.grid.items():
            if field not in Budget.model_fields:
                problems.append(f"grid field {field!r} is not a budget field ({', '.join(Budget.model_fields)})")
            elif not values:
                problems.append(f"grid field {field!r} has no values")
        if self.table:
            problems += [f"table metric {m!r} is not among the suite's metrics" for m in self.table if m not in self.metrics]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "suite"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_suite(data: object, source: str = "suite") -> Suite:
    """Validate a suite given as parsed YAML; :class:`SuiteError` lists every problem found."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite is a YAML mapping (name, task, cases, systems, metrics, budget), got {type(data).__name__}")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(f"{source} is not a valid suite:\n{_format_errors(exc)}") from None


def resolve_path(name_or_path: str | Path) -> Path:
    """A suite file: a path, or the name of a bundled suite (``families`` -> evals/suites/families.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = SUITES_DIR / f"{path.stem}.yaml"
    if bundled.is_file() and path.suffix in ("", ".yaml", ".yml") and len(path.parts) == 1:
        return bundled
    available = ", ".join(p.stem for p in sorted(SUITES_DIR.glob("*.yaml")))
    raise SuiteError(f"no suite file {str(name_or_path)!r} (bundled suites: {available})")


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and validate a suite file (or a bundled suite by name)."""
    path = resolve_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    return parse_suite(data, str(path))


def bundled_suites() -> list[Path]:
    return sorted(SUITES_DIR.glob("*.yaml"))


def unit_key(payload: dict) -> str:
    """Stable hash of what decides a unit's result (case, system, budget, seed, metrics, task)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def grid_points(suite: Suite) -> list[dict]:
    """Budget overrides of each grid point ({} when the suite has no grid)."""
    if not suite.grid:
        return [{}]
    fields = list(suite.grid)
    return [dict(zip(fields, values)) for values in itertools.product(*(suite.grid[f] for f in fields))]


def variant_label(point: dict) -> str:
    short = {"proposals": "H", "formulas": "W", "structures_per_formula": "L", "relax_steps": "relax", "samples": "N"}
    return " ".join(f"{short.get(k, k)}={v}" for k, v in point.items()) or "default"


def expand(suite: Suite) -> list[dict]:
    """Every unit of the suite, in a stable order, each with its key."""
    units = []
    for case in suite.cases:
        for repeat in range(case.repeats):
            for system in suite.systems:
                for point in grid_points(suite):
                    budget = suite.budget.model_copy(update=point).model_dump()
                    payload = {
                        "task": suite.task, "case": case.model_dump(exclude={"repeats"}), "system": system.model_dump(),
                        "budget": budget, "seed": suite.seed + repeat, "metrics": sorted(suite.metrics),
                    }
                    units.append({**payload, "suite": suite.name, "repeat": repeat, "variant": variant_label(point),
                                  "point": point, "key": unit_key(payload)})
    return units
