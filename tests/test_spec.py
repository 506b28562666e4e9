import pytest
from pydantic import ValidationError

from tools.limits import MAX_REQUEST_CHARS
from tools.spec import RequestNotUnderstood, SearchSpec, SpecConflict, parse_request, spec_conflicts


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("a novel spinel oxide containing Mn", {"family": "spinel", "anion_class": "oxide", "required_elements": ["Mn"], "novel_against": ["MP", "ICSD"]}),
        ("a pyrochlore oxide not in the Materials Project", {"family": "pyrochlore", "novel_against": ["MP"]}),
        ("a double perovskite with Ba and W", {"family": "double_perovskite", "required_elements": ["Ba", "W"], "novel_against": []}),
        ("a lead-free halide perovskite", {"family": "perovskite", "anion_class": "halide", "excluded_elements": ["Pb"], "required_elements": []}),
        ("a stable chalcogenide with atom ratio 1:1:2 that is not on ICSD", {"stoichiometry": "1:1:2", "anion_class": "chalcogenide", "novel_against": ["ICSD"], "n_results": 5}),
        ("a double perovskite oxide with band gap near 1.4 eV", {"family": "double_perovskite", "band_gap": 1.4}),
        ("seven diverse low-energy Li-Mn-O crystals", {"allowed_elements": ["Li", "Mn", "O"], "n_results": 7}),
        ("a metallic Heusler compound with Co and Mn", {"family": "heusler", "electronic": "metal", "required_elements": ["Co", "Mn"]}),
        ("ten garnets without rare earths", {"family": "garnet", "n_results": 10}),
        ("a perovskite in space group Pnma", {"family": "perovskite", "spacegroup": 62}),
        ("a cobalt-free olivine phosphate", {"family": "olivine", "excluded_elements": ["Co"]}),
        ("In and As semiconductor", {"required_elements": ["As", "In"], "electronic": "semiconductor"}),
        ("a perovskite with at most 10 atoms", {"max_sites": 10}),
        ("a dense garnet with density near 6.5 g/cm3", {"family": "garnet", "density": 6.5}),
        ("a half-Heusler with band gap between 0.5 and 1.5 eV", {"family": "half_heusler", "band_gap": 1.0, "band_gap_tolerance": 0.5}),
    ],
)
def test_parse_requests(request_text, expected):
    spec = parse_request(request_text)
    for field, value in expected.items():
        assert getattr(spec, field) == value, field


def test_group_exclusions():
    spec = parse_request("ten garnets without rare earths")
    assert {"Y", "La", "Gd", "Lu"} <= set(spec.excluded_elements)
    assert "Al" not in spec.excluded_elements


@pytest.mark.parametrize("text", ["make me a sandwich", "", "   ", "hello there", "x" * 3000, "a spinel " * (MAX_REQUEST_CHARS // 9 + 1)])
def test_not_understood_explains_what_is_supported(text):
    with pytest.raises(RequestNotUnderstood) as info:
        parse_request(text)
    message = str(info.value)
    assert "crystal family" in message or "too long" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a spinel without oxygen, sulphur, selenium or any anion", "needs one of the anions O, S, Se, Te"),
        ("a spinel with Mn but without Mn", "Mn both required and excluded"),
        ("a fluoride spinel", "rules all of them out"),
        ("a perovskite with atom ratio 1:2:4", "not a perovskite ratio"),
        ("a Li-Mn-O crystal containing Fe", "outside the allowed"),
    ],
)
def test_conflicts_are_explained(text, fragment):
    with pytest.raises(SpecConflict, match=fragment):
        parse_request(text)


def test_spec_validation():
    with pytest.raises(ValidationError, match="unknown element"):
        SearchSpec(required_elements=["Xx"])
    with pytest.raises(ValidationError):
        SearchSpec(band_gap=-1)
    with pytest.raises(ValidationError):
        SearchSpec(budget={"proposals": 0})
    assert SearchSpec(family="Double Perovskite").family == "double_perovskite"
    assert spec_conflicts(SearchSpec(family="spinel", anion_class="oxide")) == []


def test_summary_reads_back():
    summary = parse_request("a novel spinel oxide containing Mn").summary()
    assert summary == "spinel; oxide; with Mn; not in MP/ICSD"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a crystal with band gap 20 eV", "band gap: Input should be less than or equal to 15"),
        ("a crystal with band gap near " + "9" * 400 + " eV", "band gap"),
        ("a perovskite in space group 999", "spacegroup: Input should be less than or equal to 230"),
        ("a perovskite with at most 0 atoms", "max sites"),
        ("a garnet with density near 99 g/cm3", "density"),
        ("an oxide with atom ratio 1:0", "every part of the ratio '1:0' must be at least 1"),
        ("an oxide with atom ratio 999:999:999", "more atoms than a formula may have (1000)"),
        ("a crystal with atom ratio " + ":".join(["1"] * 30), "a ratio of 30 parts has more elements"),
    ],
)
def test_values_out_of_range_are_not_understood(text, fragment):
    """Numbers the spec cannot hold are the reader's own refusal, not a pydantic error callers do not catch."""
    with pytest.raises(RequestNotUnderstood, match="outside what genms searches") as info:
        parse_request(text)
    assert fragment in str(info.value)


