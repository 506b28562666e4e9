"""The R_hi screen of GenMS: prune and rank proposed formulae against the request.

Checks run in order and the first failure is recorded with its reason:
``regex`` (a formula of known elements) -> ``charge_neutrality`` (SMACT, mixed valence
allowed) -> ``uniqueness`` (not in the sets the request excludes: MP, ICSD, OQMD, what earlier
genms runs produced, the user's list) -> ``compliance`` (family template and site chemistry, atom
ratio, required / excluded / allowed elements, anion class, size). Survivors are ranked by a score
in [0, 1] that combines the proposer's own prior with how common the oxidation states are and
Pauling's test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tools.composition import ChargeBalance, balanced_assignments, charge_balance
from tools.families import get_family
from tools.formula import FormulaError, ParsedFormula, parse_formula
from tools.sites import best_site_assignment, has_site_rules
from tools.spec import SearchSpec
from tools.uniqueness import check_uniqueness
from tools.vocabulary import application_named

CHECKS = ("regex", "charge_neutrality", "uniqueness", "compliance")


@dataclass
class ScreenedFormula:
    """A proposal after the screen. ``score`` is null for rejected formulae."""

    formula: str
    reduced_formula: str | None
    rationale: str
    source: str
    passed: bool
    rejected_by: str | None
    reason: str | None
    score: float | None
    known_in: list[str] | None = None
    oxidation_states: dict[str, list[int]] | None = None
    sites: str | None = None  # the family's site assignment and why each ion fits

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _site_reading(parsed: ParsedFormula, spec: SearchSpec):
    """The requested family's best site assignment of the formula (None without a family with site rules)."""
    return best_site_assignment(spec.family, parsed) if spec.family and has_site_rules(spec.family) else None


def _compliance(parsed: ParsedFormula, spec: SearchSpec, reading) -> str | None:
    """Why the formula does not comply with the spec, or None (``reading``: :func:`_site_reading`)."""
    elements = set(parsed.reduced_amounts)
    if spec.family and not get_family(spec.family).fits(parsed):
        family = get_family(spec.family)
        return f"not a {family.name.replace('_', ' ')} ({', '.join(t.name for t in family.templates)} with {', '.join(sorted(family.anions)) or 'no'} anions)"
    if spec.family and has_site_rules(spec.family):
        if reading is None:
            return f"no charge-balanced reading as a {spec.family.replace('_', ' ')}"
        if not reading.ok:
            return f"site chemistry: {reading.describe()}"
    if spec.stoichiometry:
        wanted = sorted(map(int, spec.stoichiometry.split(":")))
        if sorted(parsed.reduced_amounts.values()) != wanted:
            return f"atom ratio is not {spec.stoichiometry}"
    if spec.n_elements and len(elements) != spec.n_elements:
        return f"has {len(elements)} elements, not {spec.n_elements}"
    missing = set(spec.required_elements) - elements
    if missing:
        return f"missing required {', '.join(sorted(missing))}"
    for group in spec.required_any:
        if not elements & set(group):
            return f"needs one of {', '.join(group)}" + (f" (for {spec.application})" if spec.application else "")
    banned = elements & set(spec.excluded_elements)
    if banned:
        return f"contains excluded {', '.join(sorted(banned))}"
    if spec.allowed_elements is not None and not elements <= set(spec.allowed_elements):
        return f"uses {', '.join(sorted(elements - set(spec.allowed_elements)))} outside the {'-'.join(spec.allowed_elements)} system"
    anions = spec.anions()
    if spec.anion_class and anions is not None and not elements & anions:
        return f"not a {spec.anion_class} (needs {', '.join(sorted(anions))})"
    if sum(parsed.reduced_amounts.values()) > spec.max_sites:
        return f"formula unit has more than {spec.max_sites} atoms"
    return None


def _redox(parsed: ParsedFormula, states: dict[str, list[int]], spec: SearchSpec) -> str | None:
    """Why the formula cannot do the application's redox (in every charge-balanced reading, its
    metals are already at their highest working oxidation state), or None; applications without
    a redox rule always pass."""
    application = application_named(spec.application)
    if application is None or not application.redox_ceiling:
        return None
    ceiling = application.redox_ceiling
    # SMACT's reading (mixed valence: LiTi2O4's Ti3+/4+) and every other balanced one (LiVPtO4's V3+ Pt4+)
    pairs = [(el, q) for el, charges in states.items() for q in charges]
    pairs += [pair for reading in balanced_assignments(parsed) for pair in reading.items()]
    if any(q < ceiling[el] for el, q in pairs if el in ceiling):
        return None
    held = ", ".join(f"{el}{max(charges)}+" for el, charges in sorted(states.items()) if el in ceiling and charges)
    return (f"{held or 'no redox-active metal'}: nothing to oxidise on charging (a {application.name} needs a "
            "metal below its highest working oxidation state, e.g. Mn3+, Fe2+, Co3+, Ni2+)")


