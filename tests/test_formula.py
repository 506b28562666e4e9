import sys

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
        # Amounts no whole-number ratio can keep (these divided by zero or silently lost H).
        ("H0.0001", "the amount of H (0.0001) is below the smallest supported amount 0.001"),
        ("H0.0001O", "the amount of H (0.0001) is below the smallest supported amount 0.001"),
        ("((((H0.1)0.1)0.1)0.1)0.1", "the amount of H (1e-05) is below"),
        ("Li0.001CoO2", "reduce to a whole-number formula unit of 3001 atoms (at most 1000)"),
        # Only ASCII and subscript digits are counts; exponents and huge counts are refused.
        ("Fe٢O٣", "unexpected character '٢' at position 2"),
        ("Fe２O", "unexpected character '２' at position 2"),
        ("H1e5", "unexpected character 'e' at position 2"),
        ("H99999999999999999999", "too many atoms (1e"),
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


def test_smallest_amount_is_accepted():
    assert parse_formula("H0.001").reduced_amounts == {"H": 1}
    assert parse_formula("(H0.1)0.01").reduced_amounts == {"H": 1}
    assert parse_formula("H0.001He0.999").reduced_amounts == {"H": 1, "He": 999}


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def test_nesting_at_the_length_limit_needs_no_recursion():
    """The parser keeps open groups on a stack: 49 nested groups parse within 30 frames of recursion."""
    depth = MAX_FORMULA_LENGTH // 2 - 1
    text = "(" * depth + "H" + ")" * depth
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 30)  # below the nesting: a parser recursing per group would fail
    try:
        parsed = parse_formula(text)
    finally:
        sys.setrecursionlimit(limit)
    assert parsed.reduced_amounts == {"H": 1}


@pytest.mark.parametrize(
    ("amounts", "message"),
    [
        ({}, "at least one element"),
        ({"H": 0.0001, "O": 1}, "too small to express as a whole-number ratio"),
        ({"H": float("nan")}, "must be a finite number"),
        ({"H": float("inf"), "O": 1}, "must be a finite number"),
        ({"H": 0}, "must be positive"),
        ({"H": -1.5, "O": 2}, "must be positive"),
    ],
)
def test_integer_amounts_refuses_what_it_cannot_represent(amounts, message):
    with pytest.raises(FormulaError, match=message):
        integer_amounts(amounts)


def test_integer_amounts_keeps_small_amounts_positive():
    assert integer_amounts({"H": 0.0006, "O": 1}) == {"H": 1, "O": 1000}