def test_invalid_overrides_stay_the_callers_error():
    with pytest.raises(ValidationError, match="budget"):
        parse_request("a spinel oxide", budget={"formulas": 0})


@pytest.mark.parametrize(
    ("text", "required", "excluded"),
    [
        ("a spinel not containing Fe", [], ["Fe"]),
        ("a spinel oxide without cobalt. It should contain manganese", ["Mn"], ["Co"]),
        ("a spinel without Ni, Cu or Zn", [], ["Cu", "Ni", "Zn"]),
        ("a spinel without Ni, 5 Fe", ["Fe"], ["Ni"]),  # after a comma, a number ends the list
        ("a nano-sized iron oxide spinel", ["Fe"], []),  # 'no' inside a word is not a negation
        ("a mono-layer Mn oxide", ["Mn"], []),
    ],
)
def test_negation_scope(text, required, excluded):
    spec = parse_request(text)
    assert spec.required_elements == required
    assert spec.excluded_elements == excluded


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        # anion prefixes name the anion of the word they qualify
        ("a novel seleno-spinel containing Cr", {"family": "spinel", "anion_class": "selenide", "required_elements": ["Cr"]}),
        ("five thiospinels", {"family": "spinel", "anion_class": "sulfide", "n_results": 5}),
        ("a fluoroperovskite with K", {"family": "perovskite", "anion_class": "fluoride", "required_elements": ["K"]}),
        ("a chloro perovskite", {"family": "perovskite", "anion_class": "chloride"}),
        # -ate / -ite names: the element, an oxide (or the prefix's anion)
        ("a lithium titanate", {"anion_class": "oxide", "required_elements": ["Li", "Ti"]}),
        ("barium zirconates", {"anion_class": "oxide", "required_elements": ["Ba", "Zr"]}),
        ("a cobalt-free nickelate", {"anion_class": "oxide", "required_elements": ["Ni"], "excluded_elements": ["Co"]}),
        ("a thiophosphate with lithium", {"anion_class": "sulfide", "required_elements": ["Li", "P"]}),
        ("a ferroelectric with manganese", {"anion_class": None, "required_elements": ["Mn"]}),  # not -ate words
        # mixed anions: both anions required
        ("a quaternary oxynitride", {"anion_class": "oxynitride", "required_elements": ["N", "O"], "n_elements": 4}),
        ("an oxy-nitride perovskite", {"family": "perovskite", "anion_class": "oxynitride", "required_elements": ["N", "O"]}),
        ("an oxysulphide", {"anion_class": "oxysulfide", "required_elements": ["O", "S"]}),
        # element counts and novelty wordings
        ("a binary nitride that has never been reported", {"anion_class": "nitride", "n_elements": 2, "novel_against": ["MP", "ICSD"]}),
        ("a hypothetical three-component telluride of Bi", {"required_elements": ["Bi"], "n_elements": 3, "novel_against": ["MP", "ICSD"]}),
        ("a fluoride that is yet to be synthesised", {"anion_class": "fluoride", "novel_against": ["MP", "ICSD"]}),
        # groups, as exclusions
        ("a garnet without transition metals", {"family": "garnet", "excluded_elements_include": ["Fe", "Ti", "Zn"]}),
        ("a sulfide free of alkaline earths", {"anion_class": "sulfide", "excluded_elements": ["Ba", "Be", "Ca", "Mg", "Sr"]}),
    ],
)
def test_chemists_vocabulary(request_text, expected):
    spec = parse_request(request_text)
    for field, value in expected.items():
        if field == "excluded_elements_include":
            assert set(value) <= set(spec.excluded_elements), (request_text, spec.excluded_elements)
        else:
            assert getattr(spec, field) == value, (request_text, field, getattr(spec, field))


