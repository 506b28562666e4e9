"""Prototype substitution generator: Wyckoff data, labels, volumes, checked against MP structures."""

from __future__ import annotations

import ast
import math
import warnings
from functools import reduce
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

import generators.prototypes as prototypes_module
from generators.prototypes import (
    PROTOTYPE_BY_NAME,
    PROTOTYPES,
    bond_valence_volume,
    build,
    estimate_volume,
    fallback_volume,
    prototypes_for,
    site_labels,
)
from tools.families import FAMILIES, FAMILY_BY_NAME

# Materials Project structure of each prototype's reference compound in the shared data, found
# by scanning mp20 + mp2018 for the formula and keeping the entry in the prototype's space group.
# MP has no cubic SrTiO3: mp-551830 is its slightly tilted I4/mcm form.
MP_REFERENCES = {
    "cubic_perovskite": ("SrTiO3", "mp-551830"),
    "orthorhombic_perovskite": ("CaTiO3", "mp-4019"),
    "rocksalt_double_perovskite": ("Ba2FeMoO6", "mp-18995"),
    "elpasolite": ("Cs2AgBiBr6", "mp-1078250"),
    "normal_spinel": ("MgAl2O4", "mp-3536"),
    "spinel_A3X4": ("Co3O4", "mp-18748"),
    "inverse_spinel_imma": ("NiFe2O4", "mp-35596"),
    "magnetite": ("Fe3O4", "mp-19306"),
    "pyrochlore": ("Y2Ti2O7", "mp-5373"),
    "garnet": ("Ca3Al2Si3O12", "mp-6008"),
    "yag_garnet": ("Y3Al5O12", "mp-3050"),
    "rocksalt": ("NaCl", "mp-22862"),
    "fluorite": ("CaF2", "mp-2741"),
    "antifluorite": ("Li2O", "mp-1960"),
    "rutile": ("TiO2", "mp-2657"),
    "wurtzite": ("ZnO", "mp-2133"),
    "zincblende": ("ZnS", "mp-10695"),
    "full_heusler_L21": ("Cu2MnAl", "mp-3574"),
    "half_heusler_C1b": ("TiNiSn", "mp-924130"),
    "olivine": ("Mg2SiO4", "mp-2895"),
    "phospho_olivine": ("LiFePO4", "mp-19017"),
    "delafossite": ("CuFeO2", "mp-510281"),
    "ruddlesden_popper_n1": ("Sr2TiO4", "mp-5532"),
    "ruddlesden_popper_n2": ("Sr3Ti2O7", "mp-3349"),
    "ruddlesden_popper_n3": ("Sr4Ti3O10", "mp-31213"),
}
# Substituted compounds: (prototype, assignment, MP id of the real compound, compound it must outgrow).
SUBSTITUTIONS = [
    ("cubic_perovskite", {"A": "Ba", "B": "Zr", "X": "O"}, "mp-3834", {"A": "Sr", "B": "Ti", "X": "O"}),
    ("normal_spinel", {"A": "Zn", "B": "Cr", "X": "S"}, "mp-4194", {"A": "Mg", "B": "Al", "X": "O"}),
]
MATCHER = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
STRICT = StructureMatcher()  # pymatgen defaults: ltol 0.2, stol 0.3, angle_tol 5
PLACEHOLDERS = ("Na", "Mg", "Al", "Si", "P")  # one distinct element per label, to count sites


@pytest.fixture(scope="module")
def mp_structures() -> dict[str, Structure]:
    """The MP structures named above, parsed once from the shared data (MP id -> Structure)."""
    from generators.datasets import MP20_FILES, MP2018_FILE, DataNotFoundError, read_table

    wanted = {mp_id for _, mp_id in MP_REFERENCES.values()} | {mp_id for _, _, mp_id, _ in SUBSTITUTIONS}
    found: dict[str, Structure] = {}
    try:
        for path in (*MP20_FILES.values(), MP2018_FILE):
            table = read_table(path, ["material_id", "cif"])
            for row in table[table["material_id"].isin(wanted - set(found))].itertuples(index=False):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found[row.material_id] = Structure.from_str(row.cif, fmt="cif")
    except DataNotFoundError as exc:
        pytest.skip(f"shared MP data not available: {exc}")
    assert wanted == set(found), f"MP ids missing from the shared data: {sorted(wanted - set(found))}"
    return found


def _spacegroup(structure: Structure) -> int:
    return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()


def _min_distance(structure: Structure) -> float:
    distances = structure.distance_matrix + np.eye(len(structure)) * 1e6
    return float(distances.min())


def _volume_per_atom(structure: Structure) -> float:
    return structure.volume / len(structure)


def _template(prototype):
    family = FAMILY_BY_NAME[prototype.family]
    return next(t for t in family.templates if t.name == prototype.template)


def _reference_assignment(prototype) -> dict[str, str]:
    assignment = FAMILY_BY_NAME[prototype.family].assignment(prototype.reference_compound)
    assert assignment is not None, f"{prototype.reference_compound} does not fit family {prototype.family}"
    return assignment


