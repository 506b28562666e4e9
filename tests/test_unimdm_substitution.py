"""Isovalent element substitution of the training crystals (the Crystal DiT's data augmentation)."""

from __future__ import annotations

import math

import pytest
import torch
from pymatgen.core import Element, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generators.unimdm.lattice import parameters_from_k
from generators.unimdm.substitution import can_replace, main, substituted_split
from generators.unimdm.templates import element_features, expand_rows, split_crystals
from tests.test_unimdm_templates import packed, rock_salt, rutile

TRAINING = {"NaCl": rock_salt("Na", "Cl", 5.64), "MgO": rock_salt("Mg", "O", 4.21), "KBr": rock_salt("K", "Br", 6.60),
            "TiO2": rutile("Ti", 4.594, 2.959, 0.305), "SnO2": rutile("Sn", 4.737, 3.186, 0.307)}


def z(symbol: str) -> int:
    return Element(symbol).Z


def test_only_alike_elements_of_a_shared_oxidation_state_replace_each_other():
    assert can_replace(z("Cl"), z("Br")) and can_replace(z("K"), z("Rb")) and can_replace(z("Ti"), z("Zr"))
    assert not can_replace(z("Na"), z("Mg"))  # +1 against +2: charge balance would break
    assert not can_replace(z("Sn"), z("Ge"))  # a metal for a metalloid
    assert not can_replace(z("O"), z("S"))  # -2 both, but too unlike (electronegativity 3.44 against 2.58)
    assert not can_replace(z("Ti"), z("Ar")) and not can_replace(z("Ti"), z("Ti"))


@pytest.fixture(scope="module")
def split():
    return packed(TRAINING)


def test_each_copy_replaces_one_element_and_keeps_the_arrangement(split):
    copies = substituted_split(split, seed=0)
    # MgO has no alike element among the others; NaCl/KBr swap halogens, the rutiles their metals
    assert sorted(copies["material_ids"]) == ["KBr~BrCl", "NaCl~ClBr", "SnO2~SnTi", "TiO2~TiSn"]
    assert sorted(copies["formulas"]) == ["KCl", "NaBr", "SnO2", "TiO2"]
    originals = {c.material_id: c for c in split_crystals(split)}
    for copy in split_crystals(copies):
        source = originals[copy.material_id.split("~")[0]]
        assert copy.space_group == source.space_group
        assert [o.letter for o in copy.orbits] == [o.letter for o in source.orbits]
        assert all((o.position == p.position).all() for o, p in zip(copy.orbits, source.orbits))
        changed = {(p.z, o.z) for o, p in zip(copy.orbits, source.orbits) if o.z != p.z}
        assert len(changed) == 1 and can_replace(*changed.pop())
    assert torch.isnan(copies["band_gap"]).all() and torch.isnan(copies["formation_energy"]).all()


def test_the_cell_scales_with_the_atomic_volumes_and_k_follows(split):
    copies = substituted_split(split, seed=0)
    row = copies["material_ids"].index("TiO2~TiSn")
    r_ti, r_sn, r_o = (element_features(z(e))[1] for e in ("Ti", "Sn", "O"))
    scale = ((2 * r_sn**3 + 4 * r_o**3) / (2 * r_ti**3 + 4 * r_o**3)) ** (1 / 3)
    assert float(copies["lattice"][row, 0]) == pytest.approx(4.594 * scale, rel=1e-4)
    assert float(copies["lattice"][row, 2]) == pytest.approx(2.959 * scale, rel=1e-4)
    assert scale == pytest.approx(4.737 / 4.594, rel=0.01)  # the real SnO2 / TiO2 ratio of a
    assert torch.allclose(parameters_from_k(copies["k"]), copies["lattice"], atol=1e-3)  # k6 = log(volume) / 3 moved too

    # the copy expands to a structure of the original's space group with the new element
    coords = expand_rows(copies, copies["orbit_coords"])[row]
    start, count = int(copies["n_orbits"][:row].sum()), int(copies["n_orbits"][row])
    numbers = [number for number, multiplicity in zip(copies["orbit_z"][start:start + count].tolist(),
                                                      copies["orbit_multiplicity"][start:start + count].tolist())
               for _ in range(multiplicity)]  # atoms come orbit by orbit
    structure = Structure(Lattice.from_parameters(*copies["lattice"][row].double().tolist()), numbers, coords.double().numpy())
    assert structure.composition.reduced_formula == "SnO2"
    assert SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() == 136
    assert not math.isnan(structure.volume)


def test_the_command_writes_the_copies_beside_the_training_files(tmp_path, capsys):
    torch.save(packed(TRAINING), tmp_path / "train.pt")
    main(["--data", str(tmp_path)])
    assert len(torch.load(tmp_path / "sub.pt", weights_only=True)["material_ids"]) == 4
    assert "4 substituted copies" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--max-distance", "0"])
    with pytest.raises(ValueError, match="no train.pt"):
        main(["--data", str(tmp_path / "missing")])
