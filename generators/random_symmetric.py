"""Random symmetric crystals for a composition (pyxtal), the generator of last resort.

For a formula that no prototype fits, pyxtal places the atoms on Wyckoff positions of a
randomly chosen space group compatible with the atom counts, at a random lattice of
plausible density. Crude, but symmetric and valid, so that relaxation and scoring can judge
it; also the random baseline of GenMS-style evaluations.
"""

from __future__ import annotations

import random
import warnings

from pymatgen.core import Structure

# Common space groups of inorganic crystals, from triclinic to cubic.
SPACEGROUPS = (2, 12, 14, 15, 62, 63, 71, 74, 123, 139, 141, 148, 164, 166, 191, 194, 216, 221, 225, 227)
MAX_TRIES = 60


def random_symmetric_structures(
    amounts: dict[str, int], n: int, seed: int = 0, max_atoms: int = 40, spacegroups: tuple[int, ...] = SPACEGROUPS
) -> list[tuple[Structure, int]]:
    """Up to ``n`` (structure, space group) pairs with the composition ``amounts`` (reduced, whole numbers).

    Formula units per cell grow until a compatible space group is found, staying within
    ``max_atoms``; failed attempts (incompatible multiplicities) are retried up to a limit.
    """
    from pyxtal import pyxtal

    rng = random.Random(seed)
    per_unit = sum(amounts.values())
    units = [z for z in range(1, max_atoms // per_unit + 1)] or [1]
    found: list[tuple[Structure, int]] = []
    for attempt in range(MAX_TRIES):
        if len(found) >= n:
            break
        z = rng.choice(units[: 1 + attempt // 10])  # small cells first
        group = rng.choice(spacegroups)
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # random_state seeds atomic crystals (pyxtal's `seed` reaches only molecular ones)
                crystal.from_random(3, group, list(amounts), [count * z for count in amounts.values()], random_state=rng.randrange(2**31))
        except Exception:  # pyxtal raises on incompatible Wyckoff multiplicities
            continue
        if crystal.valid:
            found.append((crystal.to_pymatgen(), group))
    return found
