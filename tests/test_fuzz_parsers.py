"""Property-based and adversarial tests of the text parsers (issue 39: no input can crash,
freeze or exhaust genms).

The formula parser, ``integer_amounts``, ``check_formula`` and the request reader face text
from users, files, MCP clients and models. Hypothesis feeds them arbitrary text and text built
from their own vocabulary; each may only answer or refuse with its own error. Inputs at the
largest accepted size that made the old request reader backtrack (seconds, or exponentially
long, per request) must now be read in well under 0.1 s.

Examples are derandomised and the database is off, so runs are reproducible and leave no
files behind; the whole module takes a few seconds.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Element

from tools.checks import check_formula
from tools.formula import FormulaError, ParsedFormula, integer_amounts, parse_formula
from tools.limits import MAX_FORMULA_ATOMS, MAX_FORMULA_LENGTH, MAX_REQUEST_CHARS
from tools.spec import RequestNotUnderstood, SearchSpec, SpecConflict, parse_request

FUZZ = settings(deadline=2000, max_examples=300, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW_FUZZ = settings(FUZZ, max_examples=100)  # examples that reach SMACT or hold long requests
# A parse that runs past this fails its example (the deadline alone would wait for it to end,
# and an exponential backtrack never does).
GUARD_SECONDS = 5.0

SYMBOLS = [element.symbol for element in Element]
# Element symbols, near-misses and every other kind of token the formula grammar knows.
FORMULA_PIECES = st.one_of(
    st.sampled_from(SYMBOLS),
    st.sampled_from(["Xx", "Q", "Abc", "fe", "e", "NaN", "Inf"]),
    st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,6})?", fullmatch=True),
    st.sampled_from(["(", ")", "[", "]", " ", "₂", "₀", ".", "0", "0.0001", "0.1", "0.001", "1e5", "-", "٣", "２"]),
)
FORMULA_TEXT = st.lists(FORMULA_PIECES, max_size=40).map("".join)
# Formulas SMACT can afford: few atoms per element (check_formula's own cost is not the subject here).
SMALL_FORMULA_TEXT = st.lists(
    st.one_of(st.sampled_from(SYMBOLS), st.sampled_from(["2", "3", "0.5", "0.0001", "(", ")", "1.5", "x"])), max_size=12
).map("".join)

REQUEST_WORDS = [
    "a", "the", "novel", "spinel", "perovskite", "double perovskite", "garnet", "oxide", "halide", "sulphide",
    "without", "no", "not containing", "excluding", "except", "free of", "avoiding", "but not", "minus", "-free",
    "with", "containing", "including", "but", "and", "or", ",", ".", ";", "-", "(", ")", ":", "1:2", "1:0", "2:1:4",
    "Co", "Fe", "Mn", "Li", "O", "In", "As", "cobalt", "lead", "rare earths", "alkali metals", "any anion",
    "band gap", "between", "near", "1.4", "20", "eV", "metallic", "semiconducting", "density", "6.5", "99",
    "g/cm3", "space group", "62", "999", "Pnma", "Xyz", "at most", "0", "atoms", "five", "10", "crystals",
    "not in the Materials Project", "not on ICSD", "Li-Mn-O", "by prototype substitution", "nano", "mono-layer",
    # Whole phrases whose numbers the spec cannot hold.
    "band gap 20 eV", "space group 999", "at most 0 atoms", "density 99 g/cm3", "atom ratio 1:0", "ratio 1:1:1:1:1:1:1:1:1:1:1",
]
REQUEST_TEXT = st.lists(st.sampled_from(REQUEST_WORDS), max_size=30).map(" ".join)
# A short piece repeated up to the request limit: the shape of input that makes regexes backtrack.
REPEATED_TEXT = st.builds(
    lambda prefix, unit, size: (prefix + unit * MAX_REQUEST_CHARS)[:size],
    st.sampled_from(["", "a spinel without Cu, ", "band gap ", "space group ", "density ", "one "]),
    st.one_of(st.sampled_from(REQUEST_WORDS).map(lambda w: w + " "), st.text(min_size=1, max_size=12)),
    st.integers(1, MAX_REQUEST_CHARS),
)


@contextmanager
def _time_limit(seconds: float):
    """Raise TimeoutError here after ``seconds`` (main thread, POSIX): a parser that backtracks
    exponentially then fails the test instead of hanging the suite (``re`` checks for signals
    while it matches)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise TimeoutError(f"still parsing after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _assert_formula_outcome(text: str) -> None:
    """``parse_formula`` gives a formula of positive whole-number reduced amounts within the limits, or FormulaError."""
    try:
        with _time_limit(GUARD_SECONDS):
            parsed = parse_formula(text)
    except FormulaError:
        return
    assert isinstance(parsed, ParsedFormula)
    reduced = parsed.reduced_amounts
    assert reduced and all(isinstance(n, int) and n >= 1 for n in reduced.values())
    assert sum(reduced.values()) <= MAX_FORMULA_ATOMS
    assert set(reduced) == set(parsed.amounts)


@FUZZ
@given(st.text(max_size=MAX_FORMULA_LENGTH + 20))
def test_formula_parser_on_arbitrary_text(text):
    _assert_formula_outcome(text)


@FUZZ
@given(FORMULA_TEXT)
def test_formula_parser_on_formula_like_text(text):
    _assert_formula_outcome(text)


@SLOW_FUZZ
@given(st.one_of(st.text(max_size=MAX_FORMULA_LENGTH + 20), SMALL_FORMULA_TEXT))
def test_check_formula_never_raises(text):
    with _time_limit(GUARD_SECONDS):
        report = check_formula(text)
    assert report["input"] == text
    assert report["valid"] is (report["error"] is None)


@FUZZ
@given(st.dictionaries(
    st.sampled_from(SYMBOLS[:20]),
    st.one_of(st.floats(), st.integers(-5, 10**30), st.fractions(max_denominator=10**6)),
    max_size=6,
))
def test_integer_amounts_never_gives_zero_or_divides_by_zero(amounts):
    """Positive whole numbers for every element, or FormulaError (empty, NaN, infinite, non-positive, too small)."""
    try:
        with _time_limit(GUARD_SECONDS):
            reduced = integer_amounts(amounts)
    except FormulaError:
        return
    assert set(reduced) == set(amounts)
    assert all(isinstance(n, int) and n >= 1 for n in reduced.values())


def _assert_request_outcome(text: str) -> None:
    """``parse_request`` gives a SearchSpec, or the reader's own refusal (not understood, or contradictory)."""
    try:
        with _time_limit(GUARD_SECONDS):
            spec = parse_request(text)
    except (RequestNotUnderstood, SpecConflict):
        return
    assert isinstance(spec, SearchSpec)


@SLOW_FUZZ
@given(st.text(max_size=MAX_REQUEST_CHARS))
def test_request_reader_on_arbitrary_text(text):
    _assert_request_outcome(text)


@FUZZ
@given(REQUEST_TEXT)
def test_request_reader_on_request_like_text(text):
    _assert_request_outcome(text)


@SLOW_FUZZ
@given(REPEATED_TEXT)
def test_request_reader_on_long_repetitive_text(text):
    _assert_request_outcome(text)


@FUZZ
@given(
    # Symbols that are also English words ('Co', 'In') count only inside a list; names always count.
    st.lists(st.sampled_from(["Ni", "Cu", "Zn", "Mn", "Fe", "cobalt", "nickel", "copper", "iron"]), min_size=1, max_size=6),
    st.sampled_from([", ", " and ", " or ", ", and ", " , ", ",", " ,and "]),
    st.sampled_from(["without", "no", "free of", "excluding", "avoiding", "but not"]),
)
def test_every_element_of_a_negated_list_is_excluded(names, joiner, negation):
    """'a spinel oxide <negation> X, Y and Z' excludes each of X, Y, Z and requires none."""
    spec = parse_request(f"a spinel oxide {negation} {joiner.join(names)}")
    symbols = {Element.from_name(n.capitalize()).symbol if len(n) > 2 else n for n in names}
    assert symbols <= set(spec.excluded_elements)
    assert not symbols & set(spec.required_elements)


def _at_limit(unit: str, prefix: str = "", suffix: str = "") -> str:
    """``prefix + unit * k + suffix`` cut to exactly MAX_REQUEST_CHARS characters."""
    body = MAX_REQUEST_CHARS - len(prefix) - len(suffix)
    return prefix + (unit * (body // len(unit) + 1))[:body] + suffix


ADVERSARIAL = {
    "issue 39 request": "a spinel without Cu, " + "and " * 40 + " 1 Fe",
    "and": _at_limit("and ", "a spinel without Cu, ", " 1 Fe"),
    "commas": _at_limit(", ", "a spinel without Cu", " 1 Fe"),
    "without Cu": _at_limit("without Cu, ", suffix=" 1 Fe"),
    "hyphens": _at_limit("-", "a spinel without Cu", " 1 Fe"),
    "spaces": _at_limit(" ", "a spinel without Cu", " 1 Fe"),
    "not": _at_limit("not ", "a spinel ", " Fe"),
    "digits": _at_limit("1", suffix="x"),
    "digits before eV": _at_limit("1", suffix=" eV band gap"),
    "band gap 1.": _at_limit("band gap 1."),
    "mixed list": _at_limit("No Co, and Mn or ", "a spinel without Cu, ", " 1 Fe"),
    "element list": _at_limit("Fe "),
    "chemical system": _at_limit("Fe-"),
    "space group spaces": _at_limit(" ", "a perovskite in space group", "x"),
    "ratio": _at_limit("1:", "a spinel with atom ratio "),
    "counted": _at_limit("one ", suffix="crystals"),
    "density": _at_limit("density 1", suffix=" g/cm3"),
    "free": _at_limit("Co free ", "a spinel "),
    "but not": _at_limit("but not Co, ", "a spinel "),
    "tabs and newlines": _at_limit("\t\n", "a spinel without Cu,", " 1 Fe"),
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_requests_parse_in_under_a_tenth_of_a_second(text):
    """The issue's bound: each request at the largest accepted size is read in < 0.1 s.

    The best of three runs is kept so that a scheduler pause on a busy machine does not fail
    the test; backtracking costs seconds on every run (the old reader took > 15 s on 'and').
    """
    assert len(text) <= MAX_REQUEST_CHARS
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        _assert_request_outcome(text)
        best = min(best, time.perf_counter() - started)
        if best < 0.1:
            break
    assert best < 0.1, f"{best:.3f} s"


def test_the_issue_request_is_read_correctly():
    """The request from the issue keeps its meaning: Cu is excluded, Fe (after the list ends at '1') is not."""
    with _time_limit(GUARD_SECONDS):
        spec = parse_request("a spinel without Cu, " + "and " * 40 + " 1 Fe")
    assert spec.family == "spinel"
    assert spec.excluded_elements == ["Cu"]
    assert spec.required_elements == ["Fe"]
