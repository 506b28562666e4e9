"""Exact Wyckoff feasibility for the symmetry predictor's constrained decoding (pyxtal tables).

A Wyckoff assignment of a space group is consistent when each element's orbit multiplicities
sum to its atom count in the conventional cell and every position without free parameters is
used at most once in all (positions with free parameters may repeat): pyxtal's rule
(``Group.check_compatible``). :func:`completable` decides whether a partial assignment can
still be completed, exactly, by a memoised search; :func:`check_assignment` validates a full
one and confirms it with pyxtal.
"""

from __future__ import annotations

from functools import lru_cache

from generators.unimdm.symmetry import centering_factor, wyckoff_table


@lru_cache(maxsize=None)
def _free_reach(free: tuple[int, ...], limit: int) -> tuple[bool, ...]:
    ok = [False] * (limit + 1)
    ok[0] = True
    for n in range(1, limit + 1):
        ok[n] = any(m <= n and ok[n - m] for m in free)
    return tuple(ok)


@lru_cache(maxsize=500_000)
def _completable(free: tuple[int, ...], fixed: tuple[int, ...], counts: tuple[int, ...]) -> bool:
    """Counts (sorted, descending) filled from free multiplicities and the fixed multiset ``fixed`` (sorted)."""
    if not counts:
        return True
    first, rest = counts[0], counts[1:]
    reach = _free_reach(free, max(counts))
    distinct = sorted(set(fixed))
    available = [fixed.count(m) for m in distinct]

    def use(j: int, left: int, taken: list[int]) -> bool:
        if j == len(distinct):
            if not reach[left]:
                return False
            remaining = []
            for m, a, t in zip(distinct, available, taken):
                remaining += [m] * (a - t)
            return _completable(free, tuple(remaining), rest)
        m = distinct[j]
        for k in range(0, min(available[j], left // m) + 1):
            if use(j + 1, left - k * m, taken + [k]):
                return True
        return False

    return use(0, first, [])


def completable(space_group: int, counts: list[int], used_fixed: set[str] | frozenset[str] = frozenset()) -> bool:
    """Can these conventional-cell counts (one per element still to place) be filled, given fixed letters already used?"""
    table = wyckoff_table(space_group)
    free = tuple(sorted({m for _, m, f in table if f}))
    fixed = tuple(sorted(m for letter, m, f in table if not f and letter not in used_fixed))
    counts = tuple(sorted((int(c) for c in counts if c > 0), reverse=True))
    return _completable(free, fixed, counts)


def conventional_counts(space_group: int, primitive_counts: dict[int, int]) -> dict[int, int]:
    """Atoms per element in the conventional cell: primitive counts times the centring factor."""
    factor = centering_factor(space_group)
    return {z: int(n) * factor for z, n in primitive_counts.items()}


def check_assignment(space_group: int, primitive_counts: dict[int, int], letters: dict[int, list[str]]) -> tuple[bool, str]:
    """(valid, reason) for a full Wyckoff assignment ``{Z: [letters]}`` of a composition."""
    table = {letter: (m, f) for letter, m, f in wyckoff_table(space_group)}
    counts = conventional_counts(space_group, primitive_counts)
    if set(letters) != set(counts):
        return False, "elements differ from the composition"
    used: list[str] = []
    for z, element_letters in letters.items():
        if any(letter not in table for letter in element_letters):
            return False, f"unknown Wyckoff letter for space group {space_group}"
        if sum(table[letter][0] for letter in element_letters) != counts[z]:
            return False, f"multiplicities of element {z} do not sum to {counts[z]}"
        used += [letter for letter in element_letters if not table[letter][1]]
    if len(used) != len(set(used)):
        return False, "a Wyckoff position without free parameters is used twice"
    try:
        from generators.unimdm.symmetry import _group

        group = _group(space_group)
    except ImportError:  # a machine without pyxtal (the GPU host): the rule above is pyxtal's, exactly
        return True, "ok"
    if not group.check_compatible(list(counts.values()))[0]:
        return False, "pyxtal: composition incompatible with the space group"
    return True, "ok"
