"""The typed request: ``SearchSpec``, and the offline parser from plain language to it.

A spec says what a materials scientist asked for: a crystal family, structure type or
stoichiometry pattern, elements that must, may or must not appear, the anion class, novelty
(not in MP, ICSD, a user's list), stability (how far above the convex hull), property targets,
a space group or crystal system, layering, size limits, how many results, and the search
budget. ``parse_request`` reads a request with deterministic rules (the offline
planner's understanding); ``spec_conflicts`` explains requests that cannot be satisfied.

Requests come from users and MCP clients, so the reader is bounded: at most
``MAX_REQUEST_CHARS`` characters, and every pattern here runs in time linear in the text (no
nested or adjacent quantifiers that could backtrack over the same characters, and the
negation scope is found in one pass rather than by a search per element mention).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from functools import lru_cache
from math import gcd
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pymatgen.core import Element

from tools.families import FAMILIES, HALOGENS, get_family
from tools.limits import MAX_FORMULA_ATOMS, MAX_FORMULA_ELEMENTS, MAX_REQUEST_CHARS
from tools.vocabulary import StructureType, structure_type_named, vocabulary

MAX_IGNORED_WORDS = 20

ANION_CLASSES: dict[str, frozenset[str]] = {
    "oxide": frozenset({"O"}),
    "fluoride": frozenset({"F"}),
    "chloride": frozenset({"Cl"}),
    "bromide": frozenset({"Br"}),
    "iodide": frozenset({"I"}),
    "halide": HALOGENS,
    "sulfide": frozenset({"S"}),
    "selenide": frozenset({"Se"}),
    "telluride": frozenset({"Te"}),
    "chalcogenide": frozenset({"S", "Se", "Te"}),
    "nitride": frozenset({"N"}),
    "phosphide": frozenset({"P"}),
    "arsenide": frozenset({"As"}),
    "antimonide": frozenset({"Sb"}),
    "pnictide": frozenset({"N", "P", "As", "Sb"}),
    "carbide": frozenset({"C"}),
    "hydride": frozenset({"H"}),
    # mixed-anion classes (oxynitride, oxyfluoride, ...): every anion of the class is required
    **{name: frozenset(anions) for name, anions in vocabulary().mixed_anion_classes.items()},
}
# The single-anion class of each anion ('S' -> 'sulfide'), for anion prefixes ('thiospinel').
SINGLE_ANION_CLASS = {next(iter(members)): name for name, members in ANION_CLASSES.items() if len(members) == 1}
ALL_ANIONS = frozenset().union(*ANION_CLASSES.values())
NOVELTY_SETS = ("MP", "ICSD", "OQMD")
# The seven crystal systems (pymatgen's names) and the space-group numbers of each.
CRYSTAL_SYSTEMS: dict[str, range] = {
    "triclinic": range(1, 3), "monoclinic": range(3, 16), "orthorhombic": range(16, 75), "tetragonal": range(75, 143),
    "trigonal": range(143, 168), "hexagonal": range(168, 195), "cubic": range(195, 231),
}
CrystalSystem = Literal["triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"]
# eV/atom: the loosest stability cut a request may set (the search's own limit, agent.graph.MAX_E_ABOVE_HULL).
MAX_HULL_CUT = 1.0


def crystal_system_of(spacegroup: int) -> str:
    """The crystal system of a space group number (1-230)."""
    return next(name for name, numbers in CRYSTAL_SYSTEMS.items() if spacegroup in numbers)


class Budget(BaseModel):
    """Search effort, GenMS's branching factors: H formulae proposed, W kept, L structures each."""

    proposals: int = Field(20, ge=1, le=500, description="H: formulae proposed per round")
    formulas: int = Field(5, ge=1, le=100, description="W: formulae that get structures")
    structures_per_formula: int = Field(4, ge=1, le=100, description="L: structures generated per formula")
    rounds: int = Field(3, ge=1, le=20, description="proposal rounds before giving up")
    relax_steps: int = Field(100, ge=0, le=2000, description="CHGNet relaxation steps for each formula's best structure (0: none)")
    seconds: float = Field(600.0, gt=0, le=86_400, description="wall-clock budget")


