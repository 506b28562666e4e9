"""Composition validity with SMACT: charge neutrality and Pauling's electronegativity test.

Oxidation states are SMACT's default set (ICSD 2024 occurrences, the same filter that
``smact.screening.smact_validity`` applies), so verdicts here agree with the GenMS/CDVAE
composition-validity metric. Charge balance and the electronegativity test are separate
verdicts; mixed valence (Fe3O4 as Fe2+ Fe3+2 O4) is tried only when no single oxidation state
per element balances, and is flagged as such.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import smact
from smact.screening import pauling_test, smact_validity
from smact.utils.oxidation import ICSD24OxStatesFilter

from tools.formula import ParsedFormula

# The filter settings of smact_validity's default (ICSD24FilterConfig()).
_ICSD24_FILTER = {"consensus": 3, "include_zero": False, "commonality": "low"}
# Bound the enumeration: a 6-element formula with 8 states each is 262k products.
MAX_OXIDATION_COMBINATIONS = 200_000
# Ways of splitting mixed-valence elements over two states tried at most (each one a charge
# enumeration): Fe99Mn99Co99O has 50^3 = 125,000 and took seconds; real formulae have a few dozen.
MAX_MIXED_VALENCE_SPLITS = 2000
# Mixed valence only for elements known to take it, and only two states per element.
MIXED_VALENCE_ELEMENTS = frozenset(
    "Ti V Cr Mn Fe Co Ni Cu Nb Mo Ru Rh Pd Ag Sn Sb W Re Os Ir Pt Au Pb Bi Ce Pr Eu Tb Yb U".split()
)


@lru_cache(maxsize=1)
def oxidation_state_table() -> dict[str, tuple[int, ...]]:
    """Element -> oxidation states of SMACT's default (ICSD24) set."""
    table = ICSD24OxStatesFilter().filter(**_ICSD24_FILTER)
    return {str(row.element): tuple(int(x) for x in str(row.oxidation_state).split()) for row in table.itertuples()}


def oxidation_states(symbol: str) -> tuple[int, ...]:
    """Known oxidation states of an element (empty when SMACT lists none, e.g. noble gases)."""
    return oxidation_state_table().get(symbol, ())


def is_metal(symbol: str) -> bool:
    """SMACT's metal list (what the alloy rule of the validity metric uses)."""
    return symbol in smact.metals


@dataclass(frozen=True)
class ChargeBalance:
    """Verdicts on one composition.

    ``oxidation_states`` maps each element to the states used (one per element, or two with
    their atom counts when ``mixed_valence``), preferring an assignment that also passes
    Pauling's test. ``composition_valid`` is the GenMS/CDVAE metric (SMACT ``smact_validity``:
    single elements and all-metal alloys count as valid; otherwise charge neutral and
    Pauling-consistent).
    """

    charge_balanced: bool
    electronegativity_ok: bool
    composition_valid: bool
    is_alloy: bool
    mixed_valence: bool = False
    oxidation_states: dict[str, list[int]] | None = field(default=None)
    note: str | None = None


@lru_cache(maxsize=1)
def species_log_probability() -> dict[tuple[str, int], float]:
    """log(share of an element's ICSD24 occurrences in each oxidation state), for ranking."""
    table = ICSD24OxStatesFilter().get_species_occurrences_df(consensus=_ICSD24_FILTER["consensus"])
    log_p = {}
    for row in table.itertuples(index=False):
        match = re.fullmatch(r"([A-Z][a-z]?)(\d*)([+-])", row.species)
        if match:
            charge = int(match.group(2) or 1) * (1 if match.group(3) == "+" else -1)
            log_p[(match.group(1), charge)] = math.log(max(row[3], 1e-3) / 100.0)
    return log_p


@lru_cache(maxsize=None)
def pauling_electronegativity(symbol: str) -> float | None:
    """Pauling electronegativity from SMACT's element data (``None`` when unknown)."""
    return smact.Element(symbol).pauling_eneg


def _pauling_ok(states: tuple[int, ...], symbols: tuple[str, ...]) -> bool:
    electronegativities = [pauling_electronegativity(s) for s in symbols]
    try:
        return bool(pauling_test(states, electronegativities))
    except TypeError:  # an element without a Pauling electronegativity: SMACT's metric passes it
        return True


def _best_assignment(symbols: tuple[str, ...], counts: tuple[int, ...]):
    """Most probable neutral assignment, Pauling-consistent ones first.

    Returns ``(states, pauling_ok, log_probability)`` or ``None`` when no assignment of one
    state per species is neutral.
    """
    log_p, rare = species_log_probability(), math.log(1e-5)
    options = [oxidation_states(s) for s in symbols]
    # Total charge of every assignment at once (an outer sum over the species' choices).
    total = np.zeros((), dtype=np.int64)
    for states, count in zip(options, counts):
        total = np.add.outer(total, np.asarray(states, dtype=np.int64) * count)
    best = None
    for index in np.argwhere(total == 0):
        states = tuple(options[i][j] for i, j in enumerate(index))
        score = sum(n * log_p.get((s, q), rare) for s, q, n in zip(symbols, states, counts))
        candidate = (_pauling_ok(states, symbols), score, states)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return None if best is None else (best[2], best[0], best[1])


