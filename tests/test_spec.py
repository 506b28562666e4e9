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
    spec = parse_request("I am looking for a novel spinel oxide containing Mn for a museum display, ideally stable")
    assert spec.ignored_words == ["museum", "display", "ideally", "stable"]
    assert spec.summary().endswith("not understood: museum, display, ideally, stable")
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
    for request, at_least in (("a novel oxide for battery cathodes", 9), ("a permanent magnet without rare earths", 10)):
        spec = parse_request(request)
        screened = screen(propose_offline(spec, 10, seed=0), spec)
        # the screen judges redox on SMACT's one charge assignment, which may differ from the proposer's (LiVPtO4)
        assert len(screened) == 10 and sum(s.passed for s in screened) >= at_least, [(s.formula, s.reason) for s in screened]
        assert all(s.passed or "nothing to oxidise" in s.reason for s in screened)
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
