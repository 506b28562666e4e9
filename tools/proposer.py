"""The offline formula proposer (GenMS's pi_hi without a language model).

Two sources of candidates, both honouring every constraint of the ``SearchSpec``:

1. *Data-driven ion substitution*: known members of the requested family (MP structures of
   the shared data) with one or two sites substituted, ranked by pymatgen's ICSD-derived
   substitution probabilities (Hautier et al. 2011).
2. *Template enumeration*: the family's stoichiometry templates filled with cations and
   anions in common SMACT/ICSD oxidation states so that the charges balance.

Geometric rules prune both (tolerance factor for perovskites, radius ratio for pyrochlores,
octahedral factor for spinels). Candidates are scored (oxidation-state likelihood,
substitution probability, geometry, novelty) and H of them are drawn at random with a seeded
generator, weighted by score, so that different seeds give different proposals.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

from pymatgen.core import Element, Species

from tools.composition import MIN_STATE_SHARE, common_states, state_shares
from tools.families import CrystalFamily, Site, Template, family_members, get_family
from tools.formula import FormulaError, parse_formula
from tools.geometry import (
    perovskite_factors,
    perovskite_formable,
    pyrochlore_formable,
    pyrochlore_ratio,
    spinel_formable,
    spinel_octahedral_factor,
)
from tools.sites import check_sites, rules_for
from tools.spec import ALL_ANIONS, SearchSpec
from tools.uniqueness import known_formula_index
from tools.vocabulary import application_named, vocabulary

# Elements a proposal may use as cations: stable, non-radioactive, known to form cations.
_RADIOACTIVE = {"Tc", "Pm", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu"}
_NOT_CATIONS = {"H", "C", "N", "O", "F", "Cl", "Br", "I", "S", "Se", "He", "Ne", "Ar", "Kr", "Xe"}
GENERIC_RATIOS = ("1:1", "1:2", "2:3", "1:3", "1:1:2", "1:1:3", "1:2:4", "2:1:4", "2:2:7", "1:1:1:4")
# Mixed-anion compounds (two anion sites): TaON, LaOCl 1:1:1; La2O2S 2:2:1; BaTaO2N 1:1:2:1; Sr2CuO2Cl2 2:1:2:2.
MIXED_ANION_RATIOS = ("1:1:1", "2:2:1", "1:2:1", "1:1:2:1", "1:1:1:2", "2:1:2:2", "1:1:3:1")


@dataclass(frozen=True)
class Proposal:
    """A proposed formula with why it was proposed and the proposer's own score (higher is better)."""

    formula: str
    rationale: str
    source: str
    prior: float
    family: str | None = None
    assignment: dict[str, str] = field(default_factory=dict, compare=False)


@lru_cache(maxsize=1)
def cation_pool() -> tuple[str, ...]:
    """Elements up to Bi (plus the lanthanides) that commonly form cations."""
    pool = []
    for element in Element:
        symbol = element.symbol
        if element.Z > 83 or symbol in _RADIOACTIVE or symbol in _NOT_CATIONS:
            continue
        if common_states(symbol, +1):
            pool.append(symbol)
    return tuple(pool)


@dataclass
class _Candidate:
    assignment: dict[str, str]
    charges: dict[str, int]
    template: Template
    source: str
    log_prior: float
    notes: list[str]


def _site_elements(spec: SearchSpec, family: CrystalFamily | None, site: Site) -> list[str]:
    """Elements allowed on a site by its role, the family, and the spec."""
    excluded = set(spec.excluded_elements)
    allowed = set(spec.allowed_elements) if spec.allowed_elements is not None else None
    if site.role == "anion":
        anions = spec.anions()
        candidates = anions if anions is not None else (family.anions if family and family.anions else ALL_ANIONS)
    else:
        candidates = [el for el in cation_pool() if family is None or family.site_accepts(site, el)]
    return sorted(el for el in candidates if el not in excluded and (allowed is None or el in allowed))


