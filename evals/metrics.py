"""Evaluation metrics: one function per metric, built on the project's own checks in ``tools/``.

Per-item verdicts (a CIF, a formula) are plain functions; :data:`METRICS` says for each metric
which items it looks at (``samples``: generated structures, ``proposals``: proposed formulae,
``pairs``: CSP predictions against the true structure, ``case``: the unit's record itself),
how values pool (``rate`` in %, ``mean``, ``median``) and its unit. Workers compute the
item-level values once (matching and CIF parsing are the expensive part) and store them in
the unit's record; the report pools them per case and per system.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from tools.composition import charge_balance, is_metal
from tools.families import get_family
from tools.formula import FormulaError, parse_formula
from tools.structure import StructureError, read_cif, structural_validity
from tools.uniqueness import check_uniqueness

# ---------------------------------------------------------------------------- item verdicts


@lru_cache(maxsize=4096)
def _structure(cif: str):
    return read_cif(cif)


def cif_valid(cif: str | None) -> bool:
    """GenMS CIF validity: pymatgen parses the text into an ordered crystal."""
    if not cif:
        return False
    try:
        _structure(cif)
    except StructureError:
        return False
    return True


def structurally_valid(cif: str | None) -> bool:
    """GenMS/CDVAE structural validity: every distance (periodic images too) > 0.5 Å, sane volume."""
    if not cif_valid(cif):
        return False
    return structural_validity(_structure(cif)).valid


def composition_valid(formula: str | None) -> bool:
    """GenMS/CDVAE composition validity: SMACT charge neutrality and Pauling's test (alloys valid)."""
    try:
        return bool(formula) and charge_balance(parse_formula(formula)).composition_valid
    except FormulaError:
        return False


def formula_unique(formula: str | None, exclude: Iterable[str] = ()) -> bool:
    """GenMS uniqueness: the reduced formula is in neither MP nor ICSD (nor in ``exclude``)."""
    try:
        return bool(formula) and check_uniqueness(formula, exclude=tuple(exclude)).unique
    except FormulaError:
        return False


def not_in_list(formula: str | None, formulas: Iterable[str]) -> bool:
    """The reduced formula is not in the given list (GenMS Table 3: uniqueness against a list)."""
    try:
        return bool(formula) and not check_uniqueness(formula, exclude=tuple(formulas), against=()).in_exclusion_list
    except FormulaError:
        return False


def family_match(cif: str | None, family: str | None) -> bool:
    """GenMS match rate item: ``fit_anonymous`` to one of the family's MP reference structures."""
    from tools.matching import matching_reference

    if not family or not cif_valid(cif):
        return False
    return matching_reference(_structure(cif), get_family(family).name) is not None


def valid_formula(formula: str | None, family: str | None = None) -> bool:
    """A usable proposal (GenMS Table 4): parses as a formula of known elements, is SMACT
    composition valid and, when a family is asked for, fits its stoichiometry templates."""
    try:
        parsed = parse_formula(formula or "")
    except FormulaError:
        return False
    if not charge_balance(parsed).composition_valid:
        return False
    return get_family(family).fits(parsed) if family else True


def contains_element(formula: str | None, element: str) -> bool:
    """The formula contains the requested element (GenMS Table 3)."""
    try:
        return element in parse_formula(formula or "").elements
    except FormulaError:
        return False


def all_metals(formula: str | None) -> bool:
    """Every element is a metal (SMACT's metal list, as the validity metric's alloy rule): a
    formula for a metal (GenMS Table 3: 'metal requested -> metals')."""
    try:
        return all(is_metal(el) for el in parse_formula(formula or "").elements)
    except FormulaError:
        return False


def request_failures_of(sample: dict, case: dict) -> list[str] | None:
    """Why a returned candidate does not answer the case's request (``tools.conformance``); None
    for candidates the search did not return (above the stability cut, implausible) or cases
    without expected constraints."""
    from tools.conformance import expected_spec, request_failures

    fields = (case.get("expect") or {}).get("spec")
    if fields is None or not sample.get("returned", True):
        return None
    return request_failures(sample.get("formula") or "", expected_spec(fields), sample.get("e_above_hull"))


def request_answered(record: dict, case: dict) -> bool | None:
    """The search returned at least one candidate, and every one it returned answers the request."""
    if (case.get("expect") or {}).get("spec") is None:
        return None
    verdicts = [request_failures_of(s, case) for s in record.get("samples", [])]
    returned = [v for v in verdicts if v is not None]
    return bool(returned) and not any(returned)


def csp_matched(pair: dict) -> bool:
    """A CSP prediction matches its true structure (DiffCSP protocol, as ``evals.bench_csp_diffusion``):
    StructureMatcher found an RMS distance and both composition and structure are valid."""
    return pair.get("rms") is not None and bool(pair.get("comp_valid")) and bool(pair.get("struct_valid"))


