import pytest
from pymatgen.core import Lattice, Structure

from tools.structure import (
    MAX_SITES,
    StructureError,
    detect_spacegroup,
    min_interatomic_distance,
    read_cif,
    structural_validity,
    write_cif,
)


def test_cif_round_trip_preserves_structure(srtio3):
    text = write_cif(srtio3)
    again = read_cif(text)
    assert len(again) == 5
    assert again.lattice.abc == pytest.approx((3.905, 3.905, 3.905), abs=1e-6)
    assert again.matches(srtio3)


def test_symmetrised_cif_round_trip(rocksalt_nacl):
    text = write_cif(rocksalt_nacl, symprec=0.1)
    assert "Fm-3m" in text
    assert read_cif(text).matches(rocksalt_nacl)


def test_valid_perovskite(srtio3):
    verdict = structural_validity(srtio3)
    assert verdict.valid and verdict.reason is None
    assert verdict.min_distance == pytest.approx(3.905 / 2, abs=1e-6)  # Ti-O
    assert verdict.volume_per_atom == pytest.approx(3.905**3 / 5)


def test_overlapping_atoms_are_invalid(srtio3):
    srtio3.append("O", [0.5, 0.5, 0.06])  # 0.234 Å from the O at (0.5, 0.5, 0)
    verdict = structural_validity(srtio3)
    assert not verdict.valid
    assert verdict.min_distance == pytest.approx(0.06 * 3.905, abs=1e-6)
    assert "atoms overlap" in verdict.reason


def test_periodic_images_count():
    # One atom, but its image across the 0.4 Å cell edge is closer than 0.5 Å.
    structure = Structure(Lattice.orthorhombic(0.4, 5, 5), ["Fe"], [[0, 0, 0]])
    assert min_interatomic_distance(structure) == pytest.approx(0.4)
    assert not structural_validity(structure).valid


def test_empty_cell_is_implausible():
    structure = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    verdict = structural_validity(structure)
    assert not verdict.valid
    assert "volume per atom" in verdict.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty CIF"),
        ("garbage\n", "not a readable CIF"),
        ("data_x\n_cell_length_a 3\n", "not a readable CIF"),
        ("data_x\n" + "#" * 3_000_000, "CIF too large"),
    ],
)
def test_bad_cifs_raise_clear_errors(text, message):
    with pytest.raises(StructureError, match=message):
        read_cif(text)


def test_too_many_sites_is_rejected(rocksalt_nacl):
    big = rocksalt_nacl * (6, 6, 6)  # 1728 sites
    assert len(big) > MAX_SITES
    with pytest.raises(StructureError, match="structure too large"):
        read_cif(write_cif(big))


def test_spacegroups(srtio3, rocksalt_nacl):
    assert detect_spacegroup(srtio3).number == 221
    assert detect_spacegroup(srtio3).symbol == "Pm-3m"
    assert detect_spacegroup(rocksalt_nacl).number == 225
    tetragonal = srtio3.copy()
    tetragonal.apply_strain([0, 0, 0.05])
    assert detect_spacegroup(tetragonal).number == 123
