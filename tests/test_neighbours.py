"""Known neighbours of a formula (issue 41, item 5): how a search candidate relates to known MP compounds.

Numbers are those of the shared data (MP-20, the 2018 MP snapshot); the neighbour index is built
from the look-up index once for the test session in its own cache directory (conftest).
"""

import json

import pytest

import tools.lookup as lookup_module
from tools.formula import FormulaError, parse_formula
from tools.lookup import (
    NEIGHBOURS_UNAVAILABLE,
    anonymous_formula,
    attach_neighbours,
    lookup,
    neighbour_index,
    neighbours,
    neighbours_note,
)


def brute_force_keys(predicate) -> set[str]:
    """Formula keys of every MP entry of the index whose key satisfies ``predicate`` (the slow way)."""
    keys = neighbour_index().table["key"]
    return {key for key in keys.unique() if predicate(lookup_module._key_amounts(key))}


def test_a_known_formula_is_its_own_polymorph():
    found = neighbours("BaTiO3")
    known = [p["material_id"] for p in lookup("BaTiO3", limit=3)["polymorphs"]]
    assert [n["material_id"] for n in found] == known and all(n["match"] == "polymorph" for n in found)
    first = found[0]
    assert first["formula"] == "BaTiO3" and first["material_id"] == "mp-5020" and first["spacegroup_symbol"] == "R3m"
    assert first["relation"] == "known polymorph: BaTiO3 (R3m, on the hull)" and first["e_above_hull"] == 0
    assert first["band_gap"] == pytest.approx(2.6212, abs=1e-4) and first["n_polymorphs"] == 5
    assert neighbours_note("BaTiO3", found) == "a new polymorph of known BaTiO3 (5 MP entries)"
    # a candidate in the space group of a known polymorph: that one first, and said so
    tetragonal = neighbours("Ba2Ti2O6", spacegroup=99)
    assert tetragonal[0]["material_id"] == "mp-5986" and tetragonal[0]["spacegroup_symbol"] == "P4mm"
    assert tetragonal[0]["relation"].startswith("known polymorph in the same space group: BaTiO3 (P4mm, ")
    assert neighbours_note("BaTiO3", tetragonal, 99) == "known compound BaTiO3 (5 MP entries), one in the same space group P4mm"


def test_a_new_composition_of_a_known_system_gets_that_systems_compounds():
    assert lookup("Ba3Ti4O11")["n_polymorphs"] == 0  # not in the data
    found = neighbours("Ba3Ti4O11")
    system = brute_force_keys(lambda amounts: set(amounts) == {"Ba", "Ti", "O"})
    assert len(system) >= 5 and len(found) == 3
    assert all(n["match"] == "system" and parse_formula(n["formula"]).key in system for n in found)
    assert all(n["relation"].startswith("same Ba-Ti-O system: ") for n in found)
    assert found[0]["formula"] == "BaTiO3" and found[0]["relation"] == "same Ba-Ti-O system: BaTiO3 (R3m, on the hull)"
    # nearest in composition first (half the L1 distance of atomic fractions)
    target = lookup_module._fractions(lookup_module._key_amounts(parse_formula("Ba3Ti4O11").key))
    distances = [lookup_module._distance(target, lookup_module._fractions(parse_formula(n["formula"]).reduced_amounts)) for n in found]
    assert distances == sorted(distances)
    nearest = min(lookup_module._distance(target, lookup_module._fractions(lookup_module._key_amounts(k))) for k in system)
    assert distances[0] == pytest.approx(nearest)
    # an entry of the 2018 snapshot: its space group computed with spglib
    bati2o5 = next(n for n in found if n["formula"] == "BaTi2O5")
    assert bati2o5["dataset"] == "mp2018" and bati2o5["spacegroup_symbol"] == "Pnma" and bati2o5["e_above_hull"] is None
    assert "no hull energy in the data" in bati2o5["relation"]
    assert neighbours_note("Ba3Ti4O11", found) == "a new composition in the known Ba-Ti-O system"
    json.dumps(found, allow_nan=False)  # no NaN reaches results.json


def test_a_made_up_quaternary_gets_same_stoichiometry_compounds_sharing_elements():
    formula = "BaTiZrS4"
    assert not brute_force_keys(lambda amounts: set(amounts) == {"Ba", "Ti", "Zr", "S"})  # no compound of its system
    found = neighbours(formula)
    assert len(found) == 3 and all(n["match"] == "stoichiometry" for n in found)
    same = brute_force_keys(lambda amounts: anonymous_formula(amounts.values()) == "ABCD4")
    most = max(len({"Ba", "Ti", "Zr", "S"} & set(lookup_module._key_amounts(k))) for k in same)
    assert all(parse_formula(n["formula"]).key in same for n in found)
    assert len(found[0]["shared_elements"]) == most == 3 and set(found[0]["shared_elements"]) == {"S", "Ti", "Zr"}
    assert [len(n["shared_elements"]) for n in found] == sorted((len(n["shared_elements"]) for n in found), reverse=True)
    for n in found:
        assert set(n["shared_elements"]) == {"Ba", "Ti", "Zr", "S"} & set(parse_formula(n["formula"]).reduced_amounts)
        assert n["relation"].startswith(f"same ABCD4 stoichiometry, shares {', '.join(n['shared_elements'])}: {n['formula']} (")
    assert neighbours_note(formula, found) == "no known Ba-Zr-Ti-S compound"
    assert neighbours_note("KrXe", []) == "no known Xe-Kr compound, nor a known AB compound sharing its elements"