def test_the_number_of_elements_is_screened_and_proposed():
    from tools.formula import parse_formula
    from tools.proposer import propose_offline
    from tools.screen import screen

    for request, count in [("a quaternary oxynitride", 4), ("a novel quinary oxide", 5), ("a binary nitride", 2)]:
        spec = parse_request(request)
        screened = screen(propose_offline(spec, 10, seed=0), spec)
        assert len(screened) == 10 and all(s.passed for s in screened), [(s.formula, s.reason) for s in screened]
        assert {len(parse_formula(s.formula).reduced_amounts) for s in screened} == {count}
    ternary = parse_request("a ternary oxide")
    assert screen_one_reason("MgO", ternary) == "has 2 elements, not 3"
    assert spec_conflicts(SearchSpec(required_elements=["Li", "Fe", "P"], n_elements=2)) == [
        "3 required elements do not fit a compound of 2 elements"]


def screen_one_reason(formula: str, spec) -> str | None:
    from tools.screen import screen_one

    return screen_one(formula, spec).reason


def test_words_not_understood_are_listed():
    """The user can tell what the reader did not act on: the words are in the spec and its summary."""
    spec = parse_request("I am looking for a novel spinel oxide containing Mn for a museum display, ideally air-stable")
    assert spec.ignored_words == ["museum", "display", "ideally", "air-stable"]  # air stability is no hull cut
    assert spec.summary().endswith("not understood: museum, display, ideally, air-stable")
    assert spec.max_e_above_hull is None
    clean = parse_request("Suggest five unreported thiospinels with Cr, or a ternary oxynitride without rare earths")
    assert clean.ignored_words == []
    many = parse_request("a spinel " + " ".join(f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(100)))
    assert len(many.ignored_words) == 20  # bounded


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("a novel oxide for battery cathodes", {"application": "battery cathode", "required_elements": ["Li"],
                                                "required_any": [["Co", "Cr", "Cu", "Fe", "Mn", "Mo", "Nb", "Ni", "Ti", "V"]]}),
        ("a cobalt-free Na-ion cathode material", {"required_elements": ["Na"], "excluded_elements": ["Co"],
                                                   "required_any": [["Cr", "Cu", "Fe", "Mn", "Mo", "Nb", "Ni", "Ti", "V"]]}),
        ("a lithium ionic conductor", {"application": "solid electrolyte", "electronic": None, "band_gap": 4.0,
                                       "required_elements": ["Li"]}),  # an ionic conductor is not a metal
        ("a lead-free halide perovskite for solar absorbers", {"application": "solar absorber", "band_gap": 1.4,
                                                               "band_gap_tolerance": 0.4, "excluded_elements": ["Pb"]}),
        ("a solar absorber with a band gap near 1.1 eV", {"band_gap": 1.1}),  # the request's own number wins
        ("a transparent conducting oxide", {"application": "transparent conductor", "anion_class": "oxide", "electronic": None}),
        ("a permanent magnet", {"electronic": "metal", "required_any": [["Co", "Fe", "Mn", "Ni"]], "ignored_words": []}),
    ],
)
def test_applications_become_constraints(request_text, expected):
    spec = parse_request(request_text)
    for field, value in expected.items():
        assert getattr(spec, field) == value, (request_text, field, getattr(spec, field))
    assert f"for {spec.application}" in spec.summary()


