import pytest

from tools.families import FAMILIES, families_fitting, get_family, reference_entries

# (family, formulas that fit, formulas that do not)
CASES = {
    "perovskite": (["SrTiO3", "Sr4Ti4O12", "CsPbI3", "BaZrS3", "KMgF3"], ["SrTiO2", "CaCO3", "NaNO3", "Sr2TiO4"]),
    "double_perovskite": (["Ba2FeMoO6", "Sr2CrReO6"], ["Cs2AgBiBr6", "SrTiO3"]),
    "elpasolite": (["Cs2AgBiBr6", "K2NaAlF6"], ["Ba2FeMoO6"]),
    "spinel": (["MgAl2O4", "LiMn2O4", "Fe3O4", "CdIn2S4"], ["MgAl2F8", "MgAl3O4", "SrTiO3"]),
    "inverse_spinel": (["NiFe2O4", "Fe3O4"], ["NiFe2O5"]),
    "pyrochlore": (["Y2Ti2O7", "Gd2Zr2O7"], ["Y2Ti2O8", "Y2Ti2S7"]),
    "garnet": (["Y3Al5O12", "Ca3Al2Si3O12", "Y3Fe5O12"], ["Y3Al5O13", "Y3Al5F12"]),
    "rocksalt": (["NaCl", "MgO", "TiN", "TiC"], ["NaCl2", "Na"]),
    "fluorite": (["CaF2", "CeO2", "Li2O"], ["CaF3", "H2O"]),
    "rutile": (["TiO2", "MgF2"], ["TiS2", "TiCl2"]),
    "wurtzite": (["ZnO", "GaN", "CdS"], ["NaCl", "ZnO2"]),
    "zincblende": (["GaAs", "ZnS", "CuCl", "BN"], ["NaF", "GaAs2"]),
    "heusler": (["Cu2MnAl", "Co2MnSi"], ["Cu2MnO", "CuMnAl", "Cu2MnFe"]),
    "half_heusler": (["TiNiSn", "ZrNiSn", "MgAgAs"], ["TiNiO", "TiNiFe"]),
    "olivine": (["Mg2SiO4", "LiFePO4"], ["Mg2SiO5"]),
    "delafossite": (["CuFeO2", "CuAlO2", "PdCoO2"], ["NaFeO2", "CuFeS2"]),
    "ruddlesden_popper": (["Sr2TiO4", "Sr3Ti2O7", "La4Ni3O10"], ["Sr3Ti2O8", "SrTiO3"]),
}


def test_catalogue_is_complete():
    assert set(CASES) == {family.name for family in FAMILIES}
    for family in FAMILIES:
        assert family.templates and family.prototypes and family.spacegroups and family.roles


@pytest.mark.parametrize("name", sorted(CASES))
def test_fits_true_and_false(name):
    family = get_family(name)
    fitting, not_fitting = CASES[name]
    for formula in fitting:
        assert family.fits(formula), f"{formula} should fit {name}"
    for formula in not_fitting:
        assert not family.fits(formula), f"{formula} should not fit {name}"


def test_prototype_formulas_fit_their_family():
    for family in FAMILIES:
        for prototype in family.prototypes:
            formula = prototype.split()[0].split("/")[0]
            assert family.fits(formula), (family.name, formula)


def test_assignment_names_sites():
    assert get_family("perovskite").assignment("SrTiO3") == {"A": "Sr", "B": "Ti", "X": "O"}
    assert get_family("spinel").assignment("MgAl2O4") == {"A": "Mg", "B": "Al", "X": "O"}
    assert get_family("garnet").assignment("Y3Al5O12") == {"A": "Y", "B": "Al", "X": "O"}


def test_invalid_formula_fits_nothing():
    assert not get_family("perovskite").fits("Xx2O")


def test_lookup_by_alias():
    assert get_family("Double Perovskite").name == "double_perovskite"
    assert get_family("rock-salt").name == "rocksalt"
    assert get_family("spinels").name == "spinel"
    with pytest.raises(KeyError, match="unknown crystal family 'quasicrystal'"):
        get_family("quasicrystal")


def test_families_fitting_lists_all_matches():
    assert families_fitting("SrTiO3") == ["perovskite"]
    assert {"spinel", "inverse_spinel"} <= set(families_fitting("MgAl2O4"))


def test_pyrochlore_reference_set_from_shared_data():
    entries = reference_entries("pyrochlore")
    assert len(entries) >= 50
    assert all(entry.spacegroup_number == 227 for entry in entries)
    assert all(get_family("pyrochlore").fits(entry.formula) for entry in entries)
    assert len({entry.material_id for entry in entries}) == len(entries)
    formulas = {entry.formula for entry in entries}
    assert "Y2Ti2O7" in formulas or "Gd2Ti2O7" in formulas
    structure = entries[0].structure
    assert structure.composition.reduced_formula == entries[0].formula
