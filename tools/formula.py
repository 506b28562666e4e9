"""Chemical formula parsing and normalisation (GenMS's regex validity check).

A formula is element symbols with optional positive counts, possibly grouped by parentheses
or brackets with a multiplier (``Ca(OH)2``, ``Ba2[FeMoO6]``). Parsing is strict and every
failure raises :class:`FormulaError` with a message that says what is wrong and where, so
that callers can report it per input without losing the rest of a batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache, reduce

from pymatgen.core import Composition, Element

MAX_FORMULA_LENGTH = 100
MAX_ATOMS = 1000
MAX_ELEMENTS = 10
# Formulae as people type them: subscript digits and the middle dot are normalised first.
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_TOKEN = re.compile(r"(?P<element>[A-Z][a-z]{0,2})|(?P<number>\d+(?:\.\d+)?)|(?P<open>[(\[])|(?P<close>[)\]])")
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


def _parse_group(tokens: list, index: int, text: str, closing: str | None) -> tuple[dict[str, Fraction], int]:
    """Recursive descent over ``element count? | (group) count?``; returns amounts and next index."""
    amounts: dict[str, Fraction] = {}
    while index < len(tokens):
        kind, value, position = tokens[index]
        if kind == "close":
            if value != closing:
                raise FormulaError(f"unbalanced parentheses in {text!r} (unexpected {value!r} at position {position})")
            return amounts, index + 1
        if kind == "number":
            raise FormulaError(f"a count must follow an element or a group, not stand alone, at position {position} in {text!r}")
        if kind == "element":
            if not Element.is_valid_symbol(value):
                raise FormulaError(f"unknown element {value!r} in {text!r}")
            part, index = {value: Fraction(1)}, index + 1
        else:
            part, index = _parse_group(tokens, index + 1, text, _CLOSING[value])
            if not part:
                raise FormulaError(f"empty group at position {position} in {text!r}")
        multiplier = Fraction(1)
        if index < len(tokens) and tokens[index][0] == "number":
            multiplier = Fraction(tokens[index][1])
            if multiplier <= 0:
                raise FormulaError(f"counts must be positive, got {tokens[index][1]!r} in {text!r}")
            index += 1
        for symbol, amount in part.items():
            amounts[symbol] = amounts.get(symbol, Fraction(0)) + amount * multiplier
    if closing is not None:
        raise FormulaError(f"unbalanced parentheses in {text!r} (missing {closing!r})")
    return amounts, index


def integer_amounts(amounts: dict[str, float | Fraction]) -> dict[str, int]:
    """Smallest whole-number amounts with the same ratios (``Li0.5CoO2`` -> Li1 Co2 O4)."""
    fractions = {el: Fraction(a).limit_denominator(1000) for el, a in amounts.items()}
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
    whitespace between tokens and Unicode subscript digits.
    """
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be text, got {type(text).__name__}")
    return _parse_text(text)


@lru_cache(maxsize=65536)
def _parse_text(text: str) -> ParsedFormula:
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"formula too long ({len(text)} characters; at most {MAX_FORMULA_LENGTH})")
    cleaned = re.sub(r"\s+", "", text.translate(_SUBSCRIPTS))
    if not cleaned:
        raise FormulaError("empty formula")
    amounts, _ = _parse_group(_tokens(cleaned), 0, cleaned, None)
    if len(amounts) > MAX_ELEMENTS:
        raise FormulaError(f"too many elements ({len(amounts)}; at most {MAX_ELEMENTS}) in {text!r}")
    total = sum(amounts.values())
    if total > MAX_ATOMS:
        raise FormulaError(f"too many atoms ({float(total):g}; at most {MAX_ATOMS}) in {text!r}")
    return ParsedFormula(text=cleaned, amounts={el: float(a) for el, a in amounts.items()})


def is_valid_formula(text: str) -> bool:
    """GenMS's regex check: does the text read as a chemical formula of known elements?"""
    try:
        parse_formula(text)
    except FormulaError:
        return False
    return True