def _templates(spec: SearchSpec) -> list[tuple[CrystalFamily | None, Template]]:
    if spec.family:
        family = get_family(spec.family)
        templates = family.templates
        if spec.stoichiometry:
            wanted = sorted(map(int, spec.stoichiometry.split(":")))
            templates = [t for t in templates if sorted(s.count for s in t.sites) == wanted]
        return [(family, t) for t in templates]
    mixed = vocabulary().mixed_anion_classes.get(spec.anion_class or "")
    ratios = [spec.stoichiometry] if spec.stoichiometry else list(MIXED_ANION_RATIOS if mixed else GENERIC_RATIOS)
    if spec.n_elements:
        ratios = [r for r in ratios if len(r.split(":")) == spec.n_elements] or _ratios_of(spec.n_elements)
    if spec.allowed_elements is not None:
        ratios = [r for r in ratios if len(r.split(":")) == len(spec.allowed_elements)] or ratios
    return [(None, template) for ratio in ratios for template in _generic_templates(ratio, len(mixed) if mixed else 1)]


def _ratios_of(n_elements: int) -> list[str]:
    """Generic ratios of ``n_elements`` parts when GENERIC_RATIOS has none: cations 1 each, the anion
    balancing a +2 average charge ('1:1:1:1:4' for five elements)."""
    cations = n_elements - 1
    return [":".join(["1"] * cations + [str(max(cations, 1))]), ":".join(["1"] * cations + [str(cations + 1)])]


def _generic_templates(ratio: str, anion_sites: int = 1) -> list[Template]:
    """A ratio with ``anion_sites`` anion sites (two for a mixed-anion class): every choice of the
    anion positions that leaves a cation gives a template."""
    counts = [int(c) for c in ratio.split(":")]
    labels = [chr(ord("A") + i) for i in range(len(counts))]
    templates = []
    for anions in itertools.combinations(range(len(counts)), anion_sites):
        if len(anions) == len(counts):
            continue
        sites = tuple(
            Site(label, count, "anion" if i in anions else "cation") for i, (label, count) in enumerate(zip(labels, counts))
        )
        templates.append(Template("".join(f"{s.label}{s.count if s.count > 1 else ''}" for s in sites), sites))
    return templates


def _formula(assignment: dict[str, str], template: Template) -> str:
    amounts: dict[str, int] = {}
    for site in template.sites:
        amounts[assignment[site.label]] = amounts.get(assignment[site.label], 0) + site.count
    return parse_formula("".join(f"{el}{n}" for el, n in amounts.items())).plain_formula


def _enumerate(spec: SearchSpec, family, template: Template, rng: random.Random, tries: int) -> list[_Candidate]:
    """Random charge-balanced fillings of a template, required elements placed first."""
    choices = {site.label: _site_elements(spec, family, site) for site in template.sites}
    if any(not options for options in choices.values()):
        return []
    states = {label: rule.states for label, rule in rules_for(family, template).items()} if family else {}
    found = []
    for _ in range(tries):
        assignment = _place_required(spec, template, choices, rng)
        if assignment is None:
            break
        candidate = _complete(template, choices, assignment, rng, states)
        if candidate:
            found.append(candidate)
    return found


def _place_required(spec, template, choices, rng) -> dict[str, str] | None:
    """Put each required element on a random site that accepts it, then one element of each
    ``required_any`` group not yet present; None when impossible."""
    assignment: dict[str, str] = {}
    for element in rng.sample(spec.required_elements, len(spec.required_elements)):
        sites = [s.label for s in template.sites if element in choices[s.label] and s.label not in assignment]
        if not sites:
            return None
        assignment[rng.choice(sites)] = element
    for group in spec.required_any:
        if set(group) & set(assignment.values()):
            continue
        options = [(s.label, el) for s in template.sites if s.label not in assignment for el in group if el in choices[s.label]]
        if not options:
            return None
        site, element = rng.choice(options)
        assignment[site] = element
    return assignment


