"""Benchmark: CHGNet scoring throughput and relaxation time (``python -m evals.bench_scoring``).

Static scoring runs ``tools.scoring.score_structures`` (batched CHGNet energies, forces,
stresses, formation energy, hull, guard) on MP-20 test structures of exactly 20 sites;
relaxation times ``tools.relaxation.relax`` on a few of them after perturbing every atom by
0.1 Å. Prints structures per second and seconds per relaxation.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from rich.console import Console
from rich.table import Table


def twenty_site_structures(n: int):
    from generators.datasets import iter_mp20

    records = (r for r in iter_mp20("test") if r.n_sites == 20)
    return [r.structure for r in itertools.islice(records, n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", type=int, default=256, help="structures to score statically")
    parser.add_argument("--relax", type=int, default=5, help="structures to relax")
    parser.add_argument("--max-steps", type=int, default=300)
    args = parser.parse_args(argv)

    import torch

    from tools.energy import chgnet_model
    from tools.hull import reference_table
    from tools.relaxation import relax
    from tools.scoring import score_structures

    console = Console()
    structures = twenty_site_structures(max(args.static, args.relax))
    start = time.perf_counter()
    chgnet_model()
    reference_table()
    warmup = time.perf_counter() - start
    score_structures(structures[:8])  # warm the hull cache and the model

    start = time.perf_counter()
    reports = score_structures(structures[: args.static])
    static_seconds = time.perf_counter() - start

    relax_times, steps, converged = [], [], 0
    for structure in structures[: args.relax]:
        shaken = structure.copy()
        shaken.perturb(0.1, 0.1)
        start = time.perf_counter()
        result = relax(shaken, fmax=0.05, max_steps=args.max_steps)
        relax_times.append(time.perf_counter() - start)
        steps.append(result.steps)
        converged += result.converged

    table = Table(title=f"CHGNet scoring on {torch.get_num_threads()} CPU threads, 20-site MP-20 test cells")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("model + hull reference load (once)", f"{warmup:.1f} s")
    table.add_row(f"static scoring, {len(reports)} structures", f"{len(reports) / static_seconds:.1f} structures/s")
    table.add_row("plausible", f"{sum(r['plausible'] for r in reports)}/{len(reports)}")
    if relax_times:
        table.add_row(f"relaxation (fmax 0.05 eV/Å), {len(relax_times)} structures", f"{np.mean(relax_times):.1f} s/structure")
        table.add_row("mean FIRE steps / converged", f"{np.mean(steps):.0f} / {converged}/{len(relax_times)}")
    console.print(table)


if __name__ == "__main__":
    main()