class SearchSpec(BaseModel):
    """What the user asked for, in checkable terms. Elements are symbols; energies eV/atom."""

    request: str = ""
    family: str | None = Field(None, description="catalogue family name, e.g. 'spinel'")
    stoichiometry: str | None = Field(None, description="atom-ratio pattern such as '1:1:2'")
    required_elements: list[str] = Field(default_factory=list)
    allowed_elements: list[str] | None = Field(None, description="if set, only these elements may appear")
    excluded_elements: list[str] = Field(default_factory=list)
    anion_class: str | None = Field(None, description="oxide, fluoride, halide, chalcogenide, nitride ...")
    novel_against: list[Literal["MP", "ICSD", "OQMD", "genms"]] = Field(
        default_factory=list, description="known sets to avoid; 'genms' = what earlier genms runs produced")
    exclude_formulas: list[str] = Field(default_factory=list, description="a user's list of formulae to avoid")
    band_gap: float | None = Field(None, ge=0, le=15, description="target band gap, eV")
    band_gap_tolerance: float = Field(0.5, gt=0, le=10, description="eV")
    electronic: Literal["metal", "semiconductor", "insulator"] | None = None
    density: float | None = Field(None, gt=0, le=30, description="target density, g/cm^3")
    high_density: bool = Field(False, description="the request asks for dense phases (as dense as possible)")
    low_energy: bool = True
    spacegroup: int | None = Field(None, ge=1, le=230)
    crystal_system: CrystalSystem | None = Field(
        None, description="the crystal system the request names ('cubic', 'rhombohedral' -> trigonal); "
        "a space group of another system is a conflict ('hexagonal' also takes the trigonal groups)")
    layered: bool = Field(False, description="the request asks for a layered (2D, van der Waals) crystal")
    max_e_above_hull: float | None = Field(
        None, ge=0, le=MAX_HULL_CUT,
        description="eV/atom: good candidates lie at most this far above the convex hull ('stable' 0.05, 'metastable' or "
        "'synthesizable' 0.1, 'within 30 meV/atom of the hull' 0.03; tools/data/vocabulary.yaml); None: the search's default")
    structure_type: str | None = Field(
        None, description="a structure type that is no catalogue family ('kesterite', 'NASICON'; tools/data/vocabulary.yaml): "
        "its ratio, anion class and element groups are in the spec")
    n_elements: int | None = Field(None, ge=1, le=MAX_FORMULA_ELEMENTS,
                                   description="number of distinct elements ('binary' 2, 'ternary' 3, ...)")
    application: str | None = Field(None, description="the application the request names (tools/data/vocabulary.yaml)")
    required_any: list[list[str]] = Field(
        default_factory=list, max_length=8,
        description="groups of element symbols: the compound needs at least one element of each (a cathode's redox metal)")
    ignored_words: list[Annotated[str, Field(max_length=40)]] = Field(
        default_factory=list, max_length=MAX_IGNORED_WORDS,
        description="words of the request the reader did not understand (shown to the user)")
    max_sites: int = Field(20, ge=1, le=200)
    generator: Literal["auto", "diffusion", "unimdm", "template"] = Field(
        "auto", description="structure generator for a formula: 'auto' = GenMS diffusion samples (Uni-MDM's "
        "property-conditioned samples when a band-gap target is given), plus the family's prototypes when the "
        "formula fits one; 'diffusion' or 'unimdm' only; 'template' = prototype substitution only")
    n_results: int = Field(5, ge=1, le=100)
    budget: Budget = Field(default_factory=Budget)
    seed: int = 0

    @field_validator("required_elements", "excluded_elements", "allowed_elements")
    @classmethod
    def _known_elements(cls, symbols):
        for symbol in symbols or []:
            if not Element.is_valid_symbol(symbol):
                raise ValueError(f"unknown element {symbol!r}")
        return sorted(set(symbols)) if symbols is not None else None

    @field_validator("required_any")
    @classmethod
    def _known_groups(cls, groups):
        for group in groups:
            if not group or len(group) > 40:
                raise ValueError("each group of required_any needs 1-40 element symbols")
            for symbol in group:
                if not Element.is_valid_symbol(symbol):
                    raise ValueError(f"unknown element {symbol!r}")
        return [sorted(set(group)) for group in groups]

    @field_validator("application")
    @classmethod
    def _known_application(cls, name):
        if name and name not in {a.name for a in vocabulary().applications}:
            raise ValueError(f"unknown application {name!r}; choose from {', '.join(a.name for a in vocabulary().applications)}")
        return name

    @field_validator("structure_type")
    @classmethod
    def _known_structure_type(cls, name):
        if name and not structure_type_named(name):
            raise ValueError(f"unknown structure type {name!r}; choose from {', '.join(t.name for t in vocabulary().structure_types)}")
        return name

    @field_validator("family")
    @classmethod
    def _known_family(cls, name):
        return get_family(name).name if name else None

    @field_validator("anion_class")
    @classmethod
    def _known_anion_class(cls, name):
        if name and name not in ANION_CLASSES:
            raise ValueError(f"unknown anion class {name!r}; choose from {', '.join(ANION_CLASSES)}")
        return name

    @field_validator("stoichiometry")
    @classmethod
    def _ratio(cls, pattern):
        """A ratio must describe a formula genms could write: whole parts >= 1 within the formula limits."""
        if not pattern:
            return pattern
        if not re.fullmatch(r"[0-9]+(?::[0-9]+)+", pattern):
            raise ValueError(f"stoichiometry must look like '1:1:2', got {pattern[:40]!r}")
        parts = pattern.split(":")
        if len(parts) > MAX_FORMULA_ELEMENTS:
            raise ValueError(f"a ratio of {len(parts)} parts has more elements than a formula may have ({MAX_FORMULA_ELEMENTS})")
        counts = [int(part) for part in parts]
        if min(counts) < 1:
            raise ValueError(f"every part of the ratio {pattern!r} must be at least 1")
        if sum(counts) > MAX_FORMULA_ATOMS:
            raise ValueError(f"the ratio {pattern[:40]!r} has more atoms than a formula may have ({MAX_FORMULA_ATOMS})")
        return pattern

    def anions(self) -> frozenset[str] | None:
        """Anions the request allows (anion class, family, exclusions, allowed set), or None if unconstrained."""
        sets = []
        if self.anion_class:
            sets.append(ANION_CLASSES[self.anion_class])
        if self.family and get_family(self.family).anions:
            sets.append(get_family(self.family).anions)
        if self.allowed_elements is not None:
            sets.append(frozenset(self.allowed_elements) & ALL_ANIONS)
        if not sets:
            return None
        return frozenset.intersection(*sets) - set(self.excluded_elements)

    def summary(self) -> str:
        """One line a user can read back."""
        parts = [self.family.replace("_", " ") if self.family else (f"ratio {self.stoichiometry}" if self.stoichiometry else "crystal")]
        if self.structure_type:
            parts[0] += f" ({self.structure_type})"
        if self.anion_class:
            parts.append(self.anion_class)
        if self.required_elements:
            parts.append("with " + ", ".join(self.required_elements))
        if self.allowed_elements is not None:
            parts.append("only " + "-".join(self.allowed_elements))
        if self.excluded_elements:
            parts.append("without " + ", ".join(self.excluded_elements))
        if self.novel_against:
            parts.append("not in " + "/".join(self.novel_against))
        if self.band_gap is not None:
            parts.append(f"band gap {self.band_gap:g} ± {self.band_gap_tolerance:g} eV")
        if self.electronic:
            parts.append(self.electronic)
        if self.density is not None:
            parts.append(f"density near {self.density:g} g/cm^3")
        elif self.high_density:
            parts.append("dense")
        if self.spacegroup:
            parts.append(f"space group {self.spacegroup}")
        if self.crystal_system:
            parts.append(self.crystal_system)
        if self.layered:
            parts.append("layered")
        if self.max_e_above_hull is not None:
            parts.append(f"within {self.max_e_above_hull:g} eV/atom of the hull")
        if self.n_elements:
            parts.append(f"{self.n_elements} elements")
        needs = "; ".join("one of " + ", ".join(group) for group in self.required_any)
        if self.application:
            parts.append(f"for {self.application}" + (f" ({needs})" if needs else ""))
        elif needs:
            parts.append(f"with {needs}")
        if self.ignored_words:
            parts.append("not understood: " + ", ".join(self.ignored_words))
        return "; ".join(parts)


class RequestNotUnderstood(ValueError):
    """The request names nothing genms can search for; the message says what is supported and
    ``ignored_words`` the words of the request that were not understood."""

    def __init__(self, message: str, ignored_words: Sequence[str] = ()):
        super().__init__(message)
        self.ignored_words = list(ignored_words)


class SpecConflict(ValueError):
    """The request's constraints contradict each other; the message explains how."""