def _complete(template: Template, choices, assignment: dict[str, str], rng: random.Random,
              site_states: dict[str, tuple[int, ...]] | None = None) -> _Candidate | None:
    """Fill the open sites so that the oxidation states balance (the last cation is solved for);
    ``site_states`` limits a site to the oxidation states its family allows there."""
    site_states = site_states or {}
    assignment = dict(assignment)
    charges: dict[str, int] = {}
    log_prior = 0.0
    for site in template.sites:
        if site.label in assignment and site.role == "anion":
            states = common_states(assignment[site.label], -1)[:1]
            if not states:
                return None
            charges[site.label] = states[0][0]
            log_prior += site.count * math.log(states[0][1])
    open_sites = [s for s in template.sites if s.label not in charges]
    if not open_sites:
        return None
    last = open_sites[-1]
    for site in open_sites[:-1]:
        element = assignment.get(site.label) or rng.choice([e for e in choices[site.label] if e not in assignment.values()] or [None])
        if element is None:
            return None
        sign = -1 if site.role == "anion" else +1
        states = [(q, p) for q, p in common_states(element, sign) if q in site_states.get(site.label, (q,))]
        if not states:
            return None
        charge, share = rng.choices(states, weights=[p for _, p in states])[0]
        assignment[site.label], charges[site.label] = element, charge
        log_prior += site.count * math.log(share)
    balance = -sum(charges[s.label] * s.count for s in template.sites if s.label in charges)
    if balance % last.count:
        return None
    needed = balance // last.count
    if needed not in site_states.get(last.label, (needed,)):
        return None
    sign = -1 if last.role == "anion" else +1
    pool = [assignment[last.label]] if last.label in assignment else [e for e in choices[last.label] if e not in assignment.values()]
    options = [(e, p) for e in pool for q, p in common_states(e, sign) if q == needed]
    if not options:
        return None
    element, share = rng.choices(options, weights=[p for _, p in options])[0]
    assignment[last.label], charges[last.label] = element, needed
    log_prior += last.count * math.log(share)
    return _Candidate(assignment, charges, template, "enumeration", log_prior, [])


def _system_candidates(spec: SearchSpec, max_count: int = 6) -> list[_Candidate]:
    """Every small charge-balanced stoichiometry of a chemical system ('Li-Mn-O')."""
    from tools.composition import charge_balance

    elements = list(spec.allowed_elements)
    log_p = state_shares()
    found = []
    for counts in itertools.product(range(1, max_count + 1), repeat=len(elements)):
        if math.gcd(*counts) != 1 or sum(counts) > spec.max_sites:
            continue
        parsed = parse_formula("".join(f"{el}{n}" for el, n in zip(elements, counts)))
        balance = charge_balance(parsed)
        if not balance.charge_balanced or not balance.electronegativity_ok:
            continue
        shares = [dict(log_p.get(el, [])).get(q, 0.0) for el, qs in balance.oxidation_states.items() for q in qs]
        if min(shares) < MIN_STATE_SHARE:  # e.g. Mn- in Li6Mn4O: balanced on paper only
            continue
        sites = tuple(Site(el, n, "cation") for el, n in zip(elements, counts))
        charges = {el: balance.oxidation_states[el][0] for el in elements}
        note = ["mixed valence " + ", ".join(f"{el} {'/'.join(map(str, sorted(set(q))))}" for el, q in balance.oxidation_states.items() if len(set(q)) > 1)] if balance.mixed_valence else []
        found.append(_Candidate({el: el for el in elements}, charges, Template(parsed.plain_formula, sites), "system", sum(map(math.log, shares)) / len(shares) * sum(counts), note))
    return found


def _excluded_keys(spec: SearchSpec) -> set[str]:
    """Composition keys of the user's exclusion list (unparsable entries are the screen's to report)."""
    keys = set()
    for formula in spec.exclude_formulas:
        try:
            keys.add(parse_formula(formula).key)
        except FormulaError:
            continue
    return keys


def metal_pool() -> tuple[str, ...]:
    """Cation-forming elements that are metals (SMACT's list, as the alloy rule of composition validity)."""
    from tools.composition import is_metal

    return tuple(el for el in cation_pool() if is_metal(el))


@lru_cache(maxsize=1)
def intermetallic_log_shares() -> dict[str, float]:
    """Metal -> log of its share of the element slots of ICSD's all-metal compounds (>= 2 elements):
    how often each metal forms ordered intermetallics in experiment."""
    import re

    from tools.composition import is_metal

    counts: dict[str, int] = {}
    for key, sources in known_formula_index().items():
        elements = re.findall(r"[A-Z][a-z]?", key)
        if "ICSD" in sources and len(elements) >= 2 and all(is_metal(el) for el in elements):
            for element in elements:
                counts[element] = counts.get(element, 0) + 1
    total = sum(counts.values()) or 1
    return {element: math.log(count / total) for element, count in counts.items()}


