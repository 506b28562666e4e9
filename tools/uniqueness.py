"""Uniqueness checker: is a formula already known in MP, ICSD or OQMD, or in a user's list?

GenMS semantics: formulas are compared by reduced composition, so A2B4 counts as known
when AB2 is. The lookup uses a compact index committed at ``tools/data/formula_index.tsv.gz``
(canonical key -> sources), built from the shared ``formulas/known_formulas.csv.gz`` by
``python -m tools.uniqueness build``; parsing 400k formulas takes about half a minute, loading
the index well under a second.
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tools.formula import FormulaError, ParsedFormula, parse_formula

INDEX_PATH = Path(__file__).with_name("data") / "formula_index.tsv.gz"
SOURCES = ("MP", "ICSD", "OQMD")
# GenMS's uniqueness metric: a formula is known when its reduced form is in MP or ICSD.
GENMS_REFERENCE = ("MP", "ICSD")


class KnownFormulaIndex:
    """Canonical formula key -> the known sets (MP, ICSD, OQMD) that hold it."""

    def __init__(self, entries: dict[str, frozenset[str]]):
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterable[tuple[str, frozenset[str]]]:
        """(canonical key such as ``Fe2O3``, the known sets holding it) for every indexed formula."""
        return self._entries.items()

    def sources(self, formula: str | ParsedFormula) -> list[str]:
        """Known sets holding the formula's reduced composition, in the order MP, ICSD, OQMD."""
        parsed = parse_formula(formula) if isinstance(formula, str) else formula
        found = self._entries.get(parsed.key, frozenset())
        return [source for source in SOURCES if source in found]

    def is_known(self, formula: str | ParsedFormula, against: Iterable[str] = GENMS_REFERENCE) -> bool:
        """Is the formula in any of the ``against`` sets?"""
        return bool(set(self.sources(formula)) & set(against))

    @classmethod
    def read(cls, path: Path = INDEX_PATH) -> KnownFormulaIndex:
        """Load an index file written by :func:`write_index`."""
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
        entries, sets = {}, {}  # a few distinct source sets, shared (400k lines: ~2x faster, less memory)
        for line in text.splitlines():
            key, flags = line.split("\t")
            entries[key] = sets.get(flags) or sets.setdefault(flags, frozenset(flags.split(",")))
        return cls(entries)


def build_entries(known_formulas_csv: Path) -> dict[str, frozenset[str]]:
    """Key every formula of the shared known-formulas table; sources of equal keys are merged."""
    import pandas as pd

    table = pd.read_csv(known_formulas_csv)
    merged: dict[str, set[str]] = {}
    for formula, sources in zip(table["reduced_formula"], table["sources"]):
        try:
            key = parse_formula(str(formula)).key
        except FormulaError:
            continue
        merged.setdefault(key, set()).update(str(sources).split(";"))
    return {key: frozenset(s for s in SOURCES if s in found) for key, found in merged.items()}


def write_index(entries: dict[str, frozenset[str]], path: Path = INDEX_PATH) -> None:
    """Write the index atomically (sorted keys, so rebuilds are byte-for-byte reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{key}\t{','.join(s for s in SOURCES if s in entries[key])}\n" for key in sorted(entries))
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(lines.encode("utf-8"))
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


@lru_cache(maxsize=1)
def known_formula_index() -> KnownFormulaIndex:
    """The committed index, loaded once; built from the shared data if the file is missing."""
    if INDEX_PATH.is_file():
        return KnownFormulaIndex.read(INDEX_PATH)
    from generators.datasets import KNOWN_FORMULAS_FILE, data_file

    return KnownFormulaIndex(build_entries(data_file(KNOWN_FORMULAS_FILE)))


@lru_cache(maxsize=64)
def exclusion_keys(formulas: tuple[str, ...]) -> frozenset[str]:
    """Uniqueness keys of a user's exclusion list; :class:`FormulaError` naming the first bad entry."""
    keys = set()
    for formula in formulas:
        try:
            keys.add(parse_formula(formula).key)
        except FormulaError as exc:
            raise FormulaError(f"exclusion list: {exc}") from exc
    return frozenset(keys)


@dataclass(frozen=True)
class Uniqueness:
    """Where a formula is known. ``unique`` is GenMS's verdict: in neither MP nor ICSD, nor excluded."""

    reduced_formula: str
    known_in: list[str]
    in_exclusion_list: bool
    unique: bool


def check_uniqueness(
    formula: str | ParsedFormula,
    exclude: Iterable[str] = (),
    against: Iterable[str] = GENMS_REFERENCE,
) -> Uniqueness:
    """Uniqueness of a formula against the known sets and an optional user exclusion list."""
    parsed = parse_formula(formula) if isinstance(formula, str) else formula
    known_in = known_formula_index().sources(parsed)
    excluded = parsed.key in exclusion_keys(tuple(exclude))
    unique = not excluded and not (set(known_in) & set(against))
    return Uniqueness(parsed.reduced_formula, known_in, excluded, unique)


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.uniqueness build [--out PATH]``: rebuild the committed index."""
    from generators.datasets import KNOWN_FORMULAS_FILE, data_file

    parser = argparse.ArgumentParser(description="Build the known-formula index from the shared data.")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--out", type=Path, default=INDEX_PATH)
    args = parser.parse_args(argv)
    source = data_file(KNOWN_FORMULAS_FILE)
    entries = build_entries(source)
    write_index(entries, args.out)
    counts = {s: sum(s in found for found in entries.values()) for s in SOURCES}
    print(f"wrote {args.out} from {source}: {len(entries)} keys; " + ", ".join(f"{s} {n}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
