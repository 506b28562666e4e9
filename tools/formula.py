"""Chemical formula parsing and normalisation (GenMS's regex validity check).

A formula is element symbols with optional positive counts, possibly grouped by parentheses
or brackets with a multiplier (``Ca(OH)2``, ``Ba2[FeMoO6]``). Parsing is strict and every
failure raises :class:`FormulaError` with a message that says what is wrong and where, so
that callers can report it per input without losing the rest of a batch.

Formulae come from users, files and models, so every reader here is bounded by
:mod:`tools.limits`: the text's length, its elements and atoms, the smallest amount of an
element, and the size of the whole-number formula unit the amounts reduce to. The parser
walks the tokens once with an explicit stack (no recursion), so its work is linear in the
text whatever the nesting.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache, reduce

from pymatgen.core import Composition, Element

from tools.limits import MAX_FORMULA_ATOMS, MAX_FORMULA_ELEMENTS, MAX_FORMULA_LENGTH, MIN_FORMULA_COUNT

# Names other modules import (kept as aliases of the limits).
MAX_ATOMS = MAX_FORMULA_ATOMS
MAX_ELEMENTS = MAX_FORMULA_ELEMENTS
# Whole-number ratios approximate each amount by the nearest fraction with at most this
# denominator (a float 0.333333 reads as 1/3): the resolution is the smallest amount allowed.
_MAX_DENOMINATOR = round(1 / MIN_FORMULA_COUNT)
# The limit as an exact decimal (the float 0.001 is a little above 1/1000, which is allowed).
_MIN_COUNT = Fraction(str(MIN_FORMULA_COUNT))
# Formulae as people type them: subscript digits are normalised first. Other digits are ASCII
# only (``\d`` would also take Arabic-Indic or full-width digits).
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_TOKEN = re.compile(r"(?P<element>[A-Z][a-z]{0,2})|(?P<number>[0-9]+(?:\.[0-9]+)?)|(?P<open>[(\[])|(?P<close>[)\]])")
_CLOSING = {"(": ")", "[": "]"}


class FormulaError(ValueError):
    """A formula that cannot be read; the message is meant for the user."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise FormulaError(f"unexpected character {text[position]!r} at position {position} in {text!r}")
        tokens.append((match.lastgroup, match.group(), position))
        position = match.end()
    return tokens


def _parse_amounts(tokens: list[tuple[str, str, int]], text: str) -> dict[str, Fraction]:
    """Amounts per element over ``element count? | (group) count?``, groups multiplied out.

    An explicit stack of open groups (their amounts so far, the bracket that closes them and
    where they opened) replaces recursive descent, so deep nesting cannot exhaust Python's
    recursion limit.
    """
    stack: list[tuple[dict[str, Fraction], str | None, int]] = [({}, None, 0)]
    index = 0
    while index < len(tokens):
        kind, value, position = tokens[index]
        index += 1
        if kind == "open":
            stack.append(({}, _CLOSING[value], position))
            continue
        if kind == "number":
            raise FormulaError(f"a count must follow an element or a group, not stand alone, at position {position} in {text!r}")
        if kind == "element":
            if not Element.is_valid_symbol(value):
                raise FormulaError(f"unknown element {value!r} in {text!r}")
            part = {value: Fraction(1)}
        else:
            part, closing, opened = stack[-1]
            if value != closing:
                raise FormulaError(f"unbalanced parentheses in {text!r} (unexpected {value!r} at position {position})")
            if not part:
                raise FormulaError(f"empty group at position {opened} in {text!r}")
            stack.pop()
        multiplier = Fraction(1)
        if index < len(tokens) and tokens[index][0] == "number":
            multiplier = Fraction(tokens[index][1])
            if multiplier <= 0:
                raise FormulaError(f"counts must be positive, got {tokens[index][1]!r} in {text!r}")
            index += 1
        amounts = stack[-1][0]
        for symbol, amount in part.items():
            amounts[symbol] = amounts.get(symbol, Fraction(0)) + amount * multiplier
    if len(stack) > 1:
        raise FormulaError(f"unbalanced parentheses in {text!r} (missing {stack[-1][1]!r})")
    return stack[0][0]


