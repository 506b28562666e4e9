"""Geometric formability rules from ionic radii (Shannon radii through pymatgen), in Å.

- Goldschmidt tolerance factor t = (r_A + r_X) / (sqrt(2) (r_B + r_X)) and octahedral factor
  mu = r_B / r_X for perovskites (and the mean B radius for double perovskites, elpasolites);
  perovskites form for roughly 0.8 <= t <= 1.06 and 0.41 <= mu <= 0.90.
- Pyrochlore A2B2O7 stability field: 1.46 <= r_A(VIII) / r_B(VI) <= 1.78 (Subramanian et al.).
- Pyrochlore A must be a large cation, r_A(VIII) >= 0.87 Å (Ca2+, Cd2+, Bi3+, the rare earths).
- Spinel AB2X4: B fits an octahedral hole, 0.35 <= r_B(VI) / r_X <= 0.60 (In3+ in MgIn2O4 is
  the large end), and A a tetrahedral one, r_A(IV) / r_X <= 0.60 (Cd2+ is the large end).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

from pymatgen.core import Species

PEROVSKITE_T = (0.80, 1.06)
OCTAHEDRAL_MU = (0.41, 0.90)
PYROCHLORE_RATIO = (1.46, 1.78)
PYROCHLORE_MIN_A = 0.87
SPINEL_MU = (0.35, 0.60)
SPINEL_TETRAHEDRAL_MAX = 0.60


@lru_cache(maxsize=4096)
def ionic_radius(symbol: str, charge: int, coordination: str) -> float | None:
    """Shannon radius (Å) of an ion in a coordination ('IV', 'VI', 'VIII', 'XII').

    Falls back to the nearest listed coordination, then to pymatgen's averaged ionic radius;
    ``None`` when the ion is unknown.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns when it falls back to estimated radii
        return _shannon_radius(Species(symbol, charge), coordination)


def _shannon_radius(species: Species, coordination: str) -> float | None:
    preferred = {"XII": ["XII", "X", "IX", "VIII"], "IX": ["IX", "VIII", "X", "XII"], "VIII": ["VIII", "IX", "VII", "VI"],
                 "VI": ["VI", "V", "VII"], "IV": ["IV", "IVSQ", "V", "VI"], "II": ["II", "III", "IV"]}
    for cn in preferred.get(coordination, [coordination]):
        try:
            radius = species.get_shannon_radius(cn=cn, spin="High Spin" if _has_spin(species, cn) else "")
            return float(radius)
        except (KeyError, ValueError, TypeError):
            continue
    try:
        return float(species.ionic_radius) if species.ionic_radius else None
    except (KeyError, ValueError, TypeError):
        return None


def _has_spin(species: Species, cn: str) -> bool:
    try:
        radii = species.element.data["Shannon radii"][str(int(species.oxi_state))][cn]
        return "" not in radii
    except (KeyError, TypeError):
        return False


def _in(value: float | None, bounds: tuple[float, float]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def tolerance_factor(r_a: float, r_b: float, r_x: float) -> float:
    """Goldschmidt tolerance factor."""
    return (r_a + r_x) / (math.sqrt(2) * (r_b + r_x))


def perovskite_factors(a: tuple[str, int], b_sites: list[tuple[str, int]], x: tuple[str, int]) -> dict[str, float] | None:
    """Tolerance and octahedral factors for A, B (one or two ions averaged) and X, or None if a radius is unknown."""
    r_a = ionic_radius(*a, "XII")
    r_bs = [ionic_radius(*b, "VI") for b in b_sites]
    r_x = ionic_radius(*x, "VI")
    if r_a is None or r_x is None or any(r is None for r in r_bs):
        return None
    r_b = sum(r_bs) / len(r_bs)
    return {
        "tolerance_factor": tolerance_factor(r_a, r_b, r_x),
        "octahedral_factor": r_b / r_x,
        "largest_b_factor": max(r_bs) / r_x,
        "smallest_b_factor": min(r_bs) / r_x,
    }


def perovskite_formable(factors: dict[str, float] | None) -> bool:
    """Tolerance factor and every B cation's octahedral factor inside the perovskite field."""
    return (
        bool(factors)
        and _in(factors["tolerance_factor"], PEROVSKITE_T)
        and _in(factors["largest_b_factor"], OCTAHEDRAL_MU)
        and _in(factors["smallest_b_factor"], OCTAHEDRAL_MU)
    )


def pyrochlore_ratio(a: tuple[str, int], b: tuple[str, int]) -> float | None:
    """r_A(VIII) / r_B(VI) for a pyrochlore A2B2X7."""
    r_a, r_b = ionic_radius(*a, "VIII"), ionic_radius(*b, "VI")
    return None if r_a is None or r_b is None else r_a / r_b


def pyrochlore_formable(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Radius ratio in the pyrochlore field and A large enough for its 8-fold site."""
    r_a = ionic_radius(*a, "VIII")
    return _in(pyrochlore_ratio(a, b), PYROCHLORE_RATIO) and r_a is not None and r_a >= PYROCHLORE_MIN_A


def spinel_octahedral_factor(b: tuple[str, int], x: tuple[str, int]) -> float | None:
    """r_B(VI) / r_X for a spinel's octahedral cation."""
    r_b, r_x = ionic_radius(*b, "VI"), ionic_radius(*x, "VI")
    return None if r_b is None or r_x is None else r_b / r_x


def spinel_formable(a: tuple[str, int], b: tuple[str, int], x: tuple[str, int]) -> bool:
    """B fits the octahedral hole and A the tetrahedral one."""
    r_a, r_x = ionic_radius(*a, "IV"), ionic_radius(*x, "VI")
    tetrahedral_ok = r_a is not None and r_x is not None and r_a / r_x <= SPINEL_TETRAHEDRAL_MAX
    return tetrahedral_ok and _in(spinel_octahedral_factor(b, x), SPINEL_MU)