def csp_rms(pair: dict) -> float | None:
    """RMS distance of a matched CSP pair (normalised by (V/n)^(1/3)); None when unmatched."""
    return float(pair["rms"]) if csp_matched(pair) else None


def best_of_n_gain(energies: list[float | None]) -> float | None:
    """First sample's energy minus the best of all N (eV/atom; >= 0); None without a scored first sample."""
    scored = [e for e in energies if e is not None]
    if not energies or energies[0] is None or not scored:
        return None
    return energies[0] - min(scored)


def best_of_n_improved(energies: list[float | None]) -> bool | None:
    """GenMS Figure 4: does the best of N beat the single (first) sample? (improvement > 1 meV/atom)"""
    gain = best_of_n_gain(energies)
    return None if gain is None else gain > 1e-3


# ---------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Metric:
    """A reported metric: which items it reads, how values pool, and its unit."""

    name: str
    label: str
    unit: str
    level: str  # 'samples', 'proposals', 'pairs' or 'case'
    pool: str  # 'rate' (share of True, in %), 'mean' or 'median'
    tasks: tuple[str, ...]
    value: Callable[[dict, dict], object]  # (item, case) -> bool | float | None
    better: str = "higher"
    description: str = ""


def _sample_energy(key: str) -> Callable[[dict, dict], float | None]:
    return lambda item, case: item.get(key)


def _figure(key: str) -> Callable[[dict, dict], float | None]:
    return lambda record, case: (record.get("figures") or {}).get(key)


SEARCH = ("search",)
_METRICS = [
    Metric("cif_validity", "CIF valid", "%", "samples", "rate", SEARCH, lambda s, c: cif_valid(s.get("cif")),
           description="pymatgen parses the CIF"),
    Metric("structural_validity", "struct. valid", "%", "samples", "rate", SEARCH, lambda s, c: structurally_valid(s.get("cif")),
           description="all interatomic distances > 0.5 Å (periodic images too), plausible volume"),
    Metric("composition_validity", "comp. valid", "%", "samples", "rate", SEARCH, lambda s, c: composition_valid(s.get("formula")),
           description="SMACT charge neutrality with Pauling's test"),
    Metric("uniqueness", "unique", "%", "samples", "rate", SEARCH, lambda s, c: formula_unique(s.get("formula")),
           description="reduced formula in neither MP nor ICSD"),
    Metric("match_rate", "match", "%", "samples", "rate", SEARCH, lambda s, c: family_match(s.get("cif"), c.get("family")),
           description="fit_anonymous (stol 0.5, ltol 0.3, angle_tol 10) to an MP reference of the case's family"),
    Metric("formation_energy_mean", "mean E_f", "eV/atom", "samples", "mean", SEARCH + ("best_of_n",),
           _sample_energy("formation_energy_per_atom"), "lower", "CHGNet formation energy (MP scale) of every scored structure, guard-flagged ones included"),
    Metric("formation_energy_median", "median E_f", "eV/atom", "samples", "median", SEARCH + ("best_of_n",),
           _sample_energy("formation_energy_per_atom"), "lower", "CHGNet formation energy (MP scale) of every scored structure, guard-flagged ones included"),
    Metric("e_above_hull_mean", "mean E_hull", "eV/atom", "samples", "mean", SEARCH,
           _sample_energy("e_above_hull"), "lower", "energy above the MP convex hull, of structures the plausibility guard passed"),
    Metric("e_above_hull_median", "median E_hull", "eV/atom", "samples", "median", SEARCH,
           _sample_energy("e_above_hull"), "lower", "energy above the MP convex hull, of structures the plausibility guard passed"),
    Metric("request_conformance", "answers request", "%", "samples", "rate", SEARCH,
           lambda s, c: None if (f := request_failures_of(s, c)) is None else not f,
           description="returned candidate meets every constraint of the request, the family's site rules and the "
                       "application's (tools.conformance); candidates the search did not return are not counted"),
    Metric("requests_answered", "requests answered", "%", "case", "rate", SEARCH, request_answered,
           description="the search returned candidates and all of them answer the request"),
    Metric("seconds_per_request", "s / request", "s", "case", "mean", ("search", "propose"),
           lambda r, c: r.get("seconds"), "lower", "wall-clock seconds of one unit"),
    Metric("structures_per_request", "structures", "count", "case", "mean", SEARCH,
           lambda r, c: len(r.get("samples", [])), description="structures returned per request"),
    Metric("valid_formula_rate", "valid formulae", "%", "proposals", "rate", ("search", "propose"),
           lambda p, c: valid_formula(p.get("formula"), c.get("family")),
           description="proposed formula parses, is SMACT valid and fits the requested family"),
    Metric("element_present", "element present", "%", "proposals", "rate", ("propose",),
           lambda p, c: contains_element(p.get("formula"), ((c.get("expect") or {}).get("element") or "")) if (c.get("expect") or {}).get("element") else None,
           description="proposed formula contains the case's element"),
    Metric("metal_rate", "metals", "%", "proposals", "rate", ("propose",),
           lambda p, c: all_metals(p.get("formula")) if (c.get("expect") or {}).get("metal") else None,
           description="proposed formula consists of metals only"),
    Metric("unique_against_list", "not in list", "%", "proposals", "rate", ("propose",),
           lambda p, c: not_in_list(p.get("formula"), (c.get("expect") or {}).get("unique_against"))
           if (c.get("expect") or {}).get("unique_against") else None,
           description="proposed formula is not in the case's list of formulae"),
    Metric("proposal_uniqueness", "unique (MP/ICSD)", "%", "proposals", "rate", ("propose",),
           lambda p, c: formula_unique(p.get("formula")), description="proposed formula in neither MP nor ICSD"),
    Metric("best_of_n_improved", "best-of-N better", "%", "case", "rate", ("best_of_n",),
           lambda r, c: best_of_n_improved(r.get("energies", [])), description="best of N (by CHGNet) below the single sample"),
    Metric("best_of_n_gain", "E gain", "eV/atom", "case", "mean", ("best_of_n",),
           lambda r, c: best_of_n_gain(r.get("energies", [])), description="single sample's E_f minus the best of N's"),
    Metric("csp_match_rate", "match rate", "%", "pairs", "rate", ("csp",), lambda p, c: csp_matched(p),
           description="MP-20 test CSP: StructureMatcher (stol 0.5, ltol 0.3, angle_tol 10), valid pairs"),
    Metric("csp_rmse", "RMSE", "(V/n)^(1/3)", "pairs", "mean", ("csp",), lambda p, c: csp_rms(p), "lower",
           description="mean RMS distance over matched pairs"),
    Metric("csp_valid", "valid", "%", "pairs", "rate", ("csp",),
           lambda p, c: bool(p.get("comp_valid")) and bool(p.get("struct_valid")), description="composition and structure valid"),
]
_GFN_FIGURES = [
    ("gfn_median_e_form", "median proxy E_f", "eV/atom", "median_e_form", "lower"),
    ("gfn_frac_e_form_below_-2", "E_f < -2", "fraction", "frac_e_form_below_-2", "higher"),
    ("gfn_wyckoff_compatible", "Wyckoff ok", "%", "wyckoff_compatible_pct", "higher"),
    ("gfn_lattice_valid", "lattice ok", "%", "lattice_valid_pct", "higher"),
    ("gfn_smact_valid", "SMACT valid", "%", "smact_valid_pct", "higher"),
    ("gfn_charge_neutral", "charge neutral", "%", "charge_neutral_pct_no_pauling", "higher"),
    ("gfn_distinct_space_groups", "space groups", "count", "distinct_space_groups", "higher"),
    ("gfn_distinct_elements", "elements", "count", "distinct_elements", "higher"),
    ("gfn_sampling_seconds", "sampling s", "s", "sampling_seconds", "lower"),
]
_METRICS += [Metric(name, label, unit, "case", "mean", ("gfn",), _figure(key), better, f"Crystal-GFN benchmark figure {key}")
             for name, label, unit, key, better in _GFN_FIGURES]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}