SUPPORTED = (
    "genms understands requests that name a crystal family ("
    + ", ".join(f.name.replace("_", " ") for f in FAMILIES)
    + "), an atom ratio such as 1:1:2, elements to include or avoid (symbols or names, "
    "'lead-free', 'without Co'), an anion class (oxide, halide, chalcogenide, nitride, oxynitride ..., "
    "'thiospinel'), an oxide family name ('titanate', 'ferrite'), the number of elements ('ternary'), "
    "novelty ('novel', 'not in the Materials Project', 'not in ICSD'), an application ('for battery cathodes', "
    "'solar absorber', 'thermoelectric' ...), a band gap ('band gap near 1.4 eV', 'metallic'), a density "
    "('density near 5 g/cm3'), a space group ('Pnma') or crystal system ('cubic'), stability ('stable', 'metastable', "
    "'within 50 meV/atom of the hull'), 'layered' / '2D', a structure type ('kesterite', 'NASICON', 'anti-perovskite', "
    "'LiCoO2-type'), and a count ('five ...')."
)

# Groups people name when excluding ("without rare earths", "toxic-element-free"): tools/data/vocabulary.yaml.
ELEMENT_GROUPS = vocabulary().element_groups
_NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}
_NUMBER_WORDS.update({"twenty": 20, "fifteen": 15, "thirty": 30, "fifty": 50, "hundred": 100, "dozen": 12})
# Capitalised words that are element symbols but usually English in a request.
_AMBIGUOUS_SYMBOLS = {"I", "In", "As", "At", "Be", "He", "No", "Os", "So", "Am", "Bi", "Ca", "Co", "Pa"}
# A negation word starts a word ('no' in 'nano' or 'mono-layer' does not negate).
_NEGATION = r"\b(?:without|no|not containing|excluding|except|free of|avoid(?:ing)?|but not|minus)"
# Every negation in the text, overlapping ones included ('but not containing'): a lookahead
# tried at each position, so the scan is linear.
_NEGATIONS = re.compile(rf"(?=({_NEGATION})\b)", re.IGNORECASE)
# Where a clause ends, and with it the scope of a negation ('without Co. With Mn' excludes Co
# and requires Mn). 'but not' and 'not containing' are negations, not clause breaks.
_CLAUSE_BREAKS = re.compile(r"[.;]|\bbut\b(?!(?i: not))|\bwith\b|(?<!(?i:not) )\bcontaining\b|\bincluding\b")
# Characters a list of negated elements is written with ('without Co, Ni or Cu'); a comma,
# then anything else ends the list. Matched case-insensitively like the negations.
_OUTSIDE_LIST = re.compile(r"[^\sA-Za-z-]", re.IGNORECASE)
_FREE_SUFFIX = re.compile(r"[\s-]*free\b(?!\s+(?:of|from)\b)")  # 'lead-free', 'cobalt free' (not 'a silicate free of Al')


@lru_cache(maxsize=1)
def _element_names() -> dict[str, str]:
    names = {el.long_name.lower(): el.symbol for el in Element}
    names.update(vocabulary().element_names)
    return names


_TOKEN = re.compile(r"[A-Za-z0-9]+")
_FORMULA_TOKEN = re.compile(r"(?:[A-Z][a-z]?\d*)+")


def _masked(text: str) -> str:
    """The text with what only looks like elements blanked out (same length, so positions hold): family
    aliases ('zinc blende', 'K2NiF4-type', 'ABX3'), structure types ('alpha-NaFeO2 type'), formulae
    written as a type ('a CsPbI3-like perovskite'), stability of another kind ('stable at 300 K') and
    space-group symbols ('Fm-3m', 'P4/nmm')."""
    words = [*_structure_type_spans(text), *((start, end) for start, end, _ in _formula_types(text)),
             *((start, end) for start, end, _ in _stability(text)[1])]  # 'stable up to 1000 K' names no potassium
    chars = list(_blanked(text, words))
    lowered = text.lower()
    for family in FAMILIES:
        for alias in family.aliases:
            if re.search(r"\d|^[a-z]+['\w]*$", alias) and not _element_names().get(alias.split()[0]) and "-" not in alias:
                continue  # plain word aliases name no element (a 'zinc blende' or a formula-type alias does)
            for match in re.finditer(rf"(?<![\w']){re.escape(alias)}(?![\w'])", lowered):
                chars[match.start():match.end()] = " " * (match.end() - match.start())
    for start, end, _ in _spacegroup_symbols(text):
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def _element_mentions(text: str) -> list[tuple[str, int, int]]:
    """(symbol, start, end) of element names and symbols in the request.

    A symbol inside a longer token counts only when the token is a formula of real elements
    ('LiFePO4'), not in 'OQMD', 'ICSD' or 'P4mm'; family aliases and space-group symbols are masked."""
    mentions = []
    names = _element_names()
    text = _masked(text)
    for match in re.finditer(r"[A-Za-z]+", text):
        word = match.group()
        if word.lower() in names and len(word) > 2:
            mentions.append((names[word.lower()], match.start(), match.end()))
    for match in re.finditer(r"(?<![A-Za-z])([A-Z][a-z]?)(?![a-z])", text):
        symbol = match.group(1)
        if not Element.is_valid_symbol(symbol) or symbol in _AMBIGUOUS_SYMBOLS and not _symbol_context(text, match):
            continue
        token = next(t for t in _TOKEN.finditer(text, max(0, match.start() - 40), match.end() + 40)
                     if t.start() <= match.start() < t.end()).group()
        if token != symbol and not (_FORMULA_TOKEN.fullmatch(token)
                                    and all(Element.is_valid_symbol(s) for s in re.findall(r"[A-Z][a-z]?", token))):
            continue
        mentions.append((symbol, match.start(), match.end()))
    return sorted(set(mentions), key=lambda m: m[1])


def _symbol_context(text: str, match: re.Match) -> bool:
    """An ambiguous symbol counts when it sits in a list of elements or a chemical system."""
    before, after = text[max(0, match.start() - 12) : match.start()], text[match.end() : match.end() + 12]
    return bool(re.search(r"[A-Z][a-z]?\s*(,|and|or|-)\s*$", before) or re.match(r"^\s*(,|-|and\b|or\b)\s*[A-Z][a-z]?", after) or re.search(r"\b(with|containing|including|of|without|no|excluding|except|not)\s*$", before))


_NON_PREFIX = re.compile(r"(?:^|[^A-Za-z])non[- ]?$", re.IGNORECASE)  # 'non-toxic', 'non toxic'