def integer_amounts(amounts: dict[str, float | Fraction]) -> dict[str, int]:
    """Smallest whole-number amounts with the same ratios (``Li0.5CoO2`` -> Li1 Co2 O4).

    Each amount is approximated by the nearest fraction with a denominator of at most
    1/``MIN_FORMULA_COUNT`` (so float noise such as 0.333333 reads as 1/3), then all are
    scaled by the common denominator and divided by their greatest common divisor. Every
    result is a positive integer: an empty composition, an amount that is not a positive
    finite number, or one too small to survive the approximation (it would round to zero)
    raises :class:`FormulaError` instead.
    """
    if not amounts:
        raise FormulaError("a composition needs at least one element")
    fractions = {}
    for element, amount in amounts.items():
        try:
            exact = amount if isinstance(amount, (int, Fraction)) else Fraction(float(amount))
        except (TypeError, ValueError, OverflowError):  # NaN, infinity, not a number
            raise FormulaError(f"the amount of {element} must be a finite number, got {amount!r}") from None
        if exact <= 0:
            raise FormulaError(f"the amount of {element} must be positive, got {amount!r}")
        fraction = Fraction(exact).limit_denominator(_MAX_DENOMINATOR)
        if fraction == 0:
            raise FormulaError(
                f"the amount of {element} ({float(exact):g}) is too small to express as a whole-number ratio "
                f"(the finest resolution is {MIN_FORMULA_COUNT:g})"
            )
        fractions[element] = fraction
    denominator = reduce(math.lcm, (f.denominator for f in fractions.values()), 1)
    whole = {el: int(f * denominator) for el, f in fractions.items()}
    divisor = reduce(math.gcd, whole.values())
    return {el: n // divisor for el, n in whole.items()}


def formula_key(amounts: dict[str, float | Fraction | int]) -> str:
    """Canonical key of a reduced composition: symbols sorted alphabetically, every count written.

    ``Sr4Ti4O12`` and ``SrTiO3`` share the key ``O3Sr1Ti1``; the key is independent of
    pymatgen's display conventions, so indices built from it are stable.
    """
    reduced = integer_amounts(amounts)
    return "".join(f"{el}{reduced[el]}" for el in sorted(reduced))


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed formula. ``amounts`` are atoms per formula as written (``Sr4Ti4O12``: Sr 4)."""

    text: str
    amounts: dict[str, float]

    @cached_property
    def composition(self) -> Composition:
        """The formula as a pymatgen ``Composition``."""
        return Composition(self.amounts)

    @cached_property
    def reduced_amounts(self) -> dict[str, int]:
        """Smallest whole-number formula unit, e.g. ``{'Sr': 1, 'Ti': 1, 'O': 3}``."""
        return integer_amounts(self.amounts)

    @property
    def reduced_formula(self) -> str:
        """pymatgen's reduced formula (``SrTiO3``), the form users and MP see."""
        return Composition(self.reduced_amounts).reduced_formula

    @property
    def plain_formula(self) -> str:
        """Reduced formula without pymatgen's grouping: ``MnIr2O4`` rather than ``Mn(IrO2)2``."""
        amounts = self.reduced_amounts
        return "".join(f"{el}{amounts[el] if amounts[el] > 1 else ''}" for el in self.elements)

    @property
    def key(self) -> str:
        """Canonical uniqueness key (see :func:`formula_key`)."""
        return formula_key(self.reduced_amounts)

    @property
    def elements(self) -> list[str]:
        """Element symbols, ordered as in the reduced formula (by electronegativity)."""
        return [el.symbol for el in sorted(self.composition.elements, key=lambda el: (el.X, el.symbol))]

    @property
    def n_atoms(self) -> float:
        """Atoms in the formula as written."""
        return sum(self.amounts.values())


def parse_formula(text: str) -> ParsedFormula:
    """Parse a chemical formula, raising :class:`FormulaError` with a clear message if invalid.

    Accepts element symbols with integer or decimal counts, nested ``()``/``[]`` groups,
    whitespace between tokens and Unicode subscript digits. Refuses text over
    ``MAX_FORMULA_LENGTH`` characters, more than ``MAX_FORMULA_ELEMENTS`` elements or
    ``MAX_FORMULA_ATOMS`` atoms (as written, and in the whole-number formula unit), and an
    element amount below ``MIN_FORMULA_COUNT`` (``H0.0001``), which no ratio could keep.
    """
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be text, got {type(text).__name__}")
    if len(text) > MAX_FORMULA_LENGTH:  # before the cache, so over-long text is never kept as a key
        raise FormulaError(f"formula too long ({len(text)} characters; at most {MAX_FORMULA_LENGTH})")
    return _parse_text(text)


@lru_cache(maxsize=65536)
def _parse_text(text: str) -> ParsedFormula:
    cleaned = re.sub(r"\s+", "", text.translate(_SUBSCRIPTS))
    if not cleaned:
        raise FormulaError("empty formula")
    amounts = _parse_amounts(_tokens(cleaned), cleaned)
    if len(amounts) > MAX_FORMULA_ELEMENTS:
        raise FormulaError(f"too many elements ({len(amounts)}; at most {MAX_FORMULA_ELEMENTS}) in {text!r}")
    total = sum(amounts.values())
    if total > MAX_FORMULA_ATOMS:
        raise FormulaError(f"too many atoms ({float(total):g}; at most {MAX_FORMULA_ATOMS}) in {text!r}")
    for element, amount in amounts.items():
        if amount < _MIN_COUNT:
            raise FormulaError(
                f"the amount of {element} ({float(amount):g}) is below the smallest supported amount "
                f"{MIN_FORMULA_COUNT:g} in {text!r}"
            )
    parsed = ParsedFormula(text=cleaned, amounts={el: float(a) for el, a in amounts.items()})
    unit = sum(parsed.reduced_amounts.values())
    if unit > MAX_FORMULA_ATOMS:
        raise FormulaError(
            f"the counts in {text!r} reduce to a whole-number formula unit of {unit} atoms (at most "
            f"{MAX_FORMULA_ATOMS}); write them with fewer decimal places"
        )
    return parsed


def is_valid_formula(text: str) -> bool:
    """GenMS's regex check: does the text read as a chemical formula of known elements?"""
    try:
        parse_formula(text)
    except FormulaError:
        return False
    return True
