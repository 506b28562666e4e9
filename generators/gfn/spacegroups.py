"""Space-group facts used by the Crystal-GFN environment (no pyxtal import at module level).

Crystal-lattice system (8 categories, the paper's combination of crystal and lattice system) and
point symmetry (5 categories) of each of the 230 space groups, and the lattice system whose
equalities the lattice parameters obey. Rhombohedral (R) groups use the hexagonal setting, as
pymatgen's conventional standard cells and pyxtal's Wyckoff tables do, so their lattice obeys
a = b, alpha = beta = 90, gamma = 120 (while their crystal-lattice system stays
``trigonal-rhombohedral``).
"""

from __future__ import annotations

from functools import lru_cache

CRYSTAL_LATTICE_SYSTEMS = (
    "triclinic", "monoclinic", "orthorhombic", "tetragonal",
    "trigonal-rhombohedral", "trigonal-hexagonal", "hexagonal-hexagonal", "cubic",
)
POINT_SYMMETRIES = ("centrosymmetric", "non-centrosymmetric", "enantiomorphic", "polar", "enantiomorphic-polar")
LATTICE_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "hexagonal", "cubic")
RHOMBOHEDRAL_GROUPS = frozenset({146, 148, 155, 160, 161, 166, 167})

# (first, last) space-group numbers of each crystallographic point group, and its point symmetry
_POINT_GROUPS = (
    (1, 1, "1", "enantiomorphic-polar"), (2, 2, "-1", "centrosymmetric"),
    (3, 5, "2", "enantiomorphic-polar"), (6, 9, "m", "polar"), (10, 15, "2/m", "centrosymmetric"),
    (16, 24, "222", "enantiomorphic"), (25, 46, "mm2", "polar"), (47, 74, "mmm", "centrosymmetric"),
    (75, 80, "4", "enantiomorphic-polar"), (81, 82, "-4", "non-centrosymmetric"),
    (83, 88, "4/m", "centrosymmetric"), (89, 98, "422", "enantiomorphic"), (99, 110, "4mm", "polar"),
    (111, 122, "-42m", "non-centrosymmetric"), (123, 142, "4/mmm", "centrosymmetric"),
    (143, 146, "3", "enantiomorphic-polar"), (147, 148, "-3", "centrosymmetric"),
    (149, 155, "32", "enantiomorphic"), (156, 161, "3m", "polar"), (162, 167, "-3m", "centrosymmetric"),
    (168, 173, "6", "enantiomorphic-polar"), (174, 174, "-6", "non-centrosymmetric"),
    (175, 176, "6/m", "centrosymmetric"), (177, 182, "622", "enantiomorphic"), (183, 186, "6mm", "polar"),
    (187, 190, "-6m2", "non-centrosymmetric"), (191, 194, "6/mmm", "centrosymmetric"),
    (195, 199, "23", "enantiomorphic"), (200, 206, "m-3", "centrosymmetric"),
    (207, 214, "432", "enantiomorphic"), (215, 220, "-43m", "non-centrosymmetric"),
    (221, 230, "m-3m", "centrosymmetric"),
)


def _check(sg: int) -> None:
    if not 1 <= int(sg) <= 230:
        raise ValueError(f"space group number must be 1..230, got {sg}")


def point_group(sg: int) -> str:
    _check(sg)
    for lo, hi, symbol, _ in _POINT_GROUPS:
        if lo <= sg <= hi:
            return symbol
    raise AssertionError(sg)


def point_symmetry(sg: int) -> str:
    _check(sg)
    for lo, hi, _, sym in _POINT_GROUPS:
        if lo <= sg <= hi:
            return sym
    raise AssertionError(sg)


def crystal_lattice_system(sg: int) -> str:
    _check(sg)
    if sg <= 2:
        return "triclinic"
    if sg <= 15:
        return "monoclinic"
    if sg <= 74:
        return "orthorhombic"
    if sg <= 142:
        return "tetragonal"
    if sg <= 167:
        return "trigonal-rhombohedral" if sg in RHOMBOHEDRAL_GROUPS else "trigonal-hexagonal"
    if sg <= 194:
        return "hexagonal-hexagonal"
    return "cubic"


def lattice_system(sg: int) -> str:
    """The lattice system of the conventional (hexagonal-setting for R groups) cell."""
    cls = crystal_lattice_system(sg)
    if cls.startswith("trigonal") or cls.startswith("hexagonal"):
        return "hexagonal"
    return cls


@lru_cache(maxsize=256)
def pyxtal_group(sg: int):
    """pyxtal's Group (about 0.1 s to build, cached)."""
    from pyxtal.symmetry import Group

    return Group(int(sg))


@lru_cache(maxsize=None)
def wyckoff_bounds(sg: int) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """pyxtal's Wyckoff summary of ``sg``: distinct multiplicities and how often each may be used
    (None: a position with free parameters, unlimited; k: k fixed positions of that multiplicity)."""
    base, upper = pyxtal_group(sg)._get_base_and_upper_bounds()
    return tuple(int(b) for b in base), tuple(None if u is None else int(u) for u in upper)


def _free_reachable(free: tuple[int, ...], limit: int) -> list[bool]:
    ok = [False] * (limit + 1)
    ok[0] = True
    for n in range(1, limit + 1):
        ok[n] = any(m <= n and ok[n - m] for m in free)
    return ok


@lru_cache(maxsize=200_000)
def counts_compatible(sg: int, counts: tuple[int, ...]) -> bool:
    """Can these per-element atom counts share the Wyckoff positions of ``sg``?

    The same rule as pyxtal's ``Group.check_compatible`` (fixed positions used at most once in
    all, positions with freedom without limit), on pyxtal's Wyckoff tables, as an exact memoised
    search (pyxtal's own check costs about 1.5 ms a call; the tests compare the two). Depends only
    on the multiset of counts: call it with a sorted tuple to share the cache.
    """
    if not counts:
        return True
    base, upper = wyckoff_bounds(sg)
    free = tuple(m for m, u in zip(base, upper) if u is None)
    fixed = [(m, u) for m, u in zip(base, upper) if u is not None]
    reach = _free_reachable(free, max(counts))
    order = tuple(sorted(counts, reverse=True))

    @lru_cache(maxsize=None)
    def place(i: int, left: tuple[int, ...]) -> bool:
        if i == len(order):
            return True

        def use(j: int, rest: int, left_now: tuple[int, ...]) -> bool:
            if j == len(fixed):
                return reach[rest] and place(i + 1, left_now)
            m = fixed[j][0]
            for k in range(0, min(left_now[j], rest // m) + 1):
                nl = left_now[:j] + (left_now[j] - k,) + left_now[j + 1:]
                if use(j + 1, rest - k * m, nl):
                    return True
            return False

        return use(0, order[i], left)

    return place(0, tuple(u for _, u in fixed))


@lru_cache(maxsize=None)
def single_counts_compatible(sg: int, max_count: int) -> tuple[bool, ...]:
    """Entry n-1 says whether n atoms of one element can occupy Wyckoff positions of ``sg``."""
    return tuple(counts_compatible(sg, (n,)) for n in range(1, max_count + 1))