TASK_METRICS: dict[str, set[str]] = {
    task: {m.name for m in _METRICS if task in m.tasks} for task in ("search", "propose", "best_of_n", "csp", "gfn")
}


# ---------------------------------------------------------------------------- values and pooling


def annotate(record: dict, case: dict, names: Iterable[str]) -> dict:
    """Store each item-level metric's value on the record's items (``item['values'][name]``)."""
    for name in names:
        metric = METRICS[name]
        if metric.level == "case":
            continue
        for item in record.get(metric.level, []):
            item.setdefault("values", {})[name] = _jsonable(metric.value(item, case))
    return record


def values_of(metric: Metric, record: dict, case: dict) -> list:
    """The values one unit contributes to a metric (stored ones first, computed otherwise)."""
    if metric.level == "case":
        return [_jsonable(metric.value(record, case))]
    found = []
    for item in record.get(metric.level, []):
        stored = item.get("values", {})
        found.append(stored[metric.name] if metric.name in stored else _jsonable(metric.value(item, case)))
    return found


def pool(metric: Metric, values: Iterable) -> float | None:
    """Pool values (None dropped): a rate in %, a mean or a median; None when nothing to pool."""
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not kept:
        return None
    if metric.pool == "rate":
        return 100.0 * sum(bool(v) for v in kept) / len(kept)
    numbers = [float(v) for v in kept]
    return statistics.fmean(numbers) if metric.pool == "mean" else statistics.median(numbers)


def _jsonable(value):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        value = float(value)
        return None if math.isnan(value) else round(value, 6)
    return bool(value)