class _Negations:
    """Which mentions in one request are negated ('without X', 'X-free', 'no X, Y or Z').

    A mention is negated when it is followed by 'free' or follows 'non-', or when a negation word comes before
    it in the same clause and, after the first comma following the negation, only letters,
    spaces, hyphens and commas lead up to it: 'without any 3d metal, Co or Ni' negates Co and
    Ni, 'without Co, 5 Ni' does not negate Ni. The clause breaks, negations and list-ending
    characters are found once, in linear scans of the text; each mention is then answered by
    binary search, so a request costs O(n log n) however many mentions it holds (a regular
    expression per mention over the text before it was quadratic, and one that backtracked
    over 'and and and ...' was exponential).
    """

    def __init__(self, text: str):
        self.text = text
        self.breaks = [match.end() for match in _CLAUSE_BREAKS.finditer(text)]
        spans = sorted((match.end(1), match.start(1)) for match in _NEGATIONS.finditer(text))
        self.negation_ends = [end for end, _ in spans]
        self.negation_starts = [start for _, start in spans]
        # Positions of characters that end a list once it has had a comma, each with the
        # position of the last comma before it (-1 when none).
        self.outside, self.comma_before = [], []
        last_comma = -1
        for match in _OUTSIDE_LIST.finditer(text):
            if match.group() == ",":
                last_comma = match.start()
            else:
                self.outside.append(match.start())
                self.comma_before.append(last_comma)

    def negated(self, start: int, end: int) -> bool:
        """Is the mention at ``start:end`` negated?"""
        if _FREE_SUFFIX.match(self.text, end) or _NON_PREFIX.search(self.text[max(0, start - 5):start]):
            return True
        clause_start = self.breaks[bisect_right(self.breaks, start) - 1] if self.breaks and self.breaks[0] <= start else 0
        latest = bisect_right(self.negation_ends, start) - 1
        if latest < 0 or self.negation_starts[latest] < clause_start:
            return False
        # The list after the latest negation must not have a comma followed by other text.
        last_outside = bisect_left(self.outside, start) - 1
        list_broken_at = self.comma_before[last_outside] if last_outside >= 0 else -1
        return self.negation_ends[latest] > list_broken_at


def family_mentioned(text: str) -> str | None:
    """The catalogue family a text names (the longest alias wins), or None."""
    lowered = text.lower().replace("-", " ")
    best = None
    for family in FAMILIES:
        for alias in (family.name.replace("_", " "), *(a.replace("-", " ") for a in family.aliases)):
            found = re.search(rf"\b{re.escape(alias.lower())}\b", lowered)
            if found and (best is None or len(alias) > best[1]):
                best = (family.name, len(alias))
    return best[0] if best else None


def _anion_class(text: str) -> str | None:
    lowered = re.sub(r"\b(oxy|carbo)-", r"\1", text.lower())  # 'oxy-nitride' as 'oxynitride'
    for name in sorted(ANION_CLASSES, key=len, reverse=True):
        stem = name.replace("sulfide", "sul(?:f|ph)ide")  # sulfide or sulphide
        if re.search(rf"\b{stem}s?\b", lowered):
            return name
    return None


_DATABASE = r"(?:the\s+)?(?:materials project|mp|icsd|oqmd)\b"
_NOT_IN_DATABASES = re.compile(rf"not (?:in|on|from|part of|listed in) ({_DATABASE}(?:(?:\s*,\s*(?:or\s+|and\s+)?|\s+or\s+|\s+and\s+|\s+nor\s+){_DATABASE})*)")


def _novelty(text: str) -> list[str]:
    lowered = text.lower()
    sets = []
    for listed in _NOT_IN_DATABASES.finditer(lowered):  # 'not in MP', 'not in the Materials Project, ICSD or OQMD'
        for name in re.findall(r"materials project|mp|icsd|oqmd", listed.group(1)):
            database = {"materials project": "MP", "mp": "MP"}.get(name, name.upper())
            if database not in sets:
                sets.append(database)
    if not sets and (vocabulary().novelty.search(lowered) or re.search(r"\bunique\b", lowered)):
        sets = ["MP", "ICSD"]
    if re.search(r"\b(?:not|never) (?:found|produced|generated|seen|proposed) (?:before|earlier|already|(?:in|by) (?:our |my |the )?"
                 r"(?:earlier|previous|past|other) (?:runs|searches))|"
                 r"\bnot (?:in|from) (?:our |my |the )?(?:earlier|previous|past|other) (?:runs|searches)|\bnew to (?:us|me|genms)\b", lowered):
        sets.append("genms")
    return sets