# --- catalogue coverage and labels -----------------------------------------------------------


def test_every_catalogue_family_has_a_prototype():
    covered = {p.family for p in PROTOTYPES}
    assert {family.name for family in FAMILIES} <= covered
    assert covered <= set(FAMILY_BY_NAME)
    assert len(PROTOTYPE_BY_NAME) == len(PROTOTYPES)  # names are unique
    assert set(MP_REFERENCES) == set(PROTOTYPE_BY_NAME)  # every prototype is checked against MP
    for family in FAMILIES:  # every template of the catalogue, not only every family
        for template in family.templates:
            assert prototypes_for(family.name, template.name), (family.name, template.name)


@pytest.mark.parametrize("prototype", PROTOTYPES, ids=lambda p: p.name)
def test_labels_and_stoichiometry_match_the_catalogue_template(prototype):
    template = _template(prototype)
    assert sorted(site_labels(prototype)) == sorted(site.label for site in template.sites)
    # every label on a distinct element: the atom counts per label must be the template's ratio
    assignment = dict(zip(site_labels(prototype), PLACEHOLDERS))
    structure = build(prototype, assignment, volume_per_atom=10.0)
    composition = structure.composition
    counts = {label: composition[element] for label, element in assignment.items()}
    divisor = reduce(math.gcd, (int(c) for c in counts.values()))
    assert {label: int(c) // divisor for label, c in counts.items()} == {s.label: s.count for s in template.sites}
    # the site property tells which label each site carries
    assert [assignment[label] for label in structure.site_properties["template_site"]] == [
        site.specie.symbol for site in structure
    ]


def test_catalogue_spacegroups_contain_each_prototype():
    for prototype in PROTOTYPES:
        assert prototype.spacegroup in FAMILY_BY_NAME[prototype.family].spacegroups, prototype.name


# --- reference compounds against Materials Project -------------------------------------------


@pytest.mark.parametrize("prototype", PROTOTYPES, ids=lambda p: p.name)
def test_reference_compound_matches_materials_project(prototype, mp_structures):
    formula, mp_id = MP_REFERENCES[prototype.name]
    assert Composition(formula).reduced_formula == Composition(prototype.reference_compound).reduced_formula
    built = build(prototype, _reference_assignment(prototype))
    mp = mp_structures[mp_id]
    assert mp.composition.reduced_formula == Composition(formula).reduced_formula

    assert built.composition.reduced_formula == Composition(formula).reduced_formula
    assert _spacegroup(built) == prototype.spacegroup
    assert _min_distance(built) > 1.2
    ratio = _volume_per_atom(built) / _volume_per_atom(mp)
    assert 0.75 < ratio < 1.25, f"volume/atom {_volume_per_atom(built):.2f} vs MP {_volume_per_atom(mp):.2f}"
    assert MATCHER.fit_anonymous(built, mp)
    # and closely: rms displacement (normalised by (V/atom)^(1/3)) after the best mapping
    assert STRICT.get_rms_dist(built, mp)[0] < 0.05


def test_mp_references_are_in_the_prototype_spacegroups(mp_structures):
    # SrTiO3 is the one reference whose MP structure is a distorted (I4/mcm) variant
    for name, (_, mp_id) in MP_REFERENCES.items():
        expected = 140 if name == "cubic_perovskite" else PROTOTYPE_BY_NAME[name].spacegroup
        assert _spacegroup(mp_structures[mp_id]) == expected, name


@pytest.mark.parametrize(
    "name, assignment, mp_id",
    [
        ("inverse_spinel_imma", {"A": "Mg", "B": "Al", "X": "O"}, "mp-3536"),  # MgAl2O4 is a normal spinel
        ("wurtzite", {"A": "Zn", "X": "S"}, "mp-10695"),  # zincblende ZnS
        ("cubic_perovskite", {"A": "Ca", "B": "Ti", "X": "O"}, "mp-4019"),  # tilted Pnma CaTiO3
        ("ruddlesden_popper_n1", {"A": "Sr", "B": "Ti", "X": "O"}, "mp-3349"),  # n=1 cell vs Sr3Ti2O7
    ],
    ids=["inverse-vs-normal-spinel", "wurtzite-vs-zincblende", "cubic-vs-tilted", "rp1-vs-rp2"],
)
def test_the_mp_comparison_tells_structures_apart(name, assignment, mp_id, mp_structures):
    built = build(PROTOTYPE_BY_NAME[name], assignment)
    assert not MATCHER.fit_anonymous(built, mp_structures[mp_id])


# --- substitution ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, assignment, mp_id, smaller", SUBSTITUTIONS, ids=["BaZrO3", "ZnCr2S4"])
def test_substituted_compound(name, assignment, mp_id, smaller, mp_structures):
    prototype = PROTOTYPE_BY_NAME[name]
    built = build(prototype, assignment)
    mp = mp_structures[mp_id]
    assert _spacegroup(built) == prototype.spacegroup
    assert _min_distance(built) > 1.2
    assert 0.75 < _volume_per_atom(built) / _volume_per_atom(mp) < 1.25
    assert MATCHER.fit_anonymous(built, mp)
    # larger ions -> larger cell (BaZrO3 > SrTiO3 by ~25 %, ZnCr2S4 > MgAl2O4 by ~85 %)
    assert _volume_per_atom(built) > 1.15 * _volume_per_atom(build(prototype, smaller))


def test_bond_lengths_follow_bond_valence():
    # Ti4+ with six O: R0(Ti-O) - 0.37 ln(4/6) ~ 1.96 Å; SrTiO3 has 1.95 Å
    built = build(PROTOTYPE_BY_NAME["cubic_perovskite"], {"A": "Sr", "B": "Ti", "X": "O"})
    assert built.lattice.a / 2 == pytest.approx(1.95, abs=0.05)
    # two labels may share an element: Fe3O4 in the inverse-spinel AB2X4 cell
    magnetite = build(PROTOTYPE_BY_NAME["inverse_spinel_imma"], {"A": "Fe", "B": "Fe", "X": "O"})
    assert magnetite.composition.reduced_formula == "Fe3O4"
    assert _spacegroup(magnetite) == 227  # with one cation the ordering disappears


def test_volume_per_atom_is_honoured():
    built = build(PROTOTYPE_BY_NAME["rutile"], {"A": "Sn", "X": "O"}, volume_per_atom=12.5)
    assert _volume_per_atom(built) == pytest.approx(12.5)
    assert built.lattice.c / built.lattice.a == pytest.approx(0.644)


# --- volume estimate -------------------------------------------------------------------------


def test_estimate_volume_is_independent_of_the_input_scale():
    structure = build(PROTOTYPE_BY_NAME["fluorite"], {"A": "Ca", "X": "F"}, volume_per_atom=5.0)
    small = estimate_volume(structure)
    structure.scale_lattice(structure.volume * 8)
    assert estimate_volume(structure) == pytest.approx(small, rel=1e-6)
    assert 12.0 < small / len(structure) < 15.5  # MP CaF2: 13.99 Å^3/atom


def test_intermetallics_use_dls_and_everything_falls_back(monkeypatch):
    heusler = build(PROTOTYPE_BY_NAME["full_heusler_L21"], {"X": "Cu", "Y": "Mn", "Z": "Al"}, volume_per_atom=10.0)
    assert bond_valence_volume(heusler) is None  # no anions: not an ionic solid
    assert 11.0 < estimate_volume(heusler) / len(heusler) < 14.5  # DLS; MP Cu2MnAl: 12.98 Å^3/atom

    def broken(structure):
        raise RuntimeError("predictor unavailable")

    monkeypatch.setattr(prototypes_module, "bond_valence_volume", broken)
    monkeypatch.setattr(prototypes_module, "_dls_volume", broken)
    assert estimate_volume(heusler) == pytest.approx(fallback_volume(heusler))
    assert 8.0 < fallback_volume(heusler) / len(heusler) < 20.0


# --- errors and look-ups ---------------------------------------------------------------------


def test_missing_label_is_a_clear_error():
    with pytest.raises(ValueError, match=r"missing label\(s\) 'X'.*expected exactly the labels 'A', 'B', 'X'"):
        build(PROTOTYPE_BY_NAME["cubic_perovskite"], {"A": "Sr", "B": "Ti"})


def test_extra_label_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown label\(s\) \"B'\""):
        build(PROTOTYPE_BY_NAME["cubic_perovskite"], {"A": "Sr", "B": "Ti", "B'": "Zr", "X": "O"})


