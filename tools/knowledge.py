"""Knowledge retrieval for the agent: seeded articles, Wikipedia, and the memory of past candidates.

Seeded articles are written by genms itself (one per family of the catalogue, from its
templates, prototypes, space groups and known members, plus the crystallographic notes in
``tools/data/knowledge``) and indexed at first use, so retrieval works on a fresh offline
machine. Wikipedia articles are fetched for a query when online (with a timeout), chunked
and cached in the store with their URLs, fetch time and revision: the same query later needs
no network until the copy is older than ``GENMS_WIKIPEDIA_MAX_AGE_DAYS`` (30 days; 0: refetch
every time), when it is refetched and its chunks replaced; offline, old copies are still served,
marked ``stale``. Retrieved text reaches prompts only through :func:`format_passages`, in a data
block that it cannot close (:mod:`tools.fencing`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from memory.candidates import CandidateMemory, cif_location
from memory.knowledge import KnowledgeStore, Passage, chunk_text, fetched_epoch
from memory.vectors import store_dir, write_lock
from tools.families import FAMILIES, CrystalFamily, family_members
from tools.files import InputFileError, read_bounded_text
from tools.fencing import attribute, data_json, fence
from tools.limits import MAX_PASSAGE_CHARS, MAX_PROMPT_PASSAGES, WIKIPEDIA_MAX_AGE_DAYS

log = logging.getLogger(__name__)

NOTES_DIR = Path(__file__).with_name("data") / "knowledge"
SEED_MARKER = "seed.json"
WIKIPEDIA_API = "https://en.wikipedia.org/w/api.php"
WIKIPEDIA_ARTICLES_PER_QUERY = 2
WIKIPEDIA_MAX_CHARS = 60_000
WIKIPEDIA_RETRY_AFTER_S = 300.0  # after a network failure, stay offline this long (no repeated timeouts)
WIKIPEDIA_REFRESH_PER_QUERY = 4  # expired articles among a query's passages refetched at most (bounds the wait)
CLOCK_SKEW_S = 86_400.0  # a copy "fetched" more than a day in the future (a clock set wrong) counts as expired
QUERY_CACHE = "wikipedia_queries.json"
MAX_QUERY_CHARS = 2000
MAX_K = 50
MAX_FILE_BYTES = 2_000_000
USER_AGENT = "genms/0.1 (crystal structure search; offline-first; https://github.com/genms)"


class KnowledgeError(ValueError):
    """A retrieval request that cannot be served (empty query, k out of range, unreadable file)."""


# --- seeded articles -------------------------------------------------------------------------

@cache
def _spacegroup_label(number: int) -> str:
    # The symbol alone: building a SpaceGroup (SpaceGroup.from_int_number(n).symbol, the same
    # text for all 230 groups) generates its symmetry operations, ~0.1 s a group.
    from pymatgen.symmetry.groups import sg_symbol_from_int_number

    return f"{sg_symbol_from_int_number(number)} (No. {number})"


def family_article(family: CrystalFamily) -> tuple[str, str]:
    """(title, text) of the project's article on one family of the catalogue."""
    templates = "; ".join(f"{t.name} (atom ratio {t.ratio})" for t in family.templates)
    groups = ", ".join(_spacegroup_label(n) for n in family.spacegroups)
    members = family_members(family.name)
    examples = ", ".join(members[:: max(1, len(members) // 15)][:15]) if members else "none in the shared data"
    aliases = ", ".join(family.aliases) or family.name
    text = f"""# {family.title}

The {family.name.replace('_', ' ')} family ({aliases}) in genms's crystal families catalogue. {family.description}

Stoichiometry: {templates}. Anions: {', '.join(sorted(family.anions))}. Site chemistry: {family.roles}

Prototype structures: {'; '.join(family.prototypes)}. Typical space groups: {groups}.

Known members: the Materials Project structures of the shared data include {len(members)} reduced formulae of this family with its atom ratio and a typical space group, for example {examples}. A formula fits the family when its reduced atom ratio matches a template and each site takes an allowed element."""
    return f"{family.title} (genms catalogue)", text


@cache
def seed_articles() -> tuple[tuple[str, str, str], ...]:
    """(title, text, source) of every article genms writes itself."""
    articles = [(title, text, f"genms://knowledge/families/{family.name}") for family in FAMILIES
                for title, text in [family_article(family)]]
    for path in sorted(NOTES_DIR.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        title = text.splitlines()[0].lstrip("# ").strip()
        articles.append((title, text, f"genms://knowledge/notes/{path.stem}"))
    return tuple(articles)


def _seed_fingerprint(articles: tuple[tuple[str, str, str], ...]) -> str:
    return hashlib.sha256(json.dumps(articles).encode()).hexdigest()[:16]


@cache
def _seed_embeddings() -> tuple:
    """Each seeded article's chunk embeddings (as the store computes them: one call per article),
    computed once per process: seeding another store (another GENMS_HOME or GENMS_VECTOR_DIR)
    reuses them instead of running the embedding model over the same text again."""
    from memory.vectors import embedding_function

    embed = embedding_function()
    return tuple(embed(chunk_text(text)) for _, text, _ in seed_articles())


def ensure_seeded(store: KnowledgeStore | None = None) -> KnowledgeStore:
    """Index the seeded articles unless this exact version already is (re-indexed after changes)."""
    store = store or KnowledgeStore()
    marker = store_dir() / SEED_MARKER
    articles = seed_articles()
    fingerprint = _seed_fingerprint(articles)
    if _read_json(marker).get("fingerprint") == fingerprint and store.sources("seed"):
        return store
    with write_lock():
        if _read_json(marker).get("fingerprint") == fingerprint and store.sources("seed"):
            return store  # another process seeded it while we waited
        store.delete_kind("seed")
        for (title, text, source), embeddings in zip(articles, _seed_embeddings()):
            store.add(title, text, source, "seed", embeddings=embeddings)
        _write_json(marker, {"fingerprint": fingerprint, "articles": len(articles)})
    return store


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, payload: dict) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, indent=1)
    os.replace(temporary, path)


# --- Wikipedia -------------------------------------------------------------------------------

class _TimedRequests:
    """Stands in for ``requests`` inside the ``wikipedia`` package, which sets no timeout itself."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    def get(self, url, **kwargs):
        import requests

        response = requests.get(url, timeout=self.timeout_s, **kwargs)
        response.raise_for_status()
        return response


def wikipedia_configured() -> bool:
    """False when ``GENMS_OFFLINE`` is set: then no request leaves the machine."""
    return os.environ.get("GENMS_OFFLINE", "").lower() not in ("1", "true", "yes")


@cache
def _offline_until() -> list[float]:
    return [0.0]


def _wikipedia():
    """The ``wikipedia`` package's module, pointed at ``GENMS_WIKIPEDIA_API`` with a timeout."""
    import wikipedia.wikipedia as module

    module.API_URL = os.environ.get("GENMS_WIKIPEDIA_API", WIKIPEDIA_API)
    module.requests = _TimedRequests(float(os.environ.get("GENMS_WIKIPEDIA_TIMEOUT", "5")))
    module.USER_AGENT = USER_AGENT
    return module


def _now() -> float:
    """The clock that ages cached articles (tests move it)."""
    return time.time()


def wikipedia_max_age_s() -> float:
    """How old (s) a cached Wikipedia article may be before it is refetched: ``GENMS_WIKIPEDIA_MAX_AGE_DAYS``.

    Default 30 days; 0 refetches every time it is needed; ``inf`` never expires. A value that is
    not a number, or negative, is ignored with a warning (the default applies).
    """
    raw = os.environ.get("GENMS_WIKIPEDIA_MAX_AGE_DAYS", "").strip()
    days = WIKIPEDIA_MAX_AGE_DAYS
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if value >= 0:  # False for NaN and negatives
            days = value
        else:
            log.warning("GENMS_WIKIPEDIA_MAX_AGE_DAYS=%r is not a number of days >= 0; using %g", raw[:40], days)
    return days * 86_400.0


def _fresh(metadata: dict, now: float, max_age_s: float) -> bool:
    """Is a cached copy (its metadata: ``fetched_at``) young enough to serve without asking Wikipedia?"""
    if max_age_s <= 0:
        return False
    age = now - fetched_epoch(metadata)
    return -CLOCK_SKEW_S < age < max_age_s


def _stale_test(started: float, max_age_s: float):
    """Is a cached copy stale for a request that began at ``started``? (A copy fetched by this request is not, even
    when the maximum age is 0.)"""
    return lambda metadata: not _fresh(metadata, _now(), max_age_s) and fetched_epoch(metadata) < int(started)


def _unavailable() -> str | None:
    """Why Wikipedia is not asked now (off, or unreachable a moment ago), or None when it may be."""
    if not wikipedia_configured():
        return "wikipedia: off (GENMS_OFFLINE)"
    if time.time() < _offline_until()[0]:
        return "wikipedia: unreachable earlier, store only"
    return None


def _went_offline(exc: Exception) -> str:
    _offline_until()[0] = time.time() + WIKIPEDIA_RETRY_AFTER_S
    log.info("Wikipedia unreachable (%s); using the store only", exc)
    return f"wikipedia: unreachable ({type(exc).__name__}), store only"


def _query_key(query: str) -> str:
    return " ".join(query.lower().split())


def _cached_query(entry) -> tuple[list[str] | None, float]:
    """(article URLs, when the search ran) of a query cache entry; older caches held the URL list alone."""
    if isinstance(entry, dict) and isinstance(entry.get("urls"), list):
        return [str(url) for url in entry["urls"]], fetched_epoch({"fetched_at": entry.get("searched_at")})
    if isinstance(entry, list):
        return [str(url) for url in entry], 0.0
    return None, 0.0


def _fetch_article(module, title: str, store: KnowledgeStore, force: bool = False) -> str:
    """Fetch one article into the store unless a fresh copy of its title is cached; returns its URL.

    An expired copy (or any copy, with ``force``) is refetched: the new text replaces its chunks,
    with the fetch time and revision id in their metadata, and copies of the same title under
    another URL (a renamed page) are removed.
    """
    now, max_age = _now(), wikipedia_max_age_s()
    same_title = {source: meta for source, meta in store.sources("wikipedia").items() if meta.get("title") == title}
    for source, meta in same_title.items():
        if not force and _fresh(meta, now, max_age):
            return source
    page = module.page(title, auto_suggest=False, redirect=True)
    text = page.content[:WIKIPEDIA_MAX_CHARS]
    revision = getattr(page, "_revision_id", None)  # set by .content (the wikipedia package's extract request)
    store.add(page.title, text, page.url, "wikipedia",
              {"revision": "" if revision is None else str(revision), "fetched_at": int(now)})
    for source in same_title:
        if source != page.url:
            store.delete_source(source)
    return page.url


def fetch_wikipedia(query: str, store: KnowledgeStore, articles: int = WIKIPEDIA_ARTICLES_PER_QUERY) -> str:
    """Make sure Wikipedia's best articles for ``query`` are in the store, fresh; returns a status line.

    A query answered before is served from the store without network while its articles are
    younger than :func:`wikipedia_max_age_s`; after that, the search runs again and expired
    articles are refetched. Network or API failures never raise: the status says what happened
    and the store answers alone (expired copies included, marked stale by :func:`search_knowledge`).
    """
    cache_path = store_dir() / QUERY_CACHE
    key = _query_key(query)
    now, max_age = _now(), wikipedia_max_age_s()
    cached, searched_at = _cached_query(_read_json(cache_path).get(key))
    expired = 0
    if cached is not None and all(store.has(url) for url in cached):
        metadata = store.sources("wikipedia")
        expired = sum(not _fresh(metadata.get(url, {}), now, max_age) for url in cached)
        if not expired and _fresh({"fetched_at": searched_at}, now, max_age):
            return f"wikipedia: cached ({len(cached)} articles, no network)"
    unavailable = _unavailable()
    if unavailable:
        return unavailable + (f"; {expired} cached articles past the maximum age, served as stale" if expired else "")
    module = _wikipedia()
    try:
        # The package memoises search() for the life of the process, unbounded and whatever the
        # endpoint: call the function itself (the query cache above decides when to search again).
        search = getattr(module.search, "fn", module.search)
        titles = search(query, results=articles)
        urls = []
        for title in titles[:articles]:
            try:
                urls.append(_fetch_article(module, title, store))
            except (module.DisambiguationError, module.PageError, ValueError) as exc:  # ValueError: an empty page
                log.info("skipping Wikipedia page %r: %s", title, exc)
    except Exception as exc:  # connection, timeout, HTTP or malformed answers: store only
        return _went_offline(exc)
    with write_lock():
        queries = _read_json(cache_path)
        queries[key] = {"urls": urls, "searched_at": int(now)}
        _write_json(cache_path, queries)
    return f"wikipedia: fetched {len(urls)} articles"


def refresh_expired(passages: list[Passage], store: KnowledgeStore, limit: int = WIKIPEDIA_REFRESH_PER_QUERY) -> int:
    """Refetch the expired Wikipedia articles among ``passages`` (at most ``limit``); returns how many.

    An article Wikipedia no longer has (deleted, or now a disambiguation page) leaves the store.
    Does nothing offline; a network failure stops it (the store answers alone).
    """
    titles = {p.source: p.title for p in passages if p.kind == "wikipedia" and p.stale}
    if not titles or _unavailable():
        return 0
    module, refreshed = _wikipedia(), 0
    for source, title in list(titles.items())[:limit]:
        try:
            _fetch_article(module, title, store, force=True)
            refreshed += 1
        except (module.DisambiguationError, module.PageError) as exc:
            log.info("Wikipedia no longer has %r (%s): removed from the store", title, exc)
            store.delete_source(source)
            refreshed += 1
        except ValueError as exc:  # an empty page: keep the old copy, marked stale
            log.info("Wikipedia page %r not refreshed: %s", title, exc)
        except Exception as exc:  # connection, timeout, HTTP or malformed answers
            _went_offline(exc)
            break
    return refreshed


# --- retrieval -------------------------------------------------------------------------------

@dataclass
class Retrieval:
    """Passages for a query, best first, and how Wikipedia was consulted."""

    query: str
    passages: list[Passage]
    wikipedia: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"query": self.query, "wikipedia": self.wikipedia, "seconds": round(self.seconds, 3),
                "passages": [p.as_dict() for p in self.passages]}


def _check_query(query: str, k: int) -> str:
    query = (query or "").strip()
    if not query:
        raise KnowledgeError("empty query: say what to look up, e.g. 'pyrochlore A2B2O7'")
    if len(query) > MAX_QUERY_CHARS:
        raise KnowledgeError(f"query of {len(query)} characters; at most {MAX_QUERY_CHARS}")
    if not 1 <= k <= MAX_K:
        raise KnowledgeError(f"k = {k}: ask for 1 to {MAX_K} passages")
    return query


def search_knowledge(query: str, k: int = 5, wikipedia: bool = True) -> Retrieval:
    """The ``k`` passages closest to ``query`` (seeded, cached Wikipedia, user articles).

    With ``wikipedia``, expired Wikipedia articles among the passages are refetched when online
    (:func:`refresh_expired`); those that cannot be are served with ``stale`` set.
    """
    started = time.perf_counter()
    query = _check_query(query, k)
    store = ensure_seeded()
    is_stale = _stale_test(_now(), wikipedia_max_age_s())
    status = fetch_wikipedia(query, store) if wikipedia else "wikipedia: not asked"
    passages = store.query(query, k, is_stale=is_stale)
    if wikipedia and any(p.stale for p in passages):
        refreshed = refresh_expired(passages, store)
        if refreshed:
            status += f"; refreshed {refreshed} expired articles"
            passages = store.query(query, k, is_stale=is_stale)
    return Retrieval(query, passages, status, time.perf_counter() - started)


def retrieve(query: str, k: int = 5, wikipedia: bool = True) -> list[Passage]:
    """Passages for ``query``, best first (see :func:`search_knowledge`)."""
    return search_knowledge(query, k, wikipedia).passages


PASSAGES_NOTE = ("Reference data retrieved for the request: passages of articles (genms's own, Wikipedia, the user's "
                 "notes), each a <passage> tag with its title and source followed by its text as one JSON string.")


def format_passages(passages: list[Passage | dict | str]) -> str:
    """Passages for a prompt, in a data block they cannot close (:func:`tools.fencing.fence`).

    Each passage is a ``<passage>`` tag (index, title, source; for Wikipedia copies when they
    were fetched, and ``stale="true"`` past the maximum age) followed by its text as one JSON
    string; at most :data:`~tools.limits.MAX_PROMPT_PASSAGES` passages of
    :data:`~tools.limits.MAX_PASSAGE_CHARS` characters each.
    """
    if not passages:
        return ""
    lines = []
    for index, passage in enumerate(list(passages)[:MAX_PROMPT_PASSAGES], start=1):
        item = passage.as_dict() if isinstance(passage, Passage) else (passage if isinstance(passage, dict) else {"text": passage})
        text = str(item.get("text", ""))
        header = {"index": index, "title": item.get("title", ""), "source": item.get("source", "genms")}
        if item.get("fetched_at"):
            header["fetched"] = item["fetched_at"]
        if item.get("stale"):
            header["stale"] = "true"
        if len(text) > MAX_PASSAGE_CHARS:
            header["truncated"] = f"first {MAX_PASSAGE_CHARS} of {len(text)} characters"
            text = text[:MAX_PASSAGE_CHARS]
        lines.append("<passage " + " ".join(f'{key}="{attribute(value)}"' for key, value in header.items()) + ">")
        lines.append(data_json(text))
        lines.append("</passage>")
    return fence("retrieved_passages", lines, PASSAGES_NOTE)


def add_knowledge(file_or_title: str) -> dict:
    """Add a text/Markdown file (kind ``user``) or a Wikipedia article by title; returns what was added."""
    path = Path(file_or_title).expanduser()
    store = ensure_seeded()
    if path.is_file():
        try:
            text = read_bounded_text(path, MAX_FILE_BYTES)
        except InputFileError as exc:
            raise KnowledgeError(f"{path.name}: {exc}") from None
        if "\ufffd" in text:
            raise KnowledgeError(f"{path.name} is not UTF-8 text (add .txt or .md files)")
        if not text.strip():
            raise KnowledgeError(f"{path} is empty")
        first = text.strip().splitlines()[0].lstrip("# ").strip()
        title = first[:120] if text.lstrip().startswith("#") else path.stem
        source = path.resolve().as_uri()
        chunks = store.add(title, text, source, "user")
        return {"title": title, "source": source, "kind": "user", "chunks": chunks}
    if len(file_or_title) > 300 or not file_or_title.strip():
        raise KnowledgeError(f"{file_or_title[:80]!r} is neither a file nor a Wikipedia title")
    if not wikipedia_configured():
        raise KnowledgeError(f"no file {file_or_title!r}, and Wikipedia is off (GENMS_OFFLINE): cannot fetch it")
    module = _wikipedia()
    try:
        url = _fetch_article(module, file_or_title.strip(), store, force=True)  # asked for by name: fetched now
    except (module.DisambiguationError, module.PageError) as exc:
        raise KnowledgeError(f"no file {file_or_title!r} and no such Wikipedia article: {exc}") from None
    except Exception as exc:
        raise KnowledgeError(f"no file {file_or_title!r}, and Wikipedia could not be reached ({type(exc).__name__})") from None
    meta = store.sources("wikipedia")[url]
    return {"title": meta["title"], "source": url, "kind": "wikipedia", "chunks": store.chunk_count(url)}


# --- memory of candidates --------------------------------------------------------------------

def candidate_description(candidate: dict, request: str) -> str:
    """The text a remembered candidate is searched by."""
    checks = candidate.get("checks", {})
    energy = candidate.get("formation_energy_per_atom")
    hull = candidate.get("e_above_hull")
    known = ", ".join(candidate.get("known_in") or []) or "not in MP, ICSD or OQMD (novel)"
    return (
        f"{candidate['formula']}: a {candidate['family'].replace('_', ' ')} ({candidate['prototype']} prototype) "
        f"in space group {checks.get('spacegroup_symbol') or 'unknown'}, generated by {candidate.get('generator')} "
        f"for the request '{request}'. Formation energy {energy if energy is not None else 'unknown'} eV/atom, "
        f"{hull if hull is not None else 'unknown'} eV/atom above the hull; known in: {known}. "
        f"{'Plausible.' if candidate.get('plausible') else 'Not plausible: ' + str(candidate.get('reason'))}"
    )


def remember_candidates(run_id: str, request: str, candidates: list[dict], good: list[dict], folder: Path) -> int:
    """Add a run's candidates to the ``candidates`` collection; returns how many."""
    good_ids = {id(c) for c in good}
    entries = []
    for rank, candidate in enumerate(candidates, start=1):
        metadata = {
            "run_id": run_id, "rank": rank, "formula": candidate["formula"], "reduced_formula": candidate["reduced_formula"],
            "family": candidate["family"], "prototype": candidate["prototype"], "generator": candidate.get("generator") or "",
            "spacegroup": candidate.get("checks", {}).get("spacegroup_symbol") or "",
            "formation_energy_per_atom": candidate.get("formation_energy_per_atom"), "e_above_hull": candidate.get("e_above_hull"),
            "good": id(candidate) in good_ids, "novel": not candidate.get("known_in"),
            "cif_path": cif_location(folder, candidate["cif_path"]), "request": request[:500],
        }
        entries.append((metadata, candidate_description(candidate, request)))
    return CandidateMemory().add(entries)


def earlier_formulas() -> set[str]:
    """Reduced formulae that earlier runs produced (novelty against 'genms')."""
    return CandidateMemory().reduced_formulas()


def recall_candidates(query: str, k: int = 10, family: str | None = None, good_only: bool = False) -> list:
    """Remembered candidates closest to ``query``; a family named in the query filters like ``family``.

    "show me the spinels we found" returns spinel candidates only. Raises ``KeyError`` for an
    unknown family and :class:`KnowledgeError` for an empty query or ``k`` out of range.
    """
    from tools.families import get_family
    from tools.spec import family_mentioned

    query = _check_query(query, min(k, MAX_K))
    if not 1 <= k <= 500:
        raise KnowledgeError(f"k = {k}: ask for 1 to 500 candidates")
    family = get_family(family).name if family else family_mentioned(query)
    return CandidateMemory().query(query, k=k, family=family, good_only=good_only)
