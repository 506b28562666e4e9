"""Throughput of batched relaxation against the one-at-a-time loop (figures, not a test).

``python -m evals.bench_relax [-n 64] [--steps 100] [--fmax 0.05] [--batch-size 64]``: the first
N MP-20 test structures of at most 20 sites, rattled by 0.1 Å (seeded), relaxed with CHGNet +
FIRE (cell included) one at a time (``tools.relaxation.relax``, what the search uses today) and
all together (``tools.batch_relax.relax_many``); prints seconds, structures per second, the
speed-up and how far the two disagree (final energy per atom, steps, convergence).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def rattled_test_structures(n: int, max_sites: int = 20, rattle: float = 0.1, seed: int = 0) -> list:
    """The first ``n`` MP-20 test structures of at most ``max_sites`` sites, each site displaced
    by ``rattle`` Å in a random direction (seeded)."""
    from generators.datasets import iter_mp20

    rng = np.random.default_rng(seed)
    structures = []
    for record in iter_mp20("test"):
        structure = record.structure.copy()
        if len(structure) > max_sites:
            continue
        for index in range(len(structure)):
            direction = rng.normal(size=3)
            structure.translate_sites([index], rattle * direction / np.linalg.norm(direction), frac_coords=False)
        structures.append(structure)
        if len(structures) == n:
            break
    return structures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    import torch

    from tools.batch_relax import relax_many
    from tools.relaxation import relax

    structures = rattled_test_structures(args.n)
    relax(structures[0], max_steps=2)  # load the model before timing
    started = time.perf_counter()
    alone = [relax(s, fmax=args.fmax, max_steps=args.steps) for s in structures]
    serial = time.perf_counter() - started
    started = time.perf_counter()
    together = relax_many(structures, fmax=args.fmax, max_steps=args.steps, batch_size=args.batch_size)
    batched = time.perf_counter() - started
    gaps = [abs(a.final_energy_per_atom - b.final_energy_per_atom) * 1000 for a, b in zip(alone, together)]
    figures = {
        "structures": len(structures), "max_steps": args.steps, "fmax": args.fmax, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "one_at_a_time_s": round(serial, 1), "batched_s": round(batched, 1), "speedup": round(serial / batched, 2),
        "one_at_a_time_per_s": round(len(structures) / serial, 2), "batched_per_s": round(len(structures) / batched, 2),
        "max_energy_gap_mev_per_atom": round(max(gaps), 3), "converged": [sum(r.converged for r in alone), sum(r.converged for r in together)],
        "fire_steps": [sum(r.steps for r in alone), sum(r.steps for r in together)],
    }
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
