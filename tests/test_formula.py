import pytest

from tools.formula import MAX_FORMULA_LENGTH, FormulaError, formula_key, integer_amounts, is_valid_formula, parse_formula


@pytest.mark.parametrize(
    ("text", "reduced", "amounts"),
    [
        ("SrTiO3", "SrTiO3", {"Sr": 1, "Ti": 1, "O": 3}),
        ("Sr4Ti4O12", "SrTiO3", {"Sr": 4, "Ti": 4, "O": 12}),
        ("Ca(OH)2", "Ca(HO)2", {"Ca": 1, "O": 2, "H": 2}),
        ("Ba2[FeMoO6]", "Ba2FeMoO6", {"Ba": 2, "Fe": 1, "Mo": 1, "O": 6}),
        ("Mg3(Al(SiO4))2", "Mg3Al2(SiO4)2", {"Mg": 3, "Al": 2, "Si": 2, "O": 8}),
        ("Fe₂O₃", "Fe2O3", {"Fe": 2, "O": 3}),
        (" Fe2 O3 ", "Fe2O3", {"Fe": 2, "O": 3}),
        ("Li0.5CoO2", "Li(CoO2)2", {"Li": 0.5, "Co": 1, "O": 2}),
    ],
)
def test_parses_and_reduces(text, reduced, amounts):
    parsed = parse_formula(text)
    assert parsed.amounts == pytest.approx(amounts)
    assert parsed.reduced_formula == reduced


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Xx2O", "unknown element 'Xx'"),
        ("H2O)(", "unbalanced parentheses"),
        ("Sr(TiO3", "missing ')'"),
        ("", "empty formula"),
        ("   ", "empty formula"),
        ("Fe-1", "unexpected character '-' at position 2"),
        ("Fe0O", "counts must be positive"),
        ("2Fe", "a count must follow"),
        ("fe2o3", "unexpected character 'f'"),
        ("()", "empty group"),
        ("Fe1000000", "too many atoms"),
        ("HHeLiBeBCNOFNeNaMg", "too many elements"),
        ("Na" * 5000, "formula too long (10000 characters"),
    ],
)
def test_rejects_with_clear_message(text, message):
    with pytest.raises(FormulaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_formula(text)
    assert not is_valid_formula(text)


def test_non_text_is_rejected():
    with pytest.raises(FormulaError, match="must be text"):
        parse_formula(["SrTiO3"])


def test_length_limit_is_inclusive():
    text = "O" * MAX_FORMULA_LENGTH
    assert parse_formula(text).amounts == {"O": float(MAX_FORMULA_LENGTH)}


def test_key_identifies_reduced_compositions():
    assert parse_formula("Sr4Ti4O12").key == parse_formula("SrTiO3").key == "O3Sr1Ti1"
    assert parse_formula("A" "l2MgO4").key == parse_formula("MgAl2O4").key
    assert parse_formula("Fe2O3").key != parse_formula("Fe3O4").key
    assert formula_key({"O": 2}) == "O1"


def test_integer_amounts_from_fractions():
    assert integer_amounts({"Li": 0.5, "Co": 1, "O": 2}) == {"Li": 1, "Co": 2, "O": 4}
    assert integer_amounts({"Fe": 0.333333, "O": 0.5}) == {"Fe": 2, "O": 3}


def test_elements_follow_reduced_formula_order():
    assert parse_formula("O3TiSr").elements == ["Sr", "Ti", "O"]