_PREFIXED = re.compile(r"\b(" + "|".join(vocabulary().anion_prefixes) + r")[\s-]?([a-z]+)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _prefixable_words() -> frozenset[str]:
    """Words an anion prefix may be attached to: family names and aliases, -ate / -ite names."""
    words = {w for f in FAMILIES for name in (f.name, *f.aliases) for w in [name.replace("_", " ").replace("-", " ").split()[0].lower()]}
    return frozenset(words | set(vocabulary().oxoanion_names))


def _split_prefixes(text: str) -> tuple[str, list[tuple[str, int]]]:
    """The text with anion prefixes split from the word they qualify ('thiospinel' -> 'thio-spinel'),
    and (anion, position of the qualified word) for each; prefixes of other words are left alone."""
    pieces, anions, last = [], [], 0
    for match in _PREFIXED.finditer(text):
        word = match.group(2).lower()
        if not any(word == w or word in (w + "s", w + "es") for w in _prefixable_words()):
            continue
        pieces += [text[last:match.start(2)].rstrip(" -"), "-"]
        anions.append((vocabulary().anion_prefixes[match.group(1).lower()], sum(map(len, pieces))))
        last = match.start(2)
    return "".join(pieces) + text[last:], anions


def _oxoanions(text: str, negations: "_Negations", prefixed: list[tuple[str, int]]) -> tuple[set[str], set[str], str | None]:
    """(required, excluded, anion class) from -ate / -ite names: 'a lithium titanate' requires Ti, an oxide;
    'a thiophosphate' requires P and is a sulfide."""
    required, excluded, anion_class = set(), set(), None
    names = vocabulary().oxoanion_names
    prefix_at = dict((position, anion) for anion, position in prefixed)
    for match in vocabulary().oxoanions.finditer(text):
        word = match.group().lower()
        symbol = names.get(word) or names.get(word[:-1])
        (excluded if negations.negated(match.start(), match.end()) else required).add(symbol)
        if anion_class is None:
            anion_class = SINGLE_ANION_CLASS.get(prefix_at.get(match.start(), "O"))
    return required, excluded, anion_class


def _prefix_anion_class(prefixed: list[tuple[str, int]]) -> str | None:
    """The single-anion class a prefix names ('seleno-spinel' -> selenide)."""
    return SINGLE_ANION_CLASS.get(prefixed[0][0]) if prefixed else None


@lru_cache(maxsize=1)
def _reader_words() -> frozenset[str]:
    """Every word the reader acts on or skips: the vocabulary, family names and aliases, anion classes,
    element names, number and negation words."""
    words = set(vocabulary().known_words) | set(vocabulary().filler_words) | set(_NUMBER_WORDS) | set(_element_names())
    words |= {w for f in FAMILIES for name in (f.name, *f.aliases) for w in re.findall(r"[a-z]+", name.lower())}
    words |= {w for name in ANION_CLASSES for w in (name, name + "s")} | {"sulphide", "sulphides"}
    words |= {"without", "no", "not", "non", "containing", "excluding", "except", "free", "avoid", "avoiding", "but", "minus"}
    return frozenset(words)


def ignored_words(text: str, phrases: Sequence[tuple[int, int, str]] = ()) -> list[str]:
    """Words of the request the reader neither acts on nor skips as phrasing (at most MAX_IGNORED_WORDS),
    so the user sees what was not understood: 'for battery cathodes' -> ['battery', 'cathodes'].
    ``phrases`` (start, end, phrase) are listed whole at their place, instead of their words ('air-stable')."""
    known, seen = _reader_words(), []
    read = [(a, b) for a, b, _ in phrases] + [(a, b) for a, b, _ in _spacegroup_symbols(text)]  # 'Pnma', 'P6_3/mmc' are read
    words = [(m.start(), m.group(), False) for m in re.finditer(r"[A-Za-z]+", _blanked(text, read))]
    for _, word, phrase in sorted([*words, *((start, phrase, True) for start, _, phrase in phrases)], key=lambda item: item[0]):
        lowered = word.lower()
        if len(word) < 2 or lowered[:40] in seen:
            continue
        if not phrase and (Element.is_valid_symbol(word) or _is_formula(word)
                           or {lowered, lowered + "s", lowered.rstrip("s"), lowered.removesuffix("es")} & known):
            continue
        seen.append(lowered[:40])
        if len(seen) == MAX_IGNORED_WORDS:
            break
    return seen


def _is_formula(word: str) -> bool:
    """Is the word a formula of real elements ('LiFePO' of 'LiFePO4')? Those are read as elements, not ignored."""
    return bool(_FORMULA_TOKEN.fullmatch(word)) and all(Element.is_valid_symbol(s) for s in re.findall(r"[A-Z][a-z]?", word))


def _blanked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """The text with ``spans`` (start, end) replaced by spaces (same length, so positions hold)."""
    if not spans:
        return text
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


# ---------------------------------------------------------------------------------------------- stability, symmetry, types

# An energy per atom written in the request ('50 meV/atom', '0.08 eV per atom'), or one of the hull
# without 'per atom' ('within 50 meV of the hull'). Plain, bounded pieces: linear. A negative energy
# ('E_f below -1 eV/atom') is no distance to the hull.
_ENERGY = re.compile(r"(?<![\d.\-\u2212])(\d{1,4}(?:\.\d{1,4})?)\s?(m?ev)(\s?(?:/|per)\s?atom\b)?", re.IGNORECASE)
_OF_THE_HULL = re.compile(r"\s+(?:of|from|above|below|to)\s+(?:the\s+)?(?:mp\s+)?(?:convex\s+)?hull", re.IGNORECASE)
_OTHER_QUANTITY = re.compile(r"formation|band ?gap|density|energy per atom|total energy", re.IGNORECASE)
_HULL_WINDOW = 40  # characters before an energy in which a hull word must be ('E_hull < 0.08 eV/atom')


def _explicit_hull_cut(text: str) -> float | None:
    """The cut (eV/atom) the request writes as a number: 'within 50 meV/atom of the hull', 'E_hull < 0.08 eV/atom'.

    The hull is named right after the number ('... of the hull') or shortly before it, with no other
    quantity in between ('on the hull, with a formation energy below 1 eV/atom' sets no cut)."""
    for match in _ENERGY.finditer(text):
        after = _OF_THE_HULL.match(text, match.end())
        if not after:
            if not match.group(3) and match.group(2).lower() != "mev":
                continue  # '1.5 eV' alone is a band gap, not a hull distance
            before = text[max(0, match.start() - _HULL_WINDOW): match.start()]
            hull = None
            for hull in vocabulary().hull_words.finditer(before):
                pass
            if hull is None or _OTHER_QUANTITY.search(before, hull.end()):
                continue
        value = float(match.group(1))
        return value / 1000 if match.group(2).lower() == "mev" else value
    return None


def _stability(text: str) -> tuple[float | None, list[tuple[int, int, str]]]:
    """(cut in eV/atom above the hull or None, phrases about other stability: 'air-stable', 'stable in water').

    A number the request writes wins; otherwise the loosest cut of the wordings named (tools/data/vocabulary.yaml)."""
    wordings, cuts, unread = vocabulary().stability_wordings, [], []
    for match in vocabulary().stability.finditer(text):
        wording = wordings[match.lastindex - 1]
        if wording.kind == "not_hull":
            unread.append((match.start(), match.end(), match.group().lower()[:40]))
        elif wording.kind == "cut":
            cuts.append(wording.cut)
    explicit = _explicit_hull_cut(text)
    return (explicit if explicit is not None else max(cuts, default=None)), unread


def _negated_before(text: str, start: int) -> int | None:
    """Where a 'non-' / 'not ' right before ``start`` begins ('non-cubic', 'not layered'), else None."""
    match = re.search(r"\b(?:non-?|not )$", text[max(0, start - 4):start], re.IGNORECASE)
    return max(0, start - 4) + match.start() if match else None


def _crystal_system(text: str) -> tuple[str | None, list[tuple[int, int, str]]]:
    """(crystal system or None, phrases listed as not understood: a negated system, or every one of several)."""
    systems, named, unread = list(vocabulary().crystal_systems), [], []
    for match in vocabulary().crystal_system_words.finditer(text):
        negated = _negated_before(text, match.start())
        if negated is not None:
            unread.append((negated, match.end(), text[negated:match.end()].lower()))
        else:
            named.append((match.start(), match.end(), systems[match.lastindex - 1]))
    if len({system for _, _, system in named}) > 1:  # 'cubic or tetragonal': one system cannot say it
        return None, sorted(unread + [(start, end, text[start:end].lower()) for start, end, _ in named])
    return (named[0][2] if named else None), unread


def _layered(text: str) -> tuple[bool, list[tuple[int, int, str]]]:
    """(the request asks for a layered crystal, negated words listed as not understood: 'non-layered')."""
    layered, unread = False, []
    for match in vocabulary().layered.finditer(text):
        negated = _negated_before(text, match.start())
        if negated is not None:
            unread.append((negated, match.end(), text[negated:match.end()].lower()))
        else:
            layered = True
    return layered, unread


def _structure_type_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for stype in vocabulary().structure_types for match in stype.pattern.finditer(text)]