def _mixed_valence_splits(symbols: tuple[str, ...], counts: tuple[int, ...]) -> int:
    """How many ways :func:`_mixed_valence_species` would try (counted without enumerating them)."""
    return math.prod(1 + (n // 2 if s in MIXED_VALENCE_ELEMENTS and n >= 2 else 0) for s, n in zip(symbols, counts))


def _mixed_valence_species(symbols: tuple[str, ...], counts: tuple[int, ...]):
    """Split each mixed-valence element with count >= 2 over two species, all ways."""
    options = []
    for symbol, count in zip(symbols, counts):
        splits = [((symbol,), (count,))]
        if symbol in MIXED_VALENCE_ELEMENTS and count >= 2:
            splits += [((symbol, symbol), (k, count - k)) for k in range(1, count // 2 + 1)]
        options.append(splits)
    for choice in itertools.product(*options):
        if any(len(species) == 2 for species, _ in choice):
            yield (tuple(s for species, _ in choice for s in species), tuple(n for _, ns in choice for n in ns))


def _combinations(symbols: tuple[str, ...]) -> int:
    total = 1
    for s in symbols:
        total *= max(1, len(oxidation_states(s)))
    return total


@lru_cache(maxsize=65536)
def _charge_balance_of(reduced: tuple[tuple[str, int], ...]) -> ChargeBalance:
    from pymatgen.core import Composition

    amounts = dict(reduced)
    symbols, counts = tuple(amounts), tuple(amounts.values())
    is_alloy = len(symbols) > 1 and all(is_metal(s) for s in symbols)
    missing = [s for s in symbols if not oxidation_states(s)]
    if not missing and len(symbols) > 1 and _combinations(symbols) > MAX_OXIDATION_COMBINATIONS:
        # smact_validity would enumerate them too (~2 s for nine transition metals): SMACT's alloy
        # rule is all that is decided without enumerating.
        return ChargeBalance(False, False, is_alloy, is_alloy, note="too many oxidation-state combinations to enumerate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = bool(smact_validity(Composition(amounts)))
    if missing:
        return ChargeBalance(False, False, metric, is_alloy, note=f"no known oxidation states for {', '.join(missing)}")
    if len(symbols) == 1:
        return ChargeBalance(True, True, metric, False, oxidation_states={symbols[0]: [0]}, note="elemental")
    found = _best_assignment(symbols, counts)
    if found:
        states, pauling, _ = found
        return ChargeBalance(True, pauling, metric, is_alloy, oxidation_states={s: [q] for s, q in zip(symbols, states)})
    if _mixed_valence_splits(symbols, counts) > MAX_MIXED_VALENCE_SPLITS:
        return ChargeBalance(False, False, metric, is_alloy, note="too many mixed-valence splits to enumerate")
    mixed = [
        (found, species, species_counts)
        for species, species_counts in _mixed_valence_species(symbols, counts)
        if _combinations(species) <= MAX_OXIDATION_COMBINATIONS
        and (found := _best_assignment(species, species_counts))
    ]
    if mixed:
        (states, pauling, _), species, species_counts = max(mixed, key=lambda m: (m[0][1], m[0][2]))
        used: dict[str, list[int]] = {}
        for s, q, n in zip(species, states, species_counts):
            used.setdefault(s, []).extend([q] * n)
        # Per-atom states only where the valence is mixed: {'Fe': [2, 3, 3], 'O': [-2]}.
        compact = {s: (qs if len(set(qs)) > 1 else qs[:1]) for s, qs in used.items()}
        return ChargeBalance(True, pauling, metric, is_alloy, mixed_valence=True, oxidation_states=compact)
    note = "all-metal composition (alloy): valid by the SMACT metric without charge balance" if is_alloy else None
    return ChargeBalance(False, False, metric, is_alloy, note=note)


def charge_balance(formula: ParsedFormula) -> ChargeBalance:
    """SMACT verdicts for a parsed formula; results are cached per reduced composition."""
    return _charge_balance_of(tuple(sorted(formula.reduced_amounts.items())))


MIN_STATE_SHARE = 0.05  # oxidation states rarer than this in ICSD are not proposed


@lru_cache(maxsize=1)
def state_shares() -> dict[str, list[tuple[int, float]]]:
    """Element -> [(oxidation state, share of ICSD occurrences)], commonest first."""
    shares: dict[str, list[tuple[int, float]]] = {}
    for (symbol, charge), log_p in species_log_probability().items():
        shares.setdefault(symbol, []).append((charge, math.exp(log_p)))
    return {el: sorted(states, key=lambda s: -s[1]) for el, states in shares.items()}


def common_states(symbol: str, sign: int) -> list[tuple[int, float]]:
    """Common oxidation states of one sign (+1 cations, -1 anions) with their ICSD shares."""
    listed = set(oxidation_states(symbol))
    return [(q, p) for q, p in state_shares().get(symbol, []) if q * sign > 0 and p >= MIN_STATE_SHARE and q in listed]


def balanced_assignments(formula: ParsedFormula, limit: int = 64) -> list[dict[str, int]]:
    """Every way the elements' common oxidation states (one state per element) balance the
    formula's charges, commonest first: LiVPtO4 reads as Li+ V5+ Pt2+ and Li+ V3+ Pt4+."""
    amounts = formula.reduced_amounts
    if len(amounts) > 6:
        return []
    options = [[(q, p) for q, p in common_states(el, +1) + common_states(el, -1)] for el in amounts]
    found = []
    for combo in itertools.product(*options):
        if sum(q * n for (q, _), n in zip(combo, amounts.values())) == 0:
            found.append((-sum(n * math.log(p) for (_, p), n in zip(combo, amounts.values())),
                          {el: q for el, (q, _) in zip(amounts, combo)}))
    return [states for _, states in sorted(found, key=lambda item: item[0])[:limit]]