def test_application_proposals_meet_the_constraints():
    from tools.proposer import propose_offline
    from tools.screen import screen
    from tools.vocabulary import vocabulary

    for application in vocabulary().applications:  # every application's own name reads as that application
        assert parse_request(f"a {application.name}").application == application.name
    for request in ("a novel oxide for battery cathodes", "a permanent magnet without rare earths"):
        spec = parse_request(request)
        screened = screen(propose_offline(spec, 10, seed=0), spec)
        # the screen reads redox over every charge assignment, as the proposer does (LiVPtO4: V3+ Pt4+)
        assert len(screened) == 10 and all(s.passed for s in screened), [(s.formula, s.reason) for s in screened]
    assert screen_one_reason("LiAlO2", parse_request("a cathode oxide")).startswith("needs one of Co, Cr, Cu")


def test_a_cathode_needs_a_metal_it_can_oxidise():
    """Charging a cathode oxidises its transition metal: Mn3+, Fe2+, Co3+ and Ni3+ qualify; Ti4+, Nb5+ and
    Li2MnO3's Mn4+ do not (their highest working state), and the proposer does not offer them."""
    from tools.proposer import propose_offline
    from tools.screen import screen, screen_one

    spec = parse_request("a cathode oxide")
    verdicts = {f: screen_one(f, spec).reason for f in ("LiMn2O4", "LiFePO4", "LiCoO2", "LiNiO2", "LiTiGaO4", "LiNbO3", "Li2MnO3")}
    assert [f for f, reason in verdicts.items() if reason is None] == ["LiMn2O4", "LiFePO4", "LiCoO2", "LiNiO2"]
    assert verdicts["Li2MnO3"].startswith("Mn4+: nothing to oxidise on charging")
    offered = screen(propose_offline(parse_request("a novel oxide for battery cathodes"), 20, seed=0), spec)
    assert sum(s.passed for s in offered) >= 18
    assert screen_one("LiTiGaO4", parse_request("a titanate oxide")).passed  # no application: no redox rule


def test_an_unsearchable_request_says_which_words_were_not_understood():
    with pytest.raises(RequestNotUnderstood, match=r"in 'a thing for museums' \(not understood: museums\)\. .*for battery cathodes"):
        parse_request("a thing for museums")


# ---------------------------------------------------------------------------------------------- stability, symmetry, types


def test_every_stability_wording_reads_as_its_cut():
    """The vocabulary's examples of each cut read as that cut, in any sentence position."""
    from tools.vocabulary import vocabulary

    cuts = [w for w in vocabulary().stability_wordings if w.kind == "cut"]
    assert {w.name: w.cut for w in cuts} == {"stable": 0.05, "metastable": 0.1, "synthesizable": 0.1}
    for wording in cuts:
        for example in wording.examples:
            for text in (f"a spinel oxide, {example}", f"{example} spinel oxides with Mn"):
                spec = parse_request(text)
                assert spec.max_e_above_hull == wording.cut, (text, spec.max_e_above_hull)
                assert spec.ignored_words == [], (text, spec.ignored_words)


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("a spinel oxide", None),  # nothing said: the search's own limit
        ("five diverse low-energy garnets", None),  # low energy is the ranking, not a cut
        ("a fluoride within 50 meV/atom of the hull", 0.05),
        ("a nitride with E_hull < 0.08 eV/atom", 0.08),
        ("an oxide at most 20 meV per atom above the convex hull", 0.02),
        ("a garnet within 40 meV of the MP hull", 0.04),  # 'of the hull' without 'per atom'
        ("a stable nitride within 20 meV/atom of the hull", 0.02),  # the number wins
        ("a stable or metastable nitride", 0.1),  # several wordings: the loosest
        ("a synthesizable, thermodynamically stable sulfide", 0.1),
        ("a spinel oxide with band gap near 2 eV, on the hull", 0.05),
        ("an air-stable perovskite halide", None),
        ("a sulfide stable in water", None),
        ("a thermally stable phosphor host oxide", None),
        ("a nitride with chemical stability", None),
        ("an olivine phosphate, not necessarily stable", None),
        ("a metastable oxide, stable in air", 0.1),
        ("a metastable oxide, not thermodynamically stable", 0.1),
        ("an oxide that is not stable", None),
        ("Ehull below 50 meV for a spinel oxide", 0.05),
        ("a nitride with a decomposition energy under 30 meV/atom", 0.03),
        ("a garnet with formation energy below -1 eV/atom and on the hull", 0.05),  # E_f is no hull distance
        ("a spinel on the hull, with a formation energy below 1.5 eV/atom", 0.05),
    ],
)
def test_stability_cut(text, cut):
    assert parse_request(text).max_e_above_hull == cut


