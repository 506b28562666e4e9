"""Site chemistry of the crystal families: which ion may sit on which site, and why.

Each cation site of a family template allows some oxidation states, has a coordination, and
takes ions whose Shannon radius r(CN) over the anion's radius r_X(VI) lies in a window
(``tools/data/site_rules.yaml``: a garnet's tetrahedral C site takes Si4+ at r/r_O = 0.19, not
Gd3+; a delafossite is A+ B3+ O2). The proposer prunes its candidates with
:func:`check_sites`; the screen applies :func:`best_site_assignment` to any formula (Claude's
proposals, a user's list), so both follow the same rules and every proposal states its site
assignment.

Radii in Å. A site whose average charge is fractional (Co3O4's 8/3+, LiMn2O4's Mn 3.5+) is a
mixed-valence site: its radius is interpolated between the two neighbouring integer states.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from tools.composition import common_states, oxidation_states, state_shares
from tools.families import CrystalFamily, Template, get_family
from tools.formula import FormulaError, ParsedFormula, parse_formula
from tools.geometry import ionic_radius

RULES_PATH = Path(__file__).with_name("data") / "site_rules.yaml"
_COORDINATION_NAMES = {"II": "linear", "IV": "tetrahedral", "VI": "octahedral", "VIII": "8-coordinate",
                       "IX": "9-coordinate", "XII": "12-coordinate"}


@dataclass(frozen=True)
class SiteRule:
    """What one cation site takes: oxidation states, coordination, r/r_X window."""

    states: tuple[int, ...]
    coordination: str
    ratio: tuple[float, float]
    why: str

    @property
    def geometry(self) -> str:
        return _COORDINATION_NAMES.get(self.coordination, self.coordination)


@dataclass(frozen=True)
class SiteFit:
    """One ion on one site: its charge (fractional for mixed valence), r/r_X, and the verdict."""

    label: str
    element: str
    charge: float
    ratio: float | None
    rule: SiteRule
    ok: bool
    problem: str | None = None

    def describe(self) -> str:
        """'Fe3+ on B (octahedral, r/r_X 0.46 in 0.27-0.62)' or what is wrong with it."""
        where = f"{self.element}{_charge_text(self.charge)} on {self.label} ({self.rule.geometry}"
        ratio = (f", r/r_X {self.ratio:.2f} in {self.rule.ratio[0]:.2f}-{self.rule.ratio[1]:.2f})" if self.ratio
                 else f", {self.problem})" if self.problem else ")")
        return where + ratio if self.ok else f"{self.element}{_charge_text(self.charge)} on {self.label}: {self.problem}"


@dataclass(frozen=True)
class SiteAssignment:
    """A formula read as a family template: site -> element, site -> charge, each site's fit."""

    family: str
    template: Template
    assignment: dict[str, str]
    charges: dict[str, float]
    fits: tuple[SiteFit, ...]
    log_prior: float

    @property
    def ok(self) -> bool:
        return all(fit.ok for fit in self.fits)

    def describe(self) -> str:
        """Every site with its ion and why it fits (or the first reason it does not)."""
        if self.ok:
            return "; ".join(fit.describe() for fit in self.fits)
        return "; ".join(fit.describe() for fit in self.fits if not fit.ok)

    def as_dict(self) -> dict:
        return {"family": self.family, "template": self.template.name, "ok": self.ok,
                "sites": [{"site": f.label, "element": f.element, "charge": round(f.charge, 3),
                           "coordination": f.rule.coordination, "ratio": None if f.ratio is None else round(f.ratio, 3),
                           "window": list(f.rule.ratio), "ok": f.ok, "problem": f.problem} for f in self.fits],
                "summary": self.describe()}


def _charge_text(q: float) -> str:
    if abs(q - round(q)) > 1e-6:
        return f"{q:.2f}+".rstrip("0").rstrip(".") if q > 0 else f"{-q:.2f}-"
    q = int(round(q))
    return f"{abs(q) if abs(q) != 1 else ''}{'+' if q > 0 else '-'}"