def _metallic_candidates(spec: SearchSpec, template: Template, rng: random.Random, tries: int) -> list[_Candidate]:
    """All-metal fillings of a ratio for a request for metals (intermetallics: no charge balance).

    The prior: how often each metal forms intermetallics in ICSD (:func:`intermetallic_log_shares`),
    and a moderate Pauling electronegativity spread (about 0.7, typical of ordered intermetallics
    such as half-Heuslers and Laves phases) over near-identical metals (solid solutions rather
    than compounds) and very ionic pairs."""
    excluded = set(spec.excluded_elements)
    allowed = set(spec.allowed_elements) if spec.allowed_elements is not None else None
    metals = [el for el in metal_pool() if el not in excluded and (allowed is None or el in allowed)]
    labels = [site.label for site in template.sites]
    required = [el for el in spec.required_elements if el in metals]
    if len(required) < len(spec.required_elements) or len(metals) < len(labels) or len(required) > len(labels):
        return []
    shares = intermetallic_log_shares()
    rare = min(shares.values(), default=0.0)
    found = []
    for _ in range(tries):
        chosen = list(required)
        for group in spec.required_any:  # one metal of each group not yet present (a magnet's Fe, Co, Ni or Mn)
            options = [el for el in group if el in metals and el not in chosen]
            if not set(group) & set(chosen) and options and len(chosen) < len(labels):
                chosen.append(rng.choice(options))
        chosen += rng.sample([el for el in metals if el not in chosen], len(labels) - len(chosen))
        rng.shuffle(chosen)
        negativities = [Element(el).X for el in chosen]
        spread = max(negativities) - min(negativities)
        log_prior = sum(shares.get(el, rare) for el in chosen) / len(chosen) - abs(spread - 0.7) * 2.0
        assignment = dict(zip(labels, chosen))
        found.append(_Candidate(assignment, {label: 0 for label in labels}, template, "intermetallic", log_prior,
                                [f"all metals, electronegativity spread {spread:.2f}"]))
    return found


def _geometry(family: CrystalFamily | None, candidate: _Candidate) -> tuple[bool, float, str | None]:
    """(passes, log-score bonus, note) from the family's geometric rule, if it has one."""
    if family is None:
        return True, 0.0, None
    a, c = candidate.assignment, candidate.charges
    ion = lambda label: (a[label], c[label])  # noqa: E731
    if family.name in {"perovskite", "double_perovskite", "elpasolite"}:
        bs = [ion("B")] + ([ion("B'")] if "B'" in a else [])
        factors = perovskite_factors(ion("A"), bs, ion("X"))
        if not perovskite_formable(factors):
            return False, 0.0, None
        t = factors["tolerance_factor"]
        return True, -((t - 0.97) / 0.06) ** 2, f"tolerance factor {t:.2f}, octahedral factor {factors['octahedral_factor']:.2f}"
    if family.name == "pyrochlore":
        if not pyrochlore_formable(ion("A"), ion("B")):
            return False, 0.0, None
        ratio = pyrochlore_ratio(ion("A"), ion("B"))
        return True, -((ratio - 1.62) / 0.12) ** 2, f"r_A/r_B = {ratio:.2f} (pyrochlore field 1.46-1.78)"
    if family.name in {"spinel", "inverse_spinel"} and "B" in a:
        if not spinel_formable(ion("A"), ion("B"), ion("X")):
            return False, 0.0, None
        return True, 0.0, f"octahedral factor r_B/r_X = {spinel_octahedral_factor(ion('B'), ion('X')):.2f}"
    return True, 0.0, None