def test_unknown_element_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'Xx' on site 'B' is not a chemical element symbol"):
        build(PROTOTYPE_BY_NAME["cubic_perovskite"], {"A": "Sr", "B": "Xx", "X": "O"})


def test_non_positive_volume_is_an_error():
    with pytest.raises(ValueError, match="volume_per_atom must be positive"):
        build(PROTOTYPE_BY_NAME["rocksalt"], {"A": "Na", "X": "Cl"}, volume_per_atom=0)


def test_prototypes_for():
    assert [p.name for p in prototypes_for("spinel")] == ["normal_spinel", "spinel_A3X4"]
    assert [p.name for p in prototypes_for("spinel", "A3X4")] == ["spinel_A3X4"]
    assert [p.name for p in prototypes_for("ruddlesden_popper", "A3B2X7 (n=2)")] == ["ruddlesden_popper_n2"]
    assert [p.spacegroup for p in prototypes_for("perovskite")] == [221, 62]
    with pytest.raises(KeyError, match="known families"):
        prototypes_for("quasicrystal")
    with pytest.raises(KeyError, match="its templates: AB2X4, A3X4"):
        prototypes_for("spinel", "A2BX4")


def test_generators_module_imports_nothing_from_agent_or_tools():
    source = Path(prototypes_module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"agent", "tools"}