def test_the_tiers_fill_up_to_the_limit():
    found = neighbours("CdPtO3", limit=4)  # one known Cd-Pt-O compound, then ABC3 ones sharing Cd and O
    assert [n["match"] for n in found] == ["system", "stoichiometry", "stoichiometry", "stoichiometry"]
    assert found[0]["formula"] == "CdPt3O6" and {"Cd", "O"} == set(found[1]["shared_elements"])
    assert len(neighbours("SiO2", limit=1)) == 1 and len(neighbours("SiO2", limit=10)) == 10
    assert anonymous_formula([3, 1, 1]) == "ABC3" and anonymous_formula([2]) == "A2"
    from pymatgen.core import Composition

    for text in ("Ba3Ti4O11", "Li7Mn3O9", "CaCO3", "Fe2O3"):
        assert anonymous_formula(parse_formula(text).reduced_amounts.values()) == Composition(text).anonymized_formula


def test_bad_input_raises():
    with pytest.raises(FormulaError, match="unknown element"):
        neighbours("Xx2O3")
    for limit in (0, 101, True):
        with pytest.raises(ValueError, match="limit"):
            neighbours("TiO2", limit=limit)


def test_the_neighbour_index_is_cached_and_fast():
    import time

    from memory.paths import user_cache_dir

    built = neighbour_index()
    assert (user_cache_dir() / f"lookup_neighbours_{built.stamp}.csv.gz").is_file()
    assert neighbour_index() is built and built.stamp == lookup_module.lookup_index().stamp
    before = neighbours("Ba3Ti4O11")
    lookup_module._cached_neighbour_index.cache_clear()  # a new process, as it were
    try:
        again = neighbour_index()
        assert again is not built and again.from_cache and len(again.table) == len(built.table)
        assert neighbours("Ba3Ti4O11") == before
        started = time.perf_counter()
        for formula in ("Ba3Ti4O11", "BaTiZrS4", "TiO2", "CdPtO3", "Li7Mn3O9"):
            neighbours(formula)
        assert time.perf_counter() - started < 1.0  # milliseconds a call once warm
    finally:
        lookup_module._cached_neighbour_index.cache_clear()


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """The shared data missing: GENMS_DATA_DIR points to an empty folder, the in-memory indexes forgotten."""
    monkeypatch.setenv("GENMS_DATA_DIR", str(tmp_path / "nothing"))
    lookup_module._cached_neighbour_index.cache_clear()
    lookup_module._cached_index.cache_clear()
    yield tmp_path / "nothing"
    lookup_module._cached_neighbour_index.cache_clear()
    lookup_module._cached_index.cache_clear()


def test_without_the_data_candidates_say_neighbours_are_unavailable(no_data):
    candidates = [{"formula": "Ba3Ti4O11", "reduced_formula": "Ba3Ti4O11"}, {"formula": "TiO2", "reduced_formula": "TiO2"}]
    reason = attach_neighbours(candidates)
    assert reason.startswith(NEIGHBOURS_UNAVAILABLE) and "GENMS_DATA_DIR" in reason
    assert all(c["neighbours"] == [] and c["neighbours_note"] == reason for c in candidates)


def test_a_candidate_that_cannot_be_read_does_not_stop_the_others():
    candidates = [{"formula": "Qq2O3"}, {"formula": "TiO2", "checks": {"spacegroup_number": 141}}]
    assert attach_neighbours(candidates) is None
    assert candidates[0]["neighbours"] == [] and candidates[0]["neighbours_note"].startswith(NEIGHBOURS_UNAVAILABLE)
    assert candidates[1]["neighbours"][0]["material_id"] == "mp-390"  # anatase, the candidate's space group
    assert candidates[1]["neighbours_note"] == "known compound TiO2 (23 MP entries), one in the same space group I4_1/amd"


def test_report_lines_are_escaped_and_one_per_candidate():
    from agent.render import neighbours_lines

    candidates = [{"formula": "Ba3Ti4O11", "reduced_formula": "Ba3Ti4O11"}, {"formula": "TiO2"}, {"formula": "old run"}]
    attach_neighbours(candidates[:2])
    lines = neighbours_lines(candidates)
    assert lines[:3] == ["", "## Known neighbours", ""] and len(lines) == 5  # the old record without neighbours left out
    assert lines[3].startswith("- **Ba3Ti4O11**: a new composition in the known Ba-Ti-O system. Same Ba-Ti-O system: "
                               "BaTiO3 (mp-5020, R3m, on the hull, PBE gap 2.62 eV); BaTi2O5 (mp-558159, Pnma, E\\_hull -, ")
    assert lines[3].count("Same Ba-Ti-O system") == 1 and lines[3].count("; ") == 2  # three neighbours, one relation
    assert lines[4].startswith("- **TiO2**: a new polymorph of known TiO2 (23 MP entries). Known polymorph: TiO2 (mp-554278, C2/m, ")
    assert r"I4\_1/amd" in lines[4]  # Markdown escaped
    cdpto3 = [{"formula": "CdPtO3"}]
    attach_neighbours(cdpto3)
    assert neighbours_lines(cdpto3)[3] == (
        "- **CdPtO3**: a new composition in the known Cd-Pt-O system. Same Cd-Pt-O system: CdPt3O6 (mp-8212, Cmmm, on the hull, "
        "PBE gap 0.28 eV). Same ABC3 stoichiometry, shares Cd, O: TiCdO3 (mp-13641, R-3, on the hull, PBE gap 2.93 eV); "
        "VCdO3 (mp-556857, Pnma, on the hull, PBE gap 0.00 eV)")
    unavailable = [{"formula": "X", "neighbours": [], "neighbours_note": f"{NEIGHBOURS_UNAVAILABLE}: data missing"}] * 2
    assert neighbours_lines(unavailable)[3:] == ["Known neighbours unavailable: data missing."]
    assert neighbours_lines([{"formula": "X"}]) == []