@lru_cache(maxsize=1)
def _substitution_table():
    """pymatgen's ``SubstitutionProbability`` on its default lambda table (Hautier et al. 2011)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    try:
        return _build_substitution_table(SubstitutionProbability)
    except Exception:  # a pymatgen whose table is laid out otherwise: its own (slower) constructor
        return SubstitutionProbability()


def _build_substitution_table(cls):
    """A ``cls`` instance as ``cls()`` builds it: the same species, lambdas and sums, added in the
    same order (so the very same numbers), with the ~53,000 pair look-ups of its normalisation
    done on the species' strings. pymatgen's constructor does them on ``Species`` objects, whose
    hashing formats a string each time: 2-4 s of every process that proposes formulae.
    """
    import sys
    from collections import defaultdict
    from pathlib import Path

    import orjson  # as the constructor reads the table

    alpha = -5  # the constructor's default weight of never-observed substitutions
    path = Path(sys.modules[cls.__module__].__file__).with_name("data") / "lambda.json"
    rows = orjson.loads(path.read_bytes())
    parsed: dict[str, Species] = {}

    def ion(text: str) -> Species:
        if text not in parsed:
            parsed[text] = Species.from_str(text)
        return parsed[text]

    lambdas: dict[frozenset, float] = {}
    by_name: dict[frozenset, float] = {}
    species: set[Species] = set()
    for row in rows:
        if "D1+" not in row:
            s1, s2 = ion(row[0]), ion(row[1])
            species.add(s1)
            species.add(s2)
            lambdas[frozenset([s1, s2])] = float(row[2])
            by_name[frozenset([str(s1), str(s2)])] = float(row[2])
    ordered = list(species)  # the set's iteration order, as the constructor's product() walks it
    names = [str(s) for s in ordered]
    sums, total = [0.0] * len(ordered), 0
    for i, j in itertools.product(range(len(ordered)), repeat=2):
        value = math.exp(by_name.get(frozenset([names[i], names[j]]), alpha))
        sums[i] += value / 2
        sums[j] += value / 2
        total += value
    table = object.__new__(cls)
    table.__dict__.update(_lambda_table=rows, alpha=alpha, _l=lambdas, species=species, Z=total,
                          _px=defaultdict(float, zip(ordered, sums)), _initialized=True)
    table.cond_prob(ordered[0], ordered[-1])  # its own methods work on what was built
    return table


@lru_cache(maxsize=None)
def _substitution_probability(old: str, old_charge: int, new: str, new_charge: int) -> float | None:
    """The table's probability of ``new`` (ion) replacing ``old``, None when the table lacks the ion.

    Cached by element and charge: pymatgen compares and hashes ``Species`` objects slowly, and
    a search asks for the same few hundred pairs thousands of times.
    """
    table = _substitution_table()
    replacement = Species(new, new_charge)
    if replacement not in table.species:
        return None
    return table.cond_prob(Species(old, old_charge), replacement)


def _substitute(spec: SearchSpec, family: CrystalFamily, rng: random.Random, tries: int) -> list[_Candidate]:
    """Known family members with one or two sites swapped for ions that substitute well."""
    from tools.composition import charge_balance

    seeds = []
    for formula in family_members(family.name):
        assignment = family.assignment(formula)
        balance = charge_balance(parse_formula(formula))
        if assignment and balance.charge_balanced and not balance.mixed_valence:
            charges = {label: balance.oxidation_states[el][0] for label, el in assignment.items()}
            template = next(t for t in family.templates if {s.label for s in t.sites} == set(assignment))
            forced = [s.label for s in template.sites if assignment[s.label] not in _site_elements(spec, family, s)]
            # Anions are never swapped (the charges would no longer balance); cations may be.
            if not any(s.role == "anion" and s.label in forced for s in template.sites):
                seeds.append((formula, assignment, charges, template, forced))
    found = []
    for _ in range(tries if seeds else 0):
        formula, assignment, charges, template, forced = rng.choice(seeds)
        new_assignment, notes, log_p = dict(assignment), [], 0.0
        free = [label for label in sorted(assignment) if label not in forced]
        chosen = forced + rng.sample(free, max(0, min(len(free), rng.choice((1, 1, 2)) - len(forced))))
        for label in chosen:
            site = next(s for s in template.sites if s.label == label)
            charge = charges[label]
            options = [
                (el, p)
                for el in _site_elements(spec, family, site)
                if el not in new_assignment.values() and charge in dict(common_states(el, 1 if charge > 0 else -1))
                and (p := _substitution_probability(assignment[label], charge, el, charge)) is not None
            ]
            options = [(el, p) for el, p in options if p > 1e-4]
            if not options:
                break
            element, p = rng.choices(options, weights=[p for _, p in options])[0]
            new_assignment[label] = element
            log_p += 0.3 * math.log(p / 0.05)  # a likely substitution (p ~ 0.05+) costs nothing
            notes.append(f"{assignment[label]}{_charge(charges[label])} -> {element}{_charge(charges[label])}")
        else:
            if set(spec.required_elements) <= set(new_assignment.values()):
                found.append(_Candidate(new_assignment, dict(charges), template, f"substitution of {formula}", log_p, notes))
    return found


def _charge(q: int) -> str:
    return f"{abs(q) if abs(q) != 1 else ''}{'+' if q > 0 else '-'}"


def _site_fits(family: CrystalFamily | None, candidate: _Candidate) -> tuple:
    """The family's site rules applied to the candidate's ions (none for generic templates,
    Heuslers and intermetallics)."""
    if family is None or candidate.source in ("system", "intermetallic") or not rules_for(family, candidate.template):
        return ()
    return check_sites(family, candidate.template, candidate.assignment, candidate.charges)


def _rationale(family: CrystalFamily | None, candidate: _Candidate, geometry_note: str | None, known: list[str],
               sites: tuple = ()) -> str:
    ions = "; ".join(fit.describe() for fit in sites) or ", ".join(
        f"{candidate.assignment[s.label]}{_charge(candidate.charges[s.label])} on {s.label}" for s in candidate.template.sites
    )
    parts = [f"{family.title if family else 'template ' + candidate.template.ratio}: {ions}"]
    if candidate.source == "system":
        parts = [f"charge-balanced stoichiometry of the {'-'.join(candidate.assignment)} system"] + candidate.notes
    elif candidate.source == "intermetallic":
        sites = ", ".join(f"{candidate.assignment[s.label]} on {s.label}" for s in candidate.template.sites)
        parts = [f"intermetallic {candidate.template.ratio}: {sites}"] + candidate.notes
    elif candidate.source.startswith("substitution"):
        parts.append(f"{candidate.source} ({'; '.join(candidate.notes)}, ICSD substitution probabilities)")
    else:
        parts.append("charge-balanced enumeration over common oxidation states")
    if geometry_note:
        parts.append(geometry_note)
    parts.append(f"known in {', '.join(known)}" if known else "not in MP, ICSD or OQMD")
    return "; ".join(parts)


def propose_offline(spec: SearchSpec, n: int, seed: int | None = None, avoid: set[str] = frozenset()) -> list[Proposal]:
    """Propose up to ``n`` distinct formulae for a spec (deterministic for a given seed).

    ``avoid`` holds formula keys proposed before (re-proposal rounds ask for new ones).
    """
    rng = random.Random(spec.seed if seed is None else seed)
    index = known_formula_index()
    pool: dict[str, tuple[float, Proposal]] = {}
    avoid = set(avoid) | _excluded_keys(spec)
    if spec.electronic == "metal" and not spec.family:
        for family, template in _templates(spec):
            for candidate in _metallic_candidates(spec, template, rng, tries=max(500, 50 * n)):
                _add(pool, spec, family, candidate, index, avoid)
        return _draw_preferring_novel(pool, spec, n, rng)
    if spec.allowed_elements is not None and not spec.family and not spec.stoichiometry:
        for candidate in _system_candidates(spec):
            _add(pool, spec, None, candidate, index, avoid)
        return _draw_preferring_novel(_in_gap_window(pool, spec), spec, n, rng)
    for family, template in _templates(spec):
        candidates = _enumerate(spec, family, template, rng, tries=max(2000, 100 * n))
        if family is not None and template == family.templates[0]:
            candidates += _substitute(spec, family, rng, tries=max(200, 20 * n))
        for candidate in candidates:
            _add(pool, spec, family, candidate, index, avoid)
    return _draw_preferring_novel(_in_gap_window(pool, spec), spec, n, rng)


def _in_gap_window(pool: dict, spec: SearchSpec) -> dict:
    """The pool without formulae whose estimated band gap (composition-only, ``tools.gap_estimate``)
    lies outside the requested window widened by the estimate's error; the rest scored by how near
    the window's middle (a solar absorber's 1.4 eV keeps iodides and sulfides, not CsCaF3 at ~7 eV)."""
    if spec.band_gap is None or not pool:
        return pool
    from tools.gap_estimate import estimate_band_gaps, pbe_window

    keys = list(pool)
    gaps = estimate_band_gaps([pool[key][1].formula for key in keys])
    low, high = pbe_window(spec.band_gap, spec.band_gap_tolerance)
    middle, half = (low + high) / 2, (high - low) / 2
    kept = {}
    for key, gap in zip(keys, gaps):
        if low <= gap <= high:
            score, proposal = pool[key]
            note = f"; estimated PBE band gap {gap:.1f} eV (composition-only; {low:.1f}-{high:.1f} eV fits {spec.band_gap:g} eV measured)"
            kept[key] = (score - ((gap - middle) / half) ** 2, dataclasses.replace(proposal, rationale=proposal.rationale + note))
    return kept


def _add(pool, spec, family, candidate: _Candidate, index, avoid) -> None:
    formula = _formula(candidate.assignment, candidate.template)
    parsed = parse_formula(formula)
    key = parsed.key
    if key in pool or key in avoid:
        return
    atoms = sum(parsed.reduced_amounts.values())
    if atoms > spec.max_sites or (spec.n_elements and len(parsed.reduced_amounts) != spec.n_elements):
        return
    fits, bonus, note = _geometry(family, candidate)
    if not fits or not _can_do_redox(spec, candidate):
        return
    sites = _site_fits(family, candidate)
    if not all(fit.ok and fit.ratio is not None for fit in sites):  # proposals only with sizes checked
        return
    known = index.sources(parsed)
    novelty = -3.0 if set(known) & set(spec.novel_against or ()) else (0.5 if not known else 0.0)
    score = candidate.log_prior / max(atoms, 1) + bonus + novelty
    prior = 1 / (1 + math.exp(-score))
    proposal = Proposal(formula, _rationale(family, candidate, note, known, sites), candidate.source.split(" ")[0], round(prior, 4),
                        family.name if family else None, candidate.assignment)
    pool[key] = (score, proposal)


def _can_do_redox(spec: SearchSpec, candidate: _Candidate) -> bool:
    """Does the candidate have a metal the application can oxidise (a cathode's Mn3+, not Ti4+)?
    Always true for applications without a redox rule and for intermetallics (no charges)."""
    application = application_named(spec.application)
    if application is None or not application.redox_ceiling or candidate.source.startswith("intermetallic"):
        return True
    ceiling = application.redox_ceiling
    return any(element in ceiling and candidate.charges.get(label, 99) < ceiling[element]
               for label, element in candidate.assignment.items())


def _draw_preferring_novel(pool: dict, spec: SearchSpec, n: int, rng: random.Random) -> list[Proposal]:
    """Draw novel candidates first when the request demands novelty; top up with known ones."""
    ranked = sorted(pool.values(), key=lambda item: -item[0])
    index = known_formula_index()
    clash = set(spec.novel_against)
    novel = [item for item in ranked if not clash & set(index.sources(item[1].formula))]
    known = [item for item in ranked if item not in novel]
    drawn = _draw(novel, n, rng)
    return drawn + _draw(known, n - len(drawn), rng) if len(drawn) < n else drawn


def _draw(ranked: list[tuple[float, Proposal]], n: int, rng: random.Random) -> list[Proposal]:
    """Weighted sampling without replacement (Efraimidis-Spirakis keys), best first."""
    keyed = [(rng.random() ** (1 / math.exp(min(score, 50.0) / 0.7 + 1e-9)), score, p) for score, p in ranked]
    chosen = sorted(keyed, key=lambda k: -k[0])[:n]
    return [p for _, _, p in sorted(chosen, key=lambda k: -k[1])]


def proposal_keys(proposals) -> set[str]:
    """Keys of proposals made so far (to avoid repeating them)."""
    return {parse_formula(p.formula).key for p in proposals}