def test_stability_of_another_kind_is_listed_not_understood():
    spec = parse_request("an air-stable nitride with Ti, stable up to 1200 K")
    assert spec.max_e_above_hull is None
    assert spec.ignored_words == ["air-stable", "stable up to 1200 k"]
    assert spec.required_elements == ["Ti"]  # the K of '1200 K' is no potassium
    assert "within" not in spec.summary() and spec.summary().endswith("not understood: air-stable, stable up to 1200 k")


def test_energies_per_atom_are_no_band_gaps():
    spec = parse_request("a spinel oxide with a band gap and E_hull below 0.05 eV/atom")
    assert spec.band_gap is None and spec.max_e_above_hull == 0.05
    spec = parse_request("a garnet with band gap near 3 eV within 30 meV of the convex hull")
    assert spec.band_gap == 3.0 and spec.max_e_above_hull == 0.03
    assert parse_request("a perovskite with band gap near 1.5 eV").max_e_above_hull is None  # '1.5 eV' alone is no cut


def test_a_cut_beyond_the_search_limit_is_not_understood():
    with pytest.raises(RequestNotUnderstood, match="max e above hull"):
        parse_request("a spinel oxide within 2 eV/atom of the hull")
    with pytest.raises(ValidationError):
        SearchSpec(max_e_above_hull=-0.1)


@pytest.mark.parametrize(
    ("text", "system"),
    [
        ("a cubic perovskite", "cubic"),
        ("a tetragonal spinel oxide", "tetragonal"),
        ("a tetragonally distorted spinel oxide", "tetragonal"),
        ("an orthorhombic perovskite", "orthorhombic"),
        ("a hexagonal ferrite", "hexagonal"),
        ("a trigonal selenide", "trigonal"),
        ("a rhombohedral delafossite", "trigonal"),
        ("a monoclinic vanadate", "monoclinic"),
        ("a triclinic silicate", "triclinic"),
        ("a non-cubic perovskite", None),
        ("a cubic or tetragonal perovskite", None),
        ("a perovskite that is cubic, not tetragonal", "cubic"),
    ],
)
def test_crystal_systems(text, system):
    spec = parse_request(text)
    assert spec.crystal_system == system
    if "perovskite" in text:
        assert spec.family == "perovskite"  # 'cubic perovskite' keeps the family


def test_crystal_system_words_not_acted_on_are_listed():
    assert parse_request("a cubic or tetragonal perovskite").ignored_words == ["cubic", "tetragonal"]
    assert parse_request("a non-cubic perovskite").ignored_words == ["non-cubic"]
    assert parse_request("a cubic perovskite").summary() == "perovskite; cubic"


