"""Benchmark: formula checks per second (``python -m evals.bench_formula_check``).

10,000 formulae by default: half drawn from the shared known-formula table, half random
ternary and quaternary oxides, so both known and novel compositions are timed. Every
check is the full ``tools.checks.check_formula`` (parse, SMACT, uniqueness, families),
each formula distinct so no result comes from a cache.
"""

from __future__ import annotations

import argparse
import random
import time

from rich.console import Console
from rich.table import Table

ELEMENTS = (
    "Li Na K Rb Cs Mg Ca Sr Ba Sc Y La Ce Nd Gd Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Co Ni Cu Zn "
    "Al Ga In Si Ge Sn Pb Sb Bi"
).split()


def sample_formulas(n: int, seed: int) -> list[str]:
    """``n`` distinct formulae: known ones from the shared data and random oxides."""
    import pandas as pd

    from generators.datasets import KNOWN_FORMULAS_FILE, data_file

    rng = random.Random(seed)
    known = pd.read_csv(data_file(KNOWN_FORMULAS_FILE))["reduced_formula"].sample(n // 2, random_state=seed).tolist()
    formulas = set(known)
    while len(formulas) < n:
        cations = rng.sample(ELEMENTS, rng.choice((2, 3)))
        formulas.add("".join(f"{el}{rng.randint(1, 4)}" for el in cations) + f"O{rng.randint(2, 12)}")
    return sorted(formulas)[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="number of formulae")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tools.checks import check_formula
    from tools.formula import parse_formula
    from tools.uniqueness import known_formula_index

    console = Console()
    formulas = sample_formulas(args.n, args.seed)
    start = time.perf_counter()
    known_formula_index()
    load_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for formula in formulas:
        parse_formula(formula)
    parse_seconds = time.perf_counter() - start

    start = time.perf_counter()
    reports = [check_formula(formula) for formula in formulas]
    check_seconds = time.perf_counter() - start

    table = Table(title=f"formula checks, {len(formulas):,} distinct formulae")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("formulae / s", justify="right")
    table.add_row("load uniqueness index (once)", f"{load_seconds:.2f}", "")
    table.add_row("parse only", f"{parse_seconds:.2f}", f"{len(formulas) / parse_seconds:,.0f}")
    table.add_row("full check (parse, SMACT, uniqueness, families)", f"{check_seconds:.2f}", f"{len(formulas) / check_seconds:,.0f}")
    console.print(table)
    valid = sum(r["valid"] for r in reports)
    balanced = sum(bool(r["charge_balanced"]) for r in reports)
    novel = sum(bool(r["unique"]) for r in reports)
    console.print(f"valid {valid:,}, charge balanced {balanced:,}, novel (not in MP/ICSD) {novel:,}")


if __name__ == "__main__":
    main()