@lru_cache(maxsize=1)
def site_rules() -> dict[str, dict[str, dict[str, SiteRule]]]:
    """family -> template name -> site label -> rule, from ``tools/data/site_rules.yaml``."""
    raw = yaml.safe_load(RULES_PATH.read_text())
    raw.pop("anion_radii")
    rules: dict[str, dict[str, dict[str, SiteRule]]] = {}
    for family, templates in raw.items():
        for template, sites in templates.items():
            for label, rule in sites.items():
                rules.setdefault(family, {}).setdefault(template, {})[label] = SiteRule(
                    tuple(rule["states"]), rule["cn"], tuple(rule["ratio"]), rule["why"])
    return rules


@lru_cache(maxsize=1)
def _pauling_anion_radii() -> dict[str, float]:
    return yaml.safe_load(RULES_PATH.read_text())["anion_radii"]


def anion_radius(element: str, charge: int) -> float | None:
    """Shannon radius of the anion in octahedral coordination, else Pauling's crystal radius (Å)."""
    return ionic_radius(element, charge, "VI") or _pauling_anion_radii().get(element)


def rules_for(family: CrystalFamily, template: Template) -> dict[str, SiteRule]:
    """The template's cation-site rules (empty for families without charges, e.g. Heuslers)."""
    return site_rules().get(family.name, {}).get(template.name, {})


def _radius(element: str, charge: float, coordination: str) -> float | None:
    """Shannon radius; a fractional charge interpolates between the neighbouring integer states."""
    low, high = math.floor(charge), math.ceil(charge)
    if low == high:
        return ionic_radius(element, int(charge), coordination)
    r_low, r_high = ionic_radius(element, low, coordination), ionic_radius(element, high, coordination)
    if r_low is None or r_high is None:
        return r_low or r_high
    return r_low + (charge - low) * (r_high - r_low)


def _fit(family: CrystalFamily, label: str, element: str, charge: float, rule: SiteRule, r_anion: float | None) -> SiteFit:
    if not _state_allowed(charge, rule):
        allowed = ", ".join(_charge_text(q) for q in rule.states)
        return SiteFit(label, element, charge, None, rule, False,
                       f"{family.name.replace('_', ' ')} site {label} takes {allowed} ({rule.why})")
    radius = _radius(element, charge, rule.coordination)
    if radius is None or r_anion is None:  # Shannon lacks the ion (Bi4+, Pd+): the size cannot be judged
        return SiteFit(label, element, charge, None, rule, True, "size not checked (no Shannon radius)")
    ratio = radius / r_anion
    if not rule.ratio[0] <= ratio <= rule.ratio[1]:
        size = "too small" if ratio < rule.ratio[0] else "too large"
        return SiteFit(label, element, charge, ratio, rule, False,
                       f"{size} for the {rule.geometry} site (r/r_X {ratio:.2f}, window {rule.ratio[0]:.2f}-{rule.ratio[1]:.2f})")
    return SiteFit(label, element, charge, ratio, rule, True)


def check_sites(family: CrystalFamily, template: Template, assignment: dict[str, str],
                charges: dict[str, float]) -> tuple[SiteFit, ...]:
    """Each cation site's fit for given ions and charges (anion radius from the first anion site)."""
    rules = rules_for(family, template)
    anion = next((s for s in template.sites if s.role == "anion"), None)
    r_anion = anion_radius(assignment[anion.label], int(charges[anion.label])) if anion else None
    return tuple(_fit(family, site.label, assignment[site.label], charges[site.label], rules[site.label], r_anion)
                 for site in template.sites if site.label in rules)


