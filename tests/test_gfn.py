"""Crystal-GFN: environment masks, proxies, trajectory balance, sampling-time restrictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from generators.gfn import spacegroups as sgs
from generators.gfn.env import (
    CompositionEnv, CrystalConfig, CrystalEnv, NO_RESTRICTIONS, Restrictions, SpaceGroupEnv,
    STAGE_COMP, cell_volume, is_charge_neutral, lattice_valid, oxidation_states,
)

SMALL_SGS = (1, 2, 14, 62, 139, 166, 194, 221, 225, 227)


@pytest.fixture(scope="module")
def small_env():
    return CrystalEnv(CrystalConfig(space_groups=SMALL_SGS))


def test_space_group_categories_match_the_paper():
    ncs = [s for s in range(1, 231) if sgs.point_symmetry(s) == "non-centrosymmetric"]
    assert len(ncs) == 25
    assert {sgs.crystal_lattice_system(s) for s in ncs} == {"tetragonal", "hexagonal-hexagonal", "cubic"}
    assert sgs.crystal_lattice_system(166) == "trigonal-rhombohedral"
    assert sgs.crystal_lattice_system(164) == "trigonal-hexagonal"
    assert sgs.point_symmetry(225) == "centrosymmetric" and sgs.point_symmetry(4) == "enantiomorphic-polar"
    assert len({sgs.point_group(s) for s in range(1, 231)}) == 32


def test_space_group_mask_any_order():
    env = SpaceGroupEnv(tuple(range(1, 231)))
    m0 = env.mask(env.source)
    assert m0[: env.n_cls].all() and m0[env.n_cls: env.n_cls + env.n_ps].all() and not m0[env.eos]
    ncs = sgs.POINT_SYMMETRIES.index("non-centrosymmetric")
    s = env.step(env.source, env.n_cls + ncs)
    m = env.mask(s)
    assert m[: env.n_cls].sum() == 3 and not m[env.n_cls: env.n_cls + env.n_ps].any()
    assert m[env.n_cls + env.n_ps: env.eos].sum() == 25 and not m[env.eos]
    cubic = sgs.CRYSTAL_LATTICE_SYSTEMS.index("cubic")
    s = env.step(s, cubic)
    groups = [env.space_groups[i] for i in np.flatnonzero(env.mask(s)[env.n_cls + env.n_ps: env.eos])]
    assert groups == list(range(215, 221))
    s = env.step(s, env.n_cls + env.n_ps + env.space_groups.index(216))
    assert env.space_group(s) == 216 and env.mask(s).tolist() == [False] * env.eos + [True]
    # choosing the group first fills the other two dimensions
    s = env.step(env.source, env.n_cls + env.n_ps + env.space_groups.index(62))
    assert s[:2] == (sgs.CRYSTAL_LATTICE_SYSTEMS.index("orthorhombic"), sgs.POINT_SYMMETRIES.index("centrosymmetric"))
    r = env.mask(env.source, Restrictions.make(space_groups=[221, 225]))
    assert r[env.n_cls: env.n_cls + env.n_ps].sum() == 1 and r[: env.n_cls].sum() == 1


def test_composition_mask_wyckoff_and_charge():
    cfg = CrystalConfig(elements=("Li", "Mn", "Fe", "O", "F"), space_groups=(225, 221, 230))
    env = CompositionEnv(cfg)
    o, fe, li = cfg.elements.index("O"), cfg.elements.index("Fe"), cfg.elements.index("Li")
    m = env.mask(env.source, 225)
    # Fm-3m: smallest multiplicity 4, so 1..3 atoms of one element are impossible
    assert not any(m[env.action(o, n)] for n in (1, 2, 3)) and m[env.action(o, 4)]
    # Ia-3d (230): 16 is the smallest multiplicity
    m230 = env.mask(env.source, 230)
    assert [n for n in range(1, 17) if m230[env.action(fe, n)]] == [16]
    # Pm-3m with Fe1 O1 is neutral (Fe2+ O2-) and compatible (1a + 1b): stop allowed
    s = env.step(env.step(env.source, env.action(fe, 1)), env.action(o, 1))
    assert env.mask(s, 221)[env.eos]
    # a third singly-occupied element cannot fit Pm-3m (only 1a and 1b have no freedom)
    m3 = env.mask(s, 221)
    assert not m3[env.action(li, 1)]
    # Fe1 alone is not neutral: no stop; Li F only with the right ratio
    assert not env.mask(env.step(env.source, env.action(fe, 1)), 221)[env.eos]
    ox = env.ox
    assert is_charge_neutral(s, ox) and not is_charge_neutral(env.step(env.source, env.action(fe, 1)), ox)
    assert -2 in oxidation_states("O") and 1 in oxidation_states("Li")


def test_restrictions_narrow_masks(small_env):
    r = Restrictions.make(elements=["Fe", "O"], max_atoms_per_element=10)
    env = small_env.comp_env
    m = env.mask(env.source, 14, r)
    valid = {env.decode(a) for a in np.flatnonzero(m[: env.eos])}
    assert valid and {env.elements[i] for i, _ in valid} == {"Fe", "O"}
    assert max(n for _, n in valid) <= 10


def test_lattice_system_equalities_and_volume():
    assert lattice_valid(225, (4, 4, 4, 90, 90, 90)) and not lattice_valid(225, (4, 4, 5, 90, 90, 90))
    assert lattice_valid(166, (5, 5, 14, 90, 90, 120)) and not lattice_valid(166, (5, 5, 14, 90, 90, 90))
    assert lattice_valid(14, (5, 6, 7, 90, 100, 90)) and not lattice_valid(14, (5, 6, 7, 80, 100, 90))
    assert not lattice_valid(2, (5, 6, 7, 150, 150, 150))  # no real volume
    assert math.isclose(cell_volume((2, 3, 4, 90, 90, 90)), 24.0)
    assert math.isclose(cell_volume((2, 2, 3, 90, 90, 120)), 4 * 3 * math.sqrt(3) / 2)


def test_random_sampler_gives_valid_crystals(small_env):
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    crystals = small_env.sample_random(60, np.random.default_rng(0))
    assert len(crystals) == 60
    for c in crystals:
        assert c.space_group in SMALL_SGS
        counts = sorted(c.composition.values())
        assert sgs.counts_compatible(c.space_group, tuple(counts))
        assert 2 <= len(counts) <= 5 and max(counts) <= 16 and sum(counts) <= 80
        assert smact_validity(Composition(c.composition), use_pauling_test=False)
        assert lattice_valid(c.space_group, c.lattice, small_env.config)
    assert len({c.space_group for c in crystals}) >= 6