def test_crystal_systems_match_pymatgen():
    from pymatgen.symmetry.groups import SpaceGroup

    from tools.spec import CRYSTAL_SYSTEMS, crystal_system_of

    for numbers in CRYSTAL_SYSTEMS.values():  # each system's first and last group (pymatgen's lookups are slow)
        for number in (numbers[0], numbers[-1]):
            assert crystal_system_of(number) == SpaceGroup.from_int_number(number).crystal_system, number
    assert [n for numbers in CRYSTAL_SYSTEMS.values() for n in numbers] == list(range(1, 231))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a cubic perovskite in space group Pnma", "space group 62 is orthorhombic, not cubic"),
        ("a rhombohedral wurtzite in P6_3mc", "space group 186 is hexagonal, not trigonal"),
        ("a tetragonal garnet in space group 230", "space group 230 is cubic, not tetragonal"),
        ("a kesterite spinel", "ratio 2:1:1:4 is not a spinel ratio"),
    ],
)
def test_symmetry_and_type_conflicts(text, fragment):
    with pytest.raises(SpecConflict, match=fragment):
        parse_request(text)


def test_hexagonal_takes_the_trigonal_groups():
    """The hexagonal crystal family: 'a hexagonal delafossite in R-3m' is no conflict."""
    spec = parse_request("a hexagonal delafossite in R-3m")
    assert (spec.crystal_system, spec.spacegroup) == ("hexagonal", 166)


@pytest.mark.parametrize(
    ("text", "layered"),
    [("a layered sulfide", True), ("2D selenides", True), ("a two-dimensional telluride", True),
     ("a van der Waals chalcogenide", True), ("a vdW magnet with Cr and I", True), ("a quasi-2D halide perovskite", True),
     ("a layered perovskite", True), ("a non-layered telluride", False), ("a sulfide", False)],
)
def test_layered(text, layered):
    spec = parse_request(text)
    assert spec.layered is layered
    assert ("layered" in spec.summary().split("; ")) is layered


def test_layered_perovskite_stays_ruddlesden_popper():
    spec = parse_request("a layered perovskite with Sr")
    assert spec.family == "ruddlesden_popper" and spec.layered and spec.structure_type is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a kesterite", {"structure_type": "kesterite", "stoichiometry": "2:1:1:4", "anion_class": "chalcogenide",
                         "required_elements": []}),
        ("a kesterite-like selenide", {"stoichiometry": "2:1:1:4", "anion_class": "selenide"}),  # the request's anion wins
        ("a Cu2ZnSnS4-type compound with Ag", {"structure_type": "kesterite", "required_elements": ["Ag"]}),  # no Cu, Zn, Sn, S
        ("stannites", {"structure_type": "kesterite", "stoichiometry": "2:1:1:4"}),
        ("a chalcopyrite", {"stoichiometry": "1:1:2", "anion_class": "chalcogenide"}),
        ("a layered rock salt oxide", {"structure_type": "layered rock salt", "stoichiometry": "1:1:2", "family": None,
                                       "layered": True}),
        ("an alpha-NaFeO2 type oxide", {"structure_type": "layered rock salt", "required_elements": []}),
        ("an anti-perovskite", {"structure_type": "antiperovskite", "stoichiometry": "3:1:1", "family": None}),
        ("an antiperovskite nitride", {"stoichiometry": "3:1:1", "anion_class": "nitride"}),
        ("a NASICON", {"structure_type": "NASICON", "stoichiometry": "1:2:3:12", "anion_class": "oxide",
                       "required_any": [["As", "Mo", "P", "S", "Si", "W"]], "application": None}),
        ("a NASICON without phosphorus", {"required_any": [["As", "Mo", "S", "Si", "W"]], "excluded_elements": ["P"]}),
        ("a NASICON with the ratio 3:2:3:12", {"stoichiometry": "3:2:3:12"}),  # the request's own ratio wins
        ("five chalcopyrites", {"n_results": 5}),
        # a formula written as a type: its ratio when no family is named, and none of its elements
        ("a CsPbI3-like halide without lead", {"stoichiometry": "1:1:3", "excluded_elements": ["Pb"], "required_elements": []}),
        ("compounds isostructural with CuInSe2", {"stoichiometry": "1:1:2", "required_elements": []}),
        ("a LiFePO4-like olivine with Mn", {"family": "olivine", "stoichiometry": None, "required_elements": ["Mn"]}),
        # family names with -like, -type, -structured
        ("an olivine-like silicate", {"family": "olivine", "structure_type": None}),
        ("a spinel-type sulfide", {"family": "spinel"}),
        ("a garnet-structured oxide", {"family": "garnet"}),
        ("a perovskite-structured fluoride", {"family": "perovskite"}),
    ],
)
def test_structure_types(text, expected):
    spec = parse_request(text)
    for field, value in expected.items():
        assert getattr(spec, field) == value, (text, field, getattr(spec, field))
    assert spec.ignored_words == [], (text, spec.ignored_words)


