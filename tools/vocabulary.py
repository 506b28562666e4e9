"""The offline request reader's vocabulary, loaded from ``tools/data/vocabulary.yaml``.

The words chemists use for anions, oxide families, element counts, novelty, element groups,
applications, stability, crystal systems, layering and structure types are data, so a missing
word is added there, not as a code branch in :mod:`tools.spec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

VOCABULARY_PATH = Path(__file__).with_name("data") / "vocabulary.yaml"


@dataclass(frozen=True)
class Application:
    """What an application asks of a compound, as constraints the search acts on."""

    name: str
    pattern: re.Pattern
    why: str
    working_ion: str | None = None
    require_any: tuple[tuple[str, ...], ...] = ()
    exclude: tuple[str, ...] = ()
    band_gap: tuple[float, float] | None = None  # (target, tolerance) eV
    electronic: str | None = None
    anion_class: str | None = None
    redox_ceiling: dict[str, int] = field(default_factory=dict)  # metal -> highest oxidation state in use


@dataclass(frozen=True)
class StabilityWording:
    """A stability wording: ``kind`` 'cut' (``cut`` eV/atom above the hull), 'no_cut' (understood: no cut)
    or 'not_hull' (stability of another kind: air, water, heat; listed as not understood)."""

    name: str
    kind: str
    pattern: str  # a regular expression without capturing groups
    cut: float | None = None
    examples: tuple[str, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class StructureType:
    """A structure type that is no catalogue family, as the constraints it implies."""

    name: str
    pattern: re.Pattern
    why: str
    example: str = ""
    stoichiometry: str | None = None
    anion_class: str | None = None
    require_any: tuple[tuple[str, ...], ...] = ()
    layered: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """Lower-case words and what they mean (element symbols, counts); patterns are compiled, linear."""

    anion_prefixes: dict[str, str]  # 'thio' -> 'S'
    oxoanion_names: dict[str, str]  # 'titanate' -> 'Ti'
    mixed_anion_classes: dict[str, tuple[str, ...]]  # 'oxynitride' -> ('O', 'N')
    element_counts: dict[str, int]  # 'ternary' -> 3
    novelty_phrases: tuple[str, ...]
    element_names: dict[str, str]  # 'sulphur' -> 'S'
    element_groups: tuple[tuple[re.Pattern, frozenset[str], bool], ...]  # (words, members, named = one required)
    earth_abundant: re.Pattern
    scarce_elements: frozenset[str]  # what an earth-abundant compound avoids
    applications: tuple[Application, ...]
    stability_wordings: tuple[StabilityWording, ...]  # in the order they are tried: not_hull, no_cut, cuts
    hull_words: re.Pattern  # what an explicit 'N meV/atom' must be near to count as a hull cut
    crystal_systems: dict[str, str]  # pymatgen's name -> regular expression
    layered_words: tuple[str, ...]  # regular expressions
    structure_types: tuple[StructureType, ...]
    filler_words: frozenset[str]  # phrasing that decides nothing ('find', 'compounds')
    known_words: frozenset[str]  # every word of the vocabulary and the reader's own words, lower case

    @property
    def novelty(self) -> re.Pattern:
        """Any novelty phrase, as whole words (spaces match any whitespace or a hyphen)."""
        return _alternation(self.novelty_phrases)

    @property
    def oxoanions(self) -> re.Pattern:
        """An -ate / -ite word, singular or plural."""
        return _alternation(self.oxoanion_names, plural=True)

    @property
    def counts(self) -> re.Pattern:
        return _alternation(self.element_counts)

    @property
    def stability(self) -> re.Pattern:
        """Any stability wording; group i + 1 matched for ``stability_wordings[i]`` (``match.lastindex - 1``)."""
        return _groups(tuple(w.pattern for w in self.stability_wordings))

    @property
    def crystal_system_words(self) -> re.Pattern:
        """Any crystal-system word; group i + 1 for the i-th system of ``crystal_systems``."""
        return _groups(tuple(self.crystal_systems.values()))

    @property
    def layered(self) -> re.Pattern:
        return _groups(self.layered_words)


@lru_cache(maxsize=16)
def _compiled(words: tuple[str, ...], plural: bool) -> re.Pattern:
    spelled = sorted((re.escape(w).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]?") for w in words), key=len, reverse=True)
    return re.compile(rf"\b(?:{'|'.join(spelled)}){'s?' if plural else ''}\b", re.IGNORECASE)


def _alternation(words, plural: bool = False) -> re.Pattern:
    return _compiled(tuple(words), plural)


@lru_cache(maxsize=16)
def _groups(patterns: tuple[str, ...]) -> re.Pattern:
    """Whole-word alternatives, each in its own group, tried in the order given (case-insensitive)."""
    return re.compile(r"\b(?:" + "|".join(f"({p})" for p in patterns) + r")\b", re.IGNORECASE)


def _regex(pattern: str, where: str) -> str:
    """A vocabulary pattern, checked: it compiles and captures nothing (groups number the alternatives)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{VOCABULARY_PATH.name}: {where}: bad regular expression {pattern!r} ({exc})") from None
    if compiled.groups:
        raise ValueError(f"{VOCABULARY_PATH.name}: {where}: use non-capturing groups (?:...) in {pattern!r}")
    return pattern


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """The vocabulary file, checked: every symbol must be an element."""
    from pymatgen.core import Element

    data = yaml.safe_load(VOCABULARY_PATH.read_text(encoding="utf-8"))
    symbols = [*data["anion_prefixes"].values(), *data["oxoanion_names"].values(), *data["element_names"].values(),
               *(s for members in data["mixed_anion_classes"].values() for s in members),
               *(s for members in data["element_groups"].values() for s in members),
               *(s for members in data["avoid_only_groups"].values() for s in members),
               *data["earth_abundant"]["scarce"]]
    groups, applications = data["element_groups"], data["applications"]
    stability, types = data["stability"], data["structure_types"]
    symbols += [s for app in applications.values() for s in [app.get("working_ion"), *app.get("exclude", []),
                                                             *(app.get("redox_ceiling") or {}),
                                                             *(x for g in app.get("require_any", []) for x in g)] if s]
    symbols += [x for entry in types.values() for g in entry.get("require_any", []) for x in g]
    unknown = sorted({s for s in symbols if not Element.is_valid_symbol(s)})
    if unknown:
        raise ValueError(f"{VOCABULARY_PATH.name}: not element symbols: {', '.join(unknown)}")
    words = {*(w for app in applications.values() for pattern in app["words"] for w in re.findall(r"[a-z]+", pattern)),
             *data["anion_prefixes"], *data["oxoanion_names"], *data["mixed_anion_classes"], *data["element_names"],
             *data["property_words"], *(w for phrase in [*data["element_counts"], *data["novelty_phrases"]]
                                        for w in re.findall(r"[a-z]+", phrase)),
             *(w for pattern in [*groups, *data["avoid_only_groups"], data["earth_abundant"]["words"]]
               for w in re.findall(r"[a-z]+", pattern)),
             *(w for pattern in [*stability["no_cut"], *(c["words"] for c in stability["cuts"].values()), stability["hull_words"],
                                 *data["crystal_systems"].values(), *data["layered"],
                                 *(p for entry in types.values() for p in entry["words"])]
               for w in re.findall(r"[a-z]+", pattern)),
             *(w for name in types for w in re.findall(r"[a-z]+", name.lower())),
             *(w for entry in stability["cuts"].values() for e in entry.get("examples", []) for w in re.findall(r"[a-z]+", e))}
    wordings = [StabilityWording(f"not_hull {i + 1}", "not_hull", _regex(p, "stability.not_hull"))
                for i, p in enumerate(stability["not_hull"])]
    wordings += [StabilityWording(f"no_cut {i + 1}", "no_cut", _regex(p, "stability.no_cut")) for i, p in enumerate(stability["no_cut"])]
    wordings += [StabilityWording(name, "cut", _regex(entry["words"], f"stability.cuts.{name}"), float(entry["cut"]),
                                  tuple(entry.get("examples", [])), entry.get("why", ""))
                 for name, entry in stability["cuts"].items()]
    return Vocabulary(
        anion_prefixes=dict(data["anion_prefixes"]),
        oxoanion_names=dict(data["oxoanion_names"]),
        mixed_anion_classes={k: tuple(v) for k, v in data["mixed_anion_classes"].items()},
        element_counts={k: int(v) for k, v in data["element_counts"].items()},
        novelty_phrases=tuple(data["novelty_phrases"]),
        element_names=dict(data["element_names"]),
        element_groups=tuple((re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE), frozenset(members), wanted)
                             for wanted, table in ((True, groups), (False, data["avoid_only_groups"]))
                             for pattern, members in table.items()),
        earth_abundant=re.compile(rf"\b(?:{data['earth_abundant']['words']})\b", re.IGNORECASE),
        scarce_elements=frozenset(data["earth_abundant"]["scarce"]),
        applications=tuple(_application(name, entry) for name, entry in applications.items()),
        stability_wordings=tuple(wordings),
        hull_words=re.compile(stability["hull_words"], re.IGNORECASE),
        crystal_systems={name: _regex(p, f"crystal_systems.{name}") for name, p in data["crystal_systems"].items()},
        layered_words=tuple(_regex(p, "layered") for p in data["layered"]),
        structure_types=tuple(_structure_type(name, entry) for name, entry in types.items()),
        filler_words=frozenset(str(w).lower() for w in data["filler_words"]),
        known_words=frozenset(str(w).lower() for w in words),
    )