def _structure_type(text: str) -> tuple[StructureType | None, list[tuple[int, int, str]]]:
    """(the structure type the request names, or None; with several types, none and each listed as not understood)."""
    named = sorted(((match.start(), match.end(), stype) for stype in vocabulary().structure_types
                    for match in stype.pattern.finditer(text)), key=lambda item: item[:2])
    if len({stype.name for _, _, stype in named}) > 1:
        return None, [(start, end, text[start:end].lower()[:40]) for start, end, _ in named]
    return (named[0][2] if named else None), []


# A formula written as a structure type: 'a LiCoO2-type oxide', 'CsPbI3-like', 'isostructural with CuInSe2'.
# A formula unit starts with a capital, so the pieces cannot overlap: linear.
_FORMULA_UNITS = r"(?:[A-Z][a-z]?[0-9]{0,3}){2,8}"
_FORMULA_TYPE = re.compile(rf"(?<![\w(])({_FORMULA_UNITS})[- ](?:like|type|structured|derived)\b"
                           rf"|\bisostructural (?:with|to) ({_FORMULA_UNITS})(?![\w(])")


def _formula_types(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, atom ratio) of each formula written as a type; the ratio is None when no spec could hold it."""
    found = []
    for match in _FORMULA_TYPE.finditer(text):
        group = 1 if match.group(1) else 2
        counts: dict[str, int] = {}
        for symbol, count in re.findall(r"([A-Z][a-z]?)([0-9]*)", match.group(group)):
            if not Element.is_valid_symbol(symbol):
                break
            counts[symbol] = counts.get(symbol, 0) + int(count or 1)
        else:
            if len(counts) >= 2:
                divisor = gcd(*counts.values())
                parts = [count // divisor for count in counts.values()]
                fits = len(parts) <= MAX_FORMULA_ELEMENTS and sum(parts) <= MAX_FORMULA_ATOMS
                found.append((match.start(group), match.end(group), ":".join(map(str, parts)) if fits else None))
    return found


WORKING_IONS = ("Li", "Na", "K", "Mg", "Ca", "Zn", "Al")


def application_fields(text: str, required: set[str], excluded: set[str], name: str | None = None) -> dict:
    """The spec fields an application in the request implies ('for Na-ion battery cathodes': Na, one
    redox-active transition metal), or {} when it names none. Elements the request excludes stay out.
    ``name`` picks the application instead of reading it from the text (Claude's reading)."""
    for application in vocabulary().applications:
        if application.name != name if name else not application.pattern.search(text):
            continue
        fields: dict = {"application": application.name}
        named_ions = [ion for ion in WORKING_IONS if ion in required]
        if application.working_ion and not named_ions:
            ion = "Na" if re.search(r"\b(?:sodium|na)[- ]ion\b", text, re.IGNORECASE) else application.working_ion
            if ion not in excluded:
                fields["required_elements"] = [ion]
        fields["required_any"] = [[el for el in group if el not in excluded] for group in application.require_any]
        fields["excluded_elements"] = [el for el in application.exclude if el not in required]
        if application.band_gap:
            fields["band_gap"], fields["band_gap_tolerance"] = application.band_gap
        fields["electronic"], fields["anion_class"] = application.electronic, application.anion_class
        return fields
    return {}


def _element_count(text: str) -> int | None:
    """'binary' 2, 'ternary' 3, 'three-component' 3 ..."""
    match = vocabulary().counts.search(text)
    if not match:
        return None
    counts = vocabulary().element_counts
    return counts.get(re.sub(r"[\s-]+", "-", match.group().lower())) or counts.get(re.sub(r"[\s-]+", " ", match.group().lower()))


def _band_gap(text: str) -> tuple[float | None, float | None, str | None]:
    """(target eV, tolerance eV, electronic class) from the request."""
    lowered = text.lower()
    between = re.search(r"band ?gap\D{0,20}?between\s*(\d+(?:\.\d+)?)\s*(?:and|-|to)\s*(\d+(?:\.\d+)?)", lowered)
    if between:
        low, high = float(between.group(1)), float(between.group(2))
        kind = "semiconductor" if re.search(r"\bsemiconduct", lowered) else "insulator" if re.search(r"\binsulat", lowered) else None
        return (low + high) / 2, max((high - low) / 2, 0.05), kind
    near = re.search(r"band ?gap\D{0,25}?(\d+(?:\.\d+)?)\s*ev(?!\s*(?:/|per)\s*atom)", lowered) or re.search(r"(?<!\d)(\d+(?:\.\d+)?)\s*ev\s*band ?gap", lowered)
    if near:
        kind = "semiconductor" if re.search(r"\bsemiconduct", lowered) else "insulator" if re.search(r"\binsulat", lowered) else None
        return float(near.group(1)), None, kind
    if re.search(r"\bwide[- ]?(?:band ?)?gap\b", lowered):
        return 4.0, 1.0, None
    if re.search(r"\b(metal|metallic|conductor)\b", lowered) and not re.search(r"\b(non-?metal|semi-?metal|transition metal)", lowered):
        return None, None, "metal"
    if re.search(r"\bsemiconduct", lowered):
        return None, None, "semiconductor"
    if re.search(r"\binsulat", lowered):
        return None, None, "insulator"
    return None, None, None


_GENERIC_NOUNS = ("crystals?", "structures?", "compounds?", "materials?", "candidates?", "formulae", "formulas", "options",
                  "examples", "phases", "alloys", "intermetallics")


@lru_cache(maxsize=1)
def _counted_nouns() -> str:
    """What a count counts: generic nouns, anion classes, -ate names and family names and aliases, in the plural."""
    words = {w.replace(" ", "[- ]") + "s" for f in FAMILIES for w in (f.name.replace("_", " "), *f.aliases)
             if re.fullmatch(r"[a-z -]+", w)}
    words |= {name + "s" for name in (*ANION_CLASSES, *vocabulary().oxoanion_names)} | {"sulphides"}
    prefixes = "|".join(vocabulary().anion_prefixes)
    types = [stype.pattern.pattern.removeprefix(r"\b(?:").removesuffix(r")\b") for stype in vocabulary().structure_types]
    return f"(?:(?:{prefixes})[- ]?)?(?:" + "|".join([*_GENERIC_NOUNS, *sorted(words, key=len, reverse=True), *types]) + ")"


def _count(text: str) -> int | None:
    """How many results the request asks for ('five diverse spinels', '10 candidates')."""
    lowered = text.lower().replace("half a dozen", "six")
    number = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + ")"
    match = re.search(rf"(?<![:\d.])\b{number}\s+(?:[a-z0-9:-]+\s+){{0,3}}?{_counted_nouns()}\b(?!\s*:)", lowered)
    if not match:
        return None
    word = match.group(1)
    value = int(word) if word.isdigit() else _NUMBER_WORDS[word]
    return value if value >= 1 else None


# A digit somewhere is checked by a lookahead, then one greedy run: linear (a 'run, digit, run' pattern is quadratic).
_SPACEGROUP_TOKEN = re.compile(r"(?<![\w/-])[PIFCRAB](?:[a-z]{3}|(?=[a-z/_-]*\d)[a-z0-9/_-]+)(?![\w/-])")


@lru_cache(maxsize=1)
def _hermann_mauguin() -> dict[str, int]:
    """Short Hermann-Mauguin symbol (without '_': 'P42/mnm') -> space group number, from pymatgen's tables."""
    from pymatgen.symmetry.groups import sg_symbol_from_int_number

    table = {}
    for number in range(1, 231):
        table.setdefault(sg_symbol_from_int_number(number).replace("_", ""), number)
    return table


def _spacegroup_symbols(text: str) -> list[tuple[int, int, int]]:
    """(start, end, number) of Hermann-Mauguin symbols written in the request ('Pnma', 'Fm-3m', 'I4/mmm')."""
    table = _hermann_mauguin()
    return [(m.start(), m.end(), table[m.group().replace("_", "")]) for m in _SPACEGROUP_TOKEN.finditer(text)
            if m.group().replace("_", "") in table]


def _spacegroup(text: str) -> int | None:
    # One optional word and one run of spaces per gap (two adjacent ``\s*`` would split a run of spaces every way).
    match = re.search(r"space ?group\s*(?:(?:no\.?|number|#)\s*)?(\d{1,3})\b", text, re.IGNORECASE)
    if match:
        return int(match.group(1))
    match = re.search(r"space ?group\s+([A-Za-z][A-Za-z0-9_/\-]*)", text, re.IGNORECASE)
    if match:
        from pymatgen.symmetry.groups import SpaceGroup

        try:
            return SpaceGroup(match.group(1)).int_number
        except ValueError:
            raise RequestNotUnderstood(f"unknown space group symbol {match.group(1)[:40]!r}") from None
    symbols = _spacegroup_symbols(text)
    return symbols[0][2] if symbols else None


def _density(text: str) -> float | None:
    """Target density in g/cm^3 ('density near 5 g/cm3', 'density of 6.1 g/cc')."""
    match = re.search(r"density\D{0,20}?(\d+(?:\.\d+)?)\s*(?:g\s*/\s*cm\^?3|g\s*/\s*cc|g\s*cm-3)", text, re.IGNORECASE)
    return float(match.group(1)) if match else None


def _max_sites(text: str) -> int | None:
    match = re.search(r"(?:at most|up to|no more than|fewer than|<=?)\s*(\d{1,3})\s*(?:atoms|sites)", text, re.IGNORECASE)
    return int(match.group(1)) if match else None


def _generator(text: str) -> str:
    """'template' when the request asks for prototype substitution, 'unimdm' / 'diffusion' when it names the model."""
    if re.search(r"\b(?:prototypes?|substitution|substituted|templates?)\b", text, re.IGNORECASE):
        return "template"
    if re.search(r"\buni-?mdm\b", text, re.IGNORECASE):
        return "unimdm"
    if re.search(r"\bdiffusion\b", text, re.IGNORECASE):
        return "diffusion"
    return "auto"


def parse_request(text: str, **overrides) -> SearchSpec:
    """Read a plain-language request into a :class:`SearchSpec` (deterministic rules).

    Raises :class:`RequestNotUnderstood` when the text names nothing searchable, and
    :class:`SpecConflict` when its constraints contradict each other.
    """
    if not isinstance(text, str) or not text.strip():
        raise RequestNotUnderstood("empty request. " + SUPPORTED)
    if len(text) > MAX_REQUEST_CHARS:
        raise RequestNotUnderstood(f"request too long ({len(text)} characters; at most {MAX_REQUEST_CHARS})")
    original, (text, prefixed) = text, _split_prefixes(text)
    negations = _Negations(text)
    required, excluded = set(), set()
    for symbol, start, end in _element_mentions(text):
        (excluded if negations.negated(start, end) else required).add(symbol)
    wanted_groups = []
    for pattern, members, wanted in ELEMENT_GROUPS:
        for match in pattern.finditer(text):
            if negations.negated(match.start(), match.end()):
                excluded.update(members)
            elif wanted and members not in wanted_groups:  # 'with an alkaline earth': one of them
                wanted_groups.append(members)
    for match in vocabulary().earth_abundant.finditer(text):
        if not negations.negated(match.start(), match.end()):
            excluded |= vocabulary().scarce_elements - required
    named, unwanted, oxide_class = _oxoanions(text, negations, prefixed)
    required |= named
    excluded |= unwanted
    anion_class = _anion_class(text) or _prefix_anion_class(prefixed) or oxide_class
    stype, type_unread = _structure_type(text)  # 'kesterite': a ratio and an anion class; the request's own win
    anion_class = anion_class or (stype.anion_class if stype else None)
    if anion_class in vocabulary().mixed_anion_classes:
        required |= set(ANION_CLASSES[anion_class])
    if re.search(r"\bany (?:other )?anions?\b", text, re.IGNORECASE) and re.search(_NEGATION, text, re.IGNORECASE):
        excluded |= ALL_ANIONS
    system = re.search(r"\b([A-Z][a-z]?(?:-[A-Z][a-z]?){1,5})\b(?![a-z])", text)
    allowed = None
    if system and all(Element.is_valid_symbol(s) for s in system.group(1).split("-")):
        allowed = set(system.group(1).split("-"))
    ratio = re.search(r"\b([0-9]+(?:\s*:\s*[0-9]+)+)\b", text)
    family = family_mentioned(_blanked(text, _structure_type_spans(text)))  # 'anti-perovskite' names no perovskite
    stoichiometry = re.sub(r"\s", "", ratio.group(1)) if ratio else (stype.stoichiometry if stype else None)
    if stoichiometry is None and family is None:  # 'a CsPbI3-like compound': that formula's ratio
        stoichiometry = next((found for _, _, found in _formula_types(text) if found), None)
    max_e_above_hull, stability_unread = _stability(text)
    crystal_system, system_unread = _crystal_system(text)
    layered, layered_unread = _layered(text)
    band_gap, tolerance, electronic = _band_gap(text)
    application = application_fields(text, required, excluded)
    if application:  # the application's constraints; what the request states itself wins
        required |= set(application.pop("required_elements", []))
        excluded |= set(application.pop("excluded_elements"))
        if electronic == "metal" and not re.search(r"\bmetal(?:lic)?\b", text, re.IGNORECASE):
            electronic = None  # 'conductor' of an ionic or transparent conductor is not a metal
        if band_gap is not None or electronic is not None:
            application.pop("band_gap", None), application.pop("band_gap_tolerance", None), application.pop("electronic")
        if anion_class:
            application.pop("anion_class")
        application = {k: v for k, v in application.items() if v is not None}
    fields = {
        "request": original.strip(),
        "family": family,
        "stoichiometry": stoichiometry,
        "structure_type": stype.name if stype else None,
        "required_elements": sorted(required),
        "allowed_elements": sorted(allowed) if allowed else None,
        "excluded_elements": sorted(excluded),
        "anion_class": anion_class,
        "n_elements": _element_count(text),
        "ignored_words": ignored_words(text, [*stability_unread, *system_unread, *layered_unread, *type_unread]),
        "novel_against": _novelty(text),
        "band_gap": band_gap,
        "electronic": electronic,
        "spacegroup": _spacegroup(text),
        "crystal_system": crystal_system,
        "layered": layered or bool(stype and stype.layered),
        "max_e_above_hull": max_e_above_hull,
        "density": _density(text),
        "high_density": bool(re.search(r"\b(?:dense|densest|denser|high[- ]density|highest density)\b", text, re.IGNORECASE)),
        "generator": _generator(text),
    }
    if tolerance is not None:
        fields["band_gap_tolerance"] = tolerance
    fields.update(application)
    groups = [sorted(members - excluded) for members in wanted_groups if not members & set(fields["required_elements"])]
    if groups:  # a named group is met by an element the request names ('a rare-earth nickelate with La')
        fields["required_any"] = [*fields.get("required_any", []), *(g for g in groups if g)]
    if stype and stype.require_any:  # 'NASICON': one XO4 polyanion former
        fields["required_any"] = [*fields.get("required_any", []), *([el for el in group if el not in excluded] for group in stype.require_any)]
    if (count := _count(text)) is not None:
        fields["n_results"] = min(count, 100)
    if (sites := _max_sites(text)) is not None:
        fields["max_sites"] = sites
    try:
        spec = SearchSpec(**{**fields, **overrides})
    except ValidationError as exc:
        if any(error["loc"] and error["loc"][0] in overrides for error in exc.errors()):
            raise  # the caller's own arguments are wrong, not the request
        problems = "; ".join(f"{'.'.join(map(str, error['loc'])).replace('_', ' ')}: {error['msg']}" for error in exc.errors())
        raise RequestNotUnderstood(f"the request asks for something outside what genms searches ({problems}). " + SUPPORTED) from None
    searchable = [spec.family, spec.stoichiometry, spec.required_elements, spec.allowed_elements, spec.anion_class,
                  spec.band_gap, spec.electronic, spec.spacegroup, spec.density, spec.high_density]
    if not any(searchable):
        unread = f" (not understood: {', '.join(spec.ignored_words)})" if spec.ignored_words else ""
        raise RequestNotUnderstood(f"could not find a crystal family, composition or property in {original.strip()!r}{unread}. "
                                   + SUPPORTED, spec.ignored_words)
    problems = spec_conflicts(spec)
    if problems:
        raise SpecConflict("the request cannot be satisfied: " + "; ".join(problems))
    return spec


def _template_sizes(spec: SearchSpec) -> list[int]:
    if spec.stoichiometry:
        return [len(spec.stoichiometry.split(":"))]
    if spec.family:
        return [len(t.sites) for t in get_family(spec.family).templates]
    return []


def spec_conflicts(spec: SearchSpec) -> list[str]:
    """Reasons the spec cannot be met (empty when it can)."""
    problems = []
    both = set(spec.required_elements) & set(spec.excluded_elements)
    if both:
        problems.append(f"{', '.join(sorted(both))} both required and excluded")
    if spec.allowed_elements is not None:
        outside = set(spec.required_elements) - set(spec.allowed_elements)
        if outside:
            problems.append(f"{', '.join(sorted(outside))} required but outside the allowed {'-'.join(spec.allowed_elements)} system")
    family = get_family(spec.family) if spec.family else None
    anions = spec.anions()
    if family and family.anions and anions is not None and not anions:
        wanted = f" {spec.anion_class}" if spec.anion_class else ""
        problems.append(
            f"a {family.name.replace('_', ' ')} needs one of the anions {', '.join(sorted(family.anions))}"
            f"{' and a' + wanted + ' anion' if wanted else ''}, but the request rules all of them out"
        )
    elif spec.anion_class and anions is not None and not anions:
        problems.append(f"every {spec.anion_class} anion is excluded")
    sizes = _template_sizes(spec)
    if sizes and len(spec.required_elements) > max(sizes):
        problems.append(f"{len(spec.required_elements)} required elements do not fit a {max(sizes)}-site stoichiometry")
    if family and spec.stoichiometry and not any(
        sorted(map(int, spec.stoichiometry.split(":"))) == sorted(s.count for s in t.sites) for t in family.templates
    ):
        ratios = ", ".join(t.ratio for t in family.templates)
        problems.append(f"ratio {spec.stoichiometry} is not a {family.name.replace('_', ' ')} ratio ({ratios})")
    if spec.electronic == "metal" and spec.band_gap:
        problems.append("a metal cannot have a band gap")
    if spec.crystal_system and spec.spacegroup:
        actual = crystal_system_of(spec.spacegroup)
        if actual != spec.crystal_system and not (spec.crystal_system == "hexagonal" and actual == "trigonal"):
            problems.append(f"space group {spec.spacegroup} is {actual}, not {spec.crystal_system}")
    if spec.n_elements:
        if len(spec.required_elements) > spec.n_elements:
            problems.append(f"{len(spec.required_elements)} required elements do not fit a compound of {spec.n_elements} elements")
        if sizes and spec.n_elements > max(sizes):
            problems.append(f"{spec.n_elements} elements do not fit a {max(sizes)}-site stoichiometry")
        if spec.allowed_elements is not None and len(spec.allowed_elements) < spec.n_elements:
            problems.append(f"the {'-'.join(spec.allowed_elements)} system has fewer than {spec.n_elements} elements")
    return problems