def _uniqueness(parsed: ParsedFormula, spec: SearchSpec, earlier: frozenset[str]) -> tuple[str | None, list[str]]:
    verdict = check_uniqueness(parsed, exclude=spec.exclude_formulas, against=spec.novel_against or ())
    known_in = verdict.known_in + (["genms"] if parsed.key in earlier else [])
    if verdict.in_exclusion_list:
        return "in the user's exclusion list", known_in
    clash = [s for s in known_in if s in spec.novel_against]
    return (f"already known in {', '.join(clash)}" if clash else None), known_in


def earlier_runs_formulas(spec: SearchSpec) -> frozenset[str]:
    """Composition keys of what earlier genms runs produced, when the request asks for novelty against them."""
    if "genms" not in spec.novel_against:
        return frozenset()
    from tools.knowledge import earlier_formulas

    keys = set()
    for formula in earlier_formulas():
        try:
            keys.add(parse_formula(formula).key)
        except FormulaError:
            continue
    return frozenset(keys)


def oxidation_state_score(balance: ChargeBalance) -> float:
    """Mean ICSD share of the oxidation states used (1 = all the commonest states)."""
    from tools.composition import species_log_probability

    log_p = species_log_probability()
    logs = [log_p.get((el, q), math.log(1e-4)) for el, qs in (balance.oxidation_states or {}).items() for q in set(qs)]
    return math.exp(sum(logs) / len(logs)) if logs else 0.0


def rank_score(balance: ChargeBalance, prior: float | None) -> float:
    """Offline ranking score in [0, 1]: oxidation-state likelihood, Pauling, proposer prior."""
    score = 0.6 * oxidation_state_score(balance) + 0.2 * balance.electronegativity_ok
    return round(score + 0.2 * (prior if prior is not None else 0.5), 4)


def _metallic_alloy(parsed: ParsedFormula, balance: ChargeBalance, spec: SearchSpec) -> bool:
    """An all-metal composition asked for by a request for metals: valid by SMACT's alloy rule
    (GenMS/CDVAE composition validity), so charge neutrality does not apply."""
    from tools.composition import is_metal

    return spec.electronic == "metal" and balance.composition_valid and all(is_metal(el) for el in parsed.reduced_amounts)


def screen_one(formula: str, spec: SearchSpec, rationale: str = "", source: str = "user", prior: float | None = None,
               earlier: frozenset[str] | None = None) -> ScreenedFormula:
    """Run the checks on one formula (``earlier``: formulae of earlier runs, looked up if not given)."""
    result = ScreenedFormula(formula, None, rationale, source, False, None, None, None)
    try:
        parsed = parse_formula(formula)
    except FormulaError as exc:
        result.rejected_by, result.reason = "regex", str(exc)
        return result
    result.reduced_formula = parsed.reduced_formula
    balance = charge_balance(parsed)
    result.oxidation_states = balance.oxidation_states
    if not balance.charge_balanced and not _metallic_alloy(parsed, balance, spec):
        result.rejected_by, result.reason = "charge_neutrality", "no charge-neutral assignment of common oxidation states"
        return result
    earlier = earlier_runs_formulas(spec) if earlier is None else earlier
    reason, result.known_in = _uniqueness(parsed, spec, earlier)
    if reason:
        result.rejected_by, result.reason = "uniqueness", reason
        return result
    reading = _site_reading(parsed, spec)
    reason = _compliance(parsed, spec, reading) or _redox(parsed, balance.oxidation_states or {}, spec)
    if reason:
        result.rejected_by, result.reason = "compliance", reason
        return result
    result.passed, result.score = True, rank_score(balance, prior)
    if reading is not None:
        result.sites = reading.describe()
    return result


def screen(proposals, spec: SearchSpec) -> list[ScreenedFormula]:
    """Screen proposals (``Proposal`` objects or plain formula strings), survivors first by score.

    A formula proposed twice (the same reduced composition) is kept once.
    """
    screened, seen, earlier = [], set(), earlier_runs_formulas(spec)
    for proposal in proposals:
        if isinstance(proposal, str):
            item = screen_one(proposal, spec, earlier=earlier)
        else:
            item = screen_one(proposal.formula, spec, proposal.rationale, proposal.source, proposal.prior, earlier)
        key = item.reduced_formula or item.formula
        if key in seen:
            continue
        seen.add(key)
        screened.append(item)
    return sorted(screened, key=lambda s: (not s.passed, -(s.score or 0.0)))
