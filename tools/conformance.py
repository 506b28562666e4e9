"""Does a candidate answer the request? Every constraint of a spec checked on one candidate.

The ``requests`` eval suite writes, for each request, the constraints a materials scientist
reads in it (SearchSpec fields, by hand, independent of the request reader) and checks every
candidate the search returns against them with :func:`request_failures`:

- the request's own constraints and the family's site chemistry: the R_hi screen
  (``tools.screen.screen_one``: charge balance, novelty, family template and site rules, atom
  ratio, element counts, required / excluded / allowed elements, anion class, redox);
- what the named application implies (``tools/data/vocabulary.yaml``): working ion, redox
  metal, elements to avoid, the band-gap window (a composition-only PBE estimate against the
  window on the PBE scale, widened by the estimate's error), a metal or not;
- stability: the energy above the hull under the request's cut.
"""

from __future__ import annotations

from tools.composition import is_metal
from tools.formula import FormulaError, parse_formula
from tools.spec import SearchSpec, application_fields

def expected_spec(fields: dict) -> SearchSpec:
    """A spec from hand-written fields; a named application adds what it implies (the working
    ion, a redox metal, the band-gap window ...) unless the fields already say it."""
    fields = dict(fields)
    if fields.get("application"):
        required, excluded = set(fields.get("required_elements", [])), set(fields.get("excluded_elements", []))
        implied = application_fields("", required, excluded, name=fields["application"])
        for key, value in implied.items():
            if key in ("required_elements", "excluded_elements"):
                fields[key] = sorted(set(fields.get(key, [])) | set(value))
            elif fields.get(key) is None or key == "required_any" and not fields.get(key):
                fields[key] = value
    return SearchSpec(**fields)


def _gap_failure(formula: str, spec: SearchSpec) -> str | None:
    if spec.band_gap is None:
        return None
    from tools.gap_estimate import estimate_band_gap, pbe_window

    gap = estimate_band_gap(formula)
    low, high = pbe_window(spec.band_gap, spec.band_gap_tolerance)
    if low <= gap <= high:
        return None
    return (f"estimated PBE band gap {gap:.1f} eV outside {low:.1f}-{high:.1f} eV, the PBE-scale window of the "
            f"{spec.band_gap:g} ± {spec.band_gap_tolerance:g} eV asked (tools.gap_estimate.pbe_window)")


def request_failures(formula: str, spec: SearchSpec, e_above_hull: float | None = None) -> list[str]:
    """Why the candidate does not answer the request (empty when it does)."""
    from tools.screen import screen_one

    try:
        parsed = parse_formula(formula)
    except FormulaError as exc:
        return [f"not a formula: {exc}"]
    failures = []
    verdict = screen_one(parsed.reduced_formula, spec, earlier=frozenset())
    if not verdict.passed:
        failures.append(f"{verdict.rejected_by}: {verdict.reason}")
    metals = all(is_metal(el) for el in parsed.reduced_amounts)
    if spec.electronic == "metal" and not metals:
        failures.append("not a metal (non-metal elements in an intermetallic request)")
    elif spec.electronic in ("semiconductor", "insulator") and metals:
        failures.append(f"all metals: cannot be the {spec.electronic} asked for")
    gap = _gap_failure(parsed.reduced_formula, spec)
    if gap:
        failures.append(gap)
    cut = getattr(spec, "max_e_above_hull", None)
    if cut is not None:
        if e_above_hull is None:
            failures.append("no energy above the hull (not scored), stability asked for")
        elif e_above_hull > cut + 1e-9:
            failures.append(f"{e_above_hull:.3f} eV/atom above the hull, over the {cut:g} eV/atom asked for")
    return failures
