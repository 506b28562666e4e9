"""The offline request reader's vocabulary, loaded from ``tools/data/vocabulary.yaml``.

The words chemists use for anions, oxide families, element counts, novelty and element groups
are data, so a missing word is added there, not as a code branch in :mod:`tools.spec`.
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
class Vocabulary:
    """Lower-case words and what they mean (element symbols, counts); patterns are compiled, linear."""

    anion_prefixes: dict[str, str]  # 'thio' -> 'S'
    oxoanion_names: dict[str, str]  # 'titanate' -> 'Ti'
    mixed_anion_classes: dict[str, tuple[str, ...]]  # 'oxynitride' -> ('O', 'N')
    element_counts: dict[str, int]  # 'ternary' -> 3
    novelty_phrases: tuple[str, ...]
    element_names: dict[str, str]  # 'sulphur' -> 'S'
    element_groups: tuple[tuple[re.Pattern, frozenset[str]], ...]
    applications: tuple[Application, ...]
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


@lru_cache(maxsize=16)
def _compiled(words: tuple[str, ...], plural: bool) -> re.Pattern:
    spelled = sorted((re.escape(w).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]?") for w in words), key=len, reverse=True)
    return re.compile(rf"\b(?:{'|'.join(spelled)}){'s?' if plural else ''}\b", re.IGNORECASE)


def _alternation(words, plural: bool = False) -> re.Pattern:
    return _compiled(tuple(words), plural)


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """The vocabulary file, checked: every symbol must be an element."""
    from pymatgen.core import Element

    data = yaml.safe_load(VOCABULARY_PATH.read_text(encoding="utf-8"))
    symbols = [*data["anion_prefixes"].values(), *data["oxoanion_names"].values(), *data["element_names"].values(),
               *(s for members in data["mixed_anion_classes"].values() for s in members),
               *(s for members in data["element_groups"].values() for s in members)]
    groups, applications = data["element_groups"], data["applications"]
    symbols += [s for app in applications.values() for s in [app.get("working_ion"), *app.get("exclude", []),
                                                             *(app.get("redox_ceiling") or {}),
                                                             *(x for g in app.get("require_any", []) for x in g)] if s]
    unknown = sorted({s for s in symbols if not Element.is_valid_symbol(s)})
    if unknown:
        raise ValueError(f"{VOCABULARY_PATH.name}: not element symbols: {', '.join(unknown)}")
    words = {*(w for app in applications.values() for pattern in app["words"] for w in re.findall(r"[a-z]+", pattern)),
             *data["anion_prefixes"], *data["oxoanion_names"], *data["mixed_anion_classes"], *data["element_names"],
             *data["property_words"], *(w for phrase in [*data["element_counts"], *data["novelty_phrases"]]
                                        for w in re.findall(r"[a-z]+", phrase)),
             *(w for pattern in groups for w in re.findall(r"[a-z]+", pattern))}
    return Vocabulary(
        anion_prefixes=dict(data["anion_prefixes"]),
        oxoanion_names=dict(data["oxoanion_names"]),
        mixed_anion_classes={k: tuple(v) for k, v in data["mixed_anion_classes"].items()},
        element_counts={k: int(v) for k, v in data["element_counts"].items()},
        novelty_phrases=tuple(data["novelty_phrases"]),
        element_names=dict(data["element_names"]),
        element_groups=tuple((re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE), frozenset(members))
                             for pattern, members in groups.items()),
        applications=tuple(_application(name, entry) for name, entry in applications.items()),
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


def application_named(name: str | None) -> Application | None:
    """The application of that name (None for none or an unknown one)."""
    return next((a for a in vocabulary().applications if a.name == name), None) if name else None