def _application(name: str, entry: dict) -> Application:
    gap = entry.get("band_gap")
    return Application(
        name=name, pattern=re.compile(rf"\b(?:{'|'.join(entry['words'])})\b", re.IGNORECASE), why=entry["why"],
        working_ion=entry.get("working_ion"), require_any=tuple(tuple(g) for g in entry.get("require_any", [])),
        exclude=tuple(entry.get("exclude", [])), band_gap=(float(gap[0]), float(gap[1])) if gap else None,
        electronic=entry.get("electronic"), anion_class=entry.get("anion_class"),
        redox_ceiling={el: int(q) for el, q in (entry.get("redox_ceiling") or {}).items()})


def _structure_type(name: str, entry: dict) -> StructureType:
    words = [_regex(p, f"structure_types.{name}") for p in entry["words"]]
    return StructureType(
        name=name, pattern=re.compile(rf"\b(?:{'|'.join(words)})\b", re.IGNORECASE), why=" ".join(entry["why"].split()),
        example=entry.get("example", ""), stoichiometry=entry.get("stoichiometry"), anion_class=entry.get("anion_class"),
        require_any=tuple(tuple(g) for g in entry.get("require_any", [])), layered=bool(entry.get("layered", False)))


def structure_type_named(name: str | None) -> StructureType | None:
    """The structure type of that name (None for none or an unknown one)."""
    return next((t for t in vocabulary().structure_types if t.name == name), None) if name else None


def application_named(name: str | None) -> Application | None:
    """The application of that name (None for none or an unknown one)."""
    return next((a for a in vocabulary().applications if a.name == name), None) if name else None