def test_structure_types_in_the_summary_and_the_spec():
    assert parse_request("a NASICON with Li").summary() == "ratio 1:2:3:12 (NASICON); oxide; with Li; with one of As, Mo, P, S, Si, W"
    with pytest.raises(ValidationError, match="unknown structure type"):
        SearchSpec(structure_type="sandwich")
    with pytest.raises(ValidationError):
        SearchSpec(crystal_system="pentagonal")


def test_zintl_is_listed_as_not_understood():
    spec = parse_request("a Zintl phase with Ca and Sb")
    assert spec.ignored_words == ["zintl"] and spec.required_elements == ["Ca", "Sb"] and spec.stoichiometry is None


def test_stability_symmetry_and_type_combined():
    spec = parse_request("five novel, thermodynamically stable, tetragonal kesterite selenides with Ag, not air-stable")
    assert (spec.n_results, spec.max_e_above_hull, spec.crystal_system, spec.structure_type, spec.stoichiometry,
            spec.anion_class, spec.required_elements, spec.novel_against) == (
        5, 0.05, "tetragonal", "kesterite", "2:1:1:4", "selenide", ["Ag"], ["MP", "ICSD"])
    assert spec.summary() == ("ratio 2:1:1:4 (kesterite); selenide; with Ag; not in MP/ICSD; tetragonal; "
                              "within 0.05 eV/atom of the hull; not understood: air-stable")


def test_new_readers_stay_linear():
    """Long hostile requests for the new patterns are read (or refused) quickly."""
    import time

    from tools.limits import MAX_REQUEST_CHARS

    for unit in ("stable ", "0.1 eV ", "50 meV/atom ", "AbCd", "LiCoO2LiCoO2 ", "non-cubic ", "cubic ", "kesterite ",
                 "stable in ", "hull 1 eV/atom "):
        text = "a spinel oxide " + unit * ((MAX_REQUEST_CHARS - 40) // len(unit)) + "-type"
        started = time.perf_counter()
        try:
            parse_request(text)
        except (RequestNotUnderstood, SpecConflict):
            pass
        assert time.perf_counter() - started < 2.0, unit


def test_good_candidates_take_the_requests_stability_cut():
    """A spec's cut keeps only candidates at or below it (an unknown hull is not good then); the others stay
    in the ranked results, after the good ones."""
    from agent.graph import MAX_E_ABOVE_HULL, good_candidates, rank_key

    base = {"plausible": True, "checks": {"cif_valid": True, "structurally_valid": True, "charge_balanced": True},
            "formation_energy_per_atom": -2.0, "density": 5.0}
    on, near, far, unknown = ({**base, "e_above_hull": e} for e in (0.0, 0.08, 0.5, None))
    candidates = [far, unknown, near, on]
    assert good_candidates(candidates) == candidates  # no cut: the search's own limit (1 eV/atom)
    assert good_candidates(candidates, 0.05) == [on]
    assert good_candidates(candidates, 0.1) == [near, on]
    assert good_candidates([{**base, "e_above_hull": 1.5}], 2.0) == []  # never beyond the search's own limit
    assert MAX_E_ABOVE_HULL == 1.0
    spec = parse_request("a stable spinel oxide")
    ranked = sorted(candidates, key=rank_key(spec))
    assert ranked[0] is on and len(ranked) == 4  # the others are kept, ranked after the good one
