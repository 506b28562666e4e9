"""Match rate: does a structure look like a known member of its family (GenMS Table 1, A.1)?

A structure matches its family when pymatgen's ``StructureMatcher.fit_anonymous`` (stol 0.5,
ltol 0.3, angle_tol 10) fits it to one of the family's MP reference structures of the shared
data. References are parsed once per process and grouped by anonymous formula, so a query
only meets references with the same stoichiometry pattern.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from tools.families import get_family, reference_entries

MATCHER = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)


@lru_cache(maxsize=32)
def _references_by_pattern(family_name: str) -> dict[str, list]:
    """References grouped by anonymous formula (from the stored formula: no CIF parsed yet)."""
    groups: dict[str, list] = {}
    for entry in reference_entries(get_family(family_name).name):
        groups.setdefault(Composition(entry.formula).anonymized_formula, []).append(entry)
    return groups


def matching_reference(structure: Structure, family: str, limit: int | None = None) -> str | None:
    """MP id of the first family reference the structure fits (anonymously), or None.

    References in the structure's own space group are tried first: they are the likely match.
    ``limit`` caps how many are tried (a quick membership test; the match rate tries all).
    """
    from tools.structure import detect_spacegroup

    group = detect_spacegroup(structure)
    number = group.number if group else None
    candidates = _references_by_pattern(get_family(family).name).get(structure.composition.anonymized_formula, [])
    for entry in sorted(candidates, key=lambda e: e.spacegroup_number != number)[:limit]:
        if MATCHER.fit_anonymous(structure, entry.structure):
            return entry.material_id
    return None


def match_rate(structures: Iterable[Structure], family: str) -> float:
    """Share of structures that fit a reference of the family."""
    structures = list(structures)
    if not structures:
        return 0.0
    return sum(matching_reference(s, family) is not None for s in structures) / len(structures)