def _charge_options(template: Template, assignment: dict[str, str], rules: dict[str, SiteRule]):
    """(charges, log prior) of every way the common oxidation states balance the template;
    one site at a time may take a fractional (mixed-valence) charge when no integer one does.
    rare oxidation states are tried only when no common reading gives every site a state it takes."""
    cation_sites = [s for s in template.sites if s.role != "anion"]
    fixed, log_fixed = {}, 0.0
    for site in template.sites:
        if site.role == "anion":
            states = common_states(assignment[site.label], -1)[:1]
            if not states:
                return
            fixed[site.label] = states[0][0]
            log_fixed += site.count * math.log(states[0][1])
    anion_charge = sum(fixed[s.label] * s.count for s in template.sites if s.role == "anion")
    common = list(_balanced(cation_sites, [common_states(assignment[s.label], +1) for s in cation_sites],
                            fixed, log_fixed, anion_charge))
    yield from common
    if not any(all(_state_allowed(charges[s.label], rules[s.label]) for s in cation_sites if s.label in rules)
               for charges, _ in common):
        yield from _balanced(cation_sites, [_all_states(assignment[s.label]) for s in cation_sites],
                             fixed, log_fixed, anion_charge)


def _state_allowed(charge: float, rule: SiteRule) -> bool:
    """An integer charge the site lists, or a mixed valence inside the listed range."""
    if abs(charge - round(charge)) < 1e-6:
        return round(charge) in rule.states
    return min(rule.states) <= charge <= max(rule.states)


def _all_states(element: str) -> list[tuple[int, float]]:
    """Every positive state SMACT lists, the rare ones with a small share (Bi5+, W5+, Pd+)."""
    shares = dict(state_shares().get(element, []))
    return [(q, max(shares.get(q, 0.0), 1e-3)) for q in oxidation_states(element) if q > 0]


def _balanced(cation_sites, options, fixed, log_fixed, anion_charge):
    found = False
    for combo in itertools.product(*options):
        if sum(q * s.count for (q, _), s in zip(combo, cation_sites)) + anion_charge == 0:
            found = True
            yield ({**fixed, **{s.label: q for (q, _), s in zip(combo, cation_sites)}},
                   log_fixed + sum(s.count * math.log(p) for (_, p), s in zip(combo, cation_sites)))
    if found:
        return
    for mixed_index, mixed in enumerate(cation_sites):
        others = [s for s in cation_sites if s is not mixed]
        for combo in itertools.product(*[options[cation_sites.index(s)] for s in others]):
            rest = anion_charge + sum(q * s.count for (q, _), s in zip(combo, others))
            average = -rest / mixed.count
            states = [q for q, _ in options[mixed_index]]
            if len(states) >= 2 and min(states) < average < max(states):
                shares = dict(options[mixed_index])
                near = [shares[q] for q in states if abs(q - average) < 1]
                yield ({**fixed, **{s.label: q for (q, _), s in zip(combo, others)}, mixed.label: average},
                       log_fixed + sum(s.count * math.log(p) for (_, p), s in zip(combo, others))
                       + mixed.count * math.log(max(near or [min(shares.values())])))


def site_assignments(family: CrystalFamily | str, formula: str | ParsedFormula) -> list[SiteAssignment]:
    """Every reading of the formula as the family's templates with balanced charges, the ones
    whose ions all fit their sites first, then by how common the oxidation states are."""
    family = get_family(family) if isinstance(family, str) else family
    try:
        parsed = parse_formula(formula) if isinstance(formula, str) else formula
    except FormulaError:
        return []
    readings = []
    for template, assignment in family.assignments(parsed):
        rules = rules_for(family, template)
        if not rules:
            continue
        for charges, log_prior in _charge_options(template, assignment, rules):
            fits = check_sites(family, template, assignment, charges)
            readings.append(SiteAssignment(family.name, template, assignment, charges, fits, log_prior))
    return sorted(readings, key=lambda r: (not r.ok, -r.log_prior))


def best_site_assignment(family: CrystalFamily | str, formula: str | ParsedFormula) -> SiteAssignment | None:
    """The most plausible reading (all sites fit if any reading does); None when the formula does
    not fit the family's templates with balanced charges, or the family has no site rules."""
    readings = site_assignments(family, formula)
    return readings[0] if readings else None


def has_site_rules(family: CrystalFamily | str) -> bool:
    """Does the family have site rules (all but the Heusler families)?"""
    name = family if isinstance(family, str) else family.name
    return get_family(name).name in site_rules()
