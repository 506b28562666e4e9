"""The ``candidates`` collection: every structure a search produced, searchable by meaning.

One entry per candidate of a recorded run, with its formula, family, energies (eV/atom),
verdicts, run id and CIF path, and a one-paragraph description that semantic queries
("the spinels we found", "a stable Mn oxide") are matched against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from memory.vectors import collection, similarity, write_lock

COLLECTION = "candidates"


@dataclass(frozen=True)
class RememberedCandidate:
    """A candidate from an earlier run; energies in eV/atom, ``score`` the query similarity."""

    run_id: str
    rank: int
    formula: str
    reduced_formula: str
    family: str
    prototype: str
    generator: str
    spacegroup: str
    formation_energy_per_atom: float | None
    e_above_hull: float | None
    good: bool
    novel: bool
    cif_path: str
    request: str
    description: str
    score: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _number(metadata: dict, key: str) -> float | None:
    value = metadata.get(key)
    return None if value is None or value == "" else float(value)


def _from_metadata(metadata: dict, description: str, score: float | None) -> RememberedCandidate:
    return RememberedCandidate(
        run_id=metadata["run_id"], rank=int(metadata["rank"]), formula=metadata["formula"],
        reduced_formula=metadata["reduced_formula"], family=metadata["family"], prototype=metadata["prototype"],
        generator=metadata["generator"], spacegroup=metadata["spacegroup"],
        formation_energy_per_atom=_number(metadata, "formation_energy_per_atom"),
        e_above_hull=_number(metadata, "e_above_hull"), good=bool(metadata["good"]), novel=bool(metadata["novel"]),
        cif_path=metadata["cif_path"], request=metadata["request"], description=description, score=score)


def _clean(metadata: dict) -> dict:
    """ChromaDB metadata holds str/int/float/bool only: drop missing values."""
    return {key: value for key, value in metadata.items() if value is not None}


class CandidateMemory:
    """Candidates of recorded runs in the vector store."""

    def __init__(self):
        self._collection = collection(COLLECTION)

    def add(self, entries: list[tuple[dict, str]]) -> int:
        """Store ``(metadata, description)`` pairs; ids are ``<run id>-<rank>`` so re-adding replaces."""
        if not entries:
            return 0
        with write_lock():
            self._collection.upsert(
                ids=[f"{m['run_id']}-{m['rank']:03d}" for m, _ in entries],
                documents=[description for _, description in entries],
                metadatas=[_clean(m) for m, _ in entries])
        return len(entries)

    def count(self) -> int:
        return self._collection.count()

    def query(self, text: str, k: int = 10, family: str | None = None, good_only: bool = False) -> list[RememberedCandidate]:
        """The ``k`` remembered candidates closest in meaning to ``text`` (optionally of one family / good only)."""
        conditions = ([{"family": family}] if family else []) + ([{"good": True}] if good_only else [])
        where = conditions[0] if len(conditions) == 1 else ({"$and": conditions} if conditions else None)
        matching = len(self._collection.get(where=where, include=[])["ids"]) if where else self.count()
        if not matching:
            return []
        found = self._collection.query(query_texts=[text], n_results=min(k, matching), where=where,
                                       include=["documents", "metadatas", "distances"])
        return [_from_metadata(m, d, similarity(s)) for d, m, s in
                zip(found["documents"][0], found["metadatas"][0], found["distances"][0])]

    def all(self, family: str | None = None, good_only: bool = False) -> list[RememberedCandidate]:
        """Every remembered candidate (of one family / good only), newest run first, then by rank."""
        conditions = ([{"family": family}] if family else []) + ([{"good": True}] if good_only else [])
        where = conditions[0] if len(conditions) == 1 else ({"$and": conditions} if conditions else None)
        found = self._collection.get(where=where, include=["documents", "metadatas"])
        entries = [_from_metadata(m, d, None) for d, m in zip(found["documents"], found["metadatas"])]
        return sorted(entries, key=lambda c: (c.run_id, -c.rank), reverse=True)

    def reduced_formulas(self) -> set[str]:
        """Reduced formulae of every remembered candidate (for novelty against earlier runs)."""
        found = self._collection.get(include=["metadatas"])
        return {m["reduced_formula"] for m in found["metadatas"]}


def cif_location(folder: Path, relative: str) -> str:
    """Absolute path of a run's CIF, as stored with the candidate."""
    return str(Path(folder) / relative)
