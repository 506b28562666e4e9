"""The ``knowledge`` collection: articles split into chunks, each with its title, source and kind.

Kinds: ``seed`` (articles genms writes itself), ``wikipedia`` (fetched, with their URLs) and
``user`` (added with ``genms knowledge add``). Adding an article again replaces its chunks.
Fetched articles carry ``fetched_at`` (Unix time) and ``revision`` in their chunks' metadata,
so the caller can tell a cached copy's age (:func:`fetched_epoch`) and mark old ones stale.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from memory.vectors import collection, similarity, write_lock

COLLECTION = "knowledge"
CHUNK_CHARS = 900
OVERLAP_CHARS = 150
KINDS = ("seed", "wikipedia", "user")


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk: its text, the article's title and source (URL or genms path), score in [-1, 1].

    ``fetched_at``: when a fetched (Wikipedia) article was downloaded (UTC, ISO 8601), else None;
    ``stale``: that copy is older than the allowed age and could not be refreshed.
    """

    text: str
    title: str
    source: str
    score: float
    kind: str
    chunk: int
    fetched_at: str | None = None
    stale: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _pieces(paragraph: str) -> list[str]:
    """Sentences of an over-long paragraph, each at most CHUNK_CHARS."""
    if len(paragraph) <= CHUNK_CHARS:
        return [paragraph]
    pieces = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        pieces += [sentence[i:i + CHUNK_CHARS] for i in range(0, len(sentence), CHUNK_CHARS)]
    return pieces


def chunk_text(text: str) -> list[str]:
    """Split text at paragraphs (then sentences) into chunks of at most ~CHUNK_CHARS characters.

    Consecutive chunks share up to OVERLAP_CHARS of context so that a fact that straddles a
    boundary is still found whole in one of them.
    """
    paragraphs = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text)]
    pieces = [piece for paragraph in paragraphs if paragraph for piece in _pieces(paragraph)]
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + len(piece) + 1 > CHUNK_CHARS:
            chunks.append(current)
            tail = current[-OVERLAP_CHARS:]
            current = tail[tail.find(" ") + 1:] if " " in tail else ""
        current = f"{current} {piece}".strip()
    if current:
        chunks.append(current)
    return chunks


def _iso(epoch: float) -> str | None:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return None


def fetched_epoch(metadata: dict) -> float:
    """When an article's copy was fetched (Unix time): ``fetched_at``, else ``added_at`` (older stores), else 0."""
    value = metadata.get("fetched_at")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
        return float(value)
    try:
        return float(calendar.timegm(time.strptime(str(metadata.get("added_at")), "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError, OverflowError):
        return 0.0


def _source_key(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:16]


class KnowledgeStore:
    """Chunked articles in the vector store, searched by meaning."""

    def __init__(self):
        self._collection = collection(COLLECTION)

    def add(self, title: str, text: str, source: str, kind: str, extra: dict | None = None, embeddings=None) -> int:
        """Index an article (replacing an earlier copy from the same source); returns its chunk count.

        ``embeddings``: the embeddings of ``chunk_text(text)``, one per chunk, when the caller
        already has them (the store's embedding function computes them otherwise).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown knowledge kind {kind!r}; one of {', '.join(KINDS)}")
        chunks = chunk_text(text)
        if not chunks:
            raise ValueError(f"article {title!r} has no text")
        if embeddings is not None and len(embeddings) != len(chunks):
            raise ValueError(f"{len(embeddings)} embeddings for the {len(chunks)} chunks of {title!r}")
        key = _source_key(source)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        metadata = {"title": title, "source": source, "kind": kind, "source_key": key, "added_at": stamp, **(extra or {})}
        with write_lock():
            self._collection.delete(where={"source_key": key})
            self._collection.add(
                ids=[f"{key}-{i}" for i in range(len(chunks))], documents=chunks, embeddings=embeddings,
                metadatas=[{**metadata, "chunk": i} for i in range(len(chunks))])
        return len(chunks)

    def has(self, source: str) -> bool:
        return bool(self._collection.get(where={"source_key": _source_key(source)}, limit=1, include=[])["ids"])

    def chunk_count(self, source: str) -> int:
        return len(self._collection.get(where={"source_key": _source_key(source)}, include=[])["ids"])

    def sources(self, kind: str | None = None) -> dict[str, dict]:
        """Source -> metadata of the first chunk, for every article (of one kind)."""
        found = self._collection.get(where={"kind": kind} if kind else None, include=["metadatas"])
        return {m["source"]: m for m in found["metadatas"] if m.get("chunk") == 0}

    def delete_source(self, source: str) -> None:
        """Remove an article's chunks."""
        with write_lock():
            self._collection.delete(where={"source_key": _source_key(source)})

    def delete_kind(self, kind: str) -> None:
        with write_lock():
            self._collection.delete(where={"kind": kind})

    def count(self) -> int:
        return self._collection.count()

    def query(self, text: str, k: int = 5, kinds: tuple[str, ...] | None = None,
              is_stale: Callable[[dict], bool] | None = None) -> list[Passage]:
        """The ``k`` chunks closest in meaning to ``text``, best first.

        ``is_stale(metadata)`` marks the passages of fetched (Wikipedia) articles whose copy is too old.
        """
        if not self.count():
            return []
        where = {"kind": {"$in": list(kinds)}} if kinds else None
        found = self._collection.query(query_texts=[text], n_results=min(k, self.count()), where=where,
                                       include=["documents", "metadatas", "distances"])
        passages = []
        for doc, meta, distance in zip(found["documents"][0], found["metadatas"][0], found["distances"][0]):
            fetched = meta["kind"] == "wikipedia"
            passages.append(Passage(
                text=doc, title=meta["title"], source=meta["source"], score=similarity(distance), kind=meta["kind"],
                chunk=int(meta["chunk"]), fetched_at=_iso(fetched_epoch(meta)) if fetched else None,
                stale=bool(fetched and is_stale and is_stale(meta))))
        return passages
