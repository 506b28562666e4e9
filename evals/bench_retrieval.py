"""Benchmark: top-5 retrieval latency on a knowledge store of 10,000 chunks.

The store is built in a temporary folder from the seeded articles plus one short description
per MP-20 material of the shared data (formula, space group, energies), so the chunks are
realistic materials text. Prints indexing throughput and query latency (median, p95, max) for
top-5 queries, each including the embedding of the query on the CPU.

    python -m evals.bench_retrieval [--chunks 10000] [--queries 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

QUERIES = [
    "pyrochlore A2B2O7", "a novel spinel oxide containing Mn", "lead-free halide perovskite for solar cells",
    "garnet laser host", "wide band gap nitride semiconductor", "layered Ruddlesden-Popper phase",
    "Heusler compound half-metal", "energy above the convex hull", "Goldschmidt tolerance factor",
    "olivine cathode LiFePO4",
]


def material_texts(limit: int) -> list[tuple[str, str, str]]:
    """(title, text, source) of one description per MP-20 material, up to ``limit``."""
    from generators.datasets import iter_mp20

    texts = []
    for split in ("train", "val", "test"):
        for record in iter_mp20(split):
            if len(texts) >= limit:
                return texts
            text = (f"{record.formula} ({record.material_id}) is a Materials Project crystal with {record.n_sites} sites per cell "
                    f"in space group {record.spacegroup_number or 'unknown'}; formation energy "
                    f"{record.formation_energy_per_atom} eV/atom, band gap {record.band_gap} eV.")
            texts.append((f"{record.formula} ({record.material_id})", text, f"mp://{record.material_id}"))
    return texts


def build_store(chunks: int) -> float:
    """Fill a fresh store to ``chunks`` chunks; returns the seconds it took."""
    from memory.knowledge import KnowledgeStore
    from memory.vectors import collection, write_lock
    from tools.knowledge import ensure_seeded

    started = time.perf_counter()
    store = ensure_seeded(KnowledgeStore())
    missing = chunks - store.count()
    table = collection("knowledge")
    rows = material_texts(missing)
    for start in range(0, len(rows), 1000):  # one article per material: add in batches, as KnowledgeStore.add would
        batch = rows[start:start + 1000]
        with write_lock():
            table.add(ids=[source for _, _, source in batch], documents=[text for _, text, _ in batch],
                      metadatas=[{"title": title, "source": source, "kind": "user", "chunk": 0} for title, _, source in batch])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["GENMS_VECTOR_DIR"] = folder
        from memory.knowledge import KnowledgeStore
        from memory.vectors import embedding_function

        embedding_function()  # model load is a one-off cost, reported apart
        seconds = build_store(args.chunks)
        store = KnowledgeStore()
        print(f"store: {store.count():,} chunks, built in {seconds:.1f} s ({store.count() / seconds:,.0f} chunks/s)")
        store.query(QUERIES[0], 5)  # warm the index
        latencies = []
        for index in range(args.queries):
            started = time.perf_counter()
            passages = store.query(QUERIES[index % len(QUERIES)], 5)
            latencies.append(1000 * (time.perf_counter() - started))
            assert len(passages) == 5
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(f"top-5 retrieval over {args.queries} queries: median {statistics.median(latencies):.1f} ms, "
              f"p95 {p95:.1f} ms, max {latencies[-1]:.1f} ms (query embedding included, CPU)")
        top = store.query("pyrochlore A2B2O7", 1)[0]
        print(f"'pyrochlore A2B2O7' -> {top.title} ({top.source}, similarity {top.score:.3f})")


if __name__ == "__main__":
    main()
