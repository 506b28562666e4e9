"""Benchmark: CHGNet formation-energy MAE on the MP-20 test split (``python -m evals.bench_formation_energy``).

Every test row with a DFT formation energy is scored with the pretrained CHGNet and the
committed elemental references (``tools/data/chgnet_elemental_references.json``); CHGNet
energies are cached in the user cache directory, so a second run takes seconds.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    args = parser.parse_args(argv)

    from tools.formation_energy import evaluate

    result = evaluate(args.split)
    table = Table(title=f"CHGNet formation energy vs DFT, MP-20 {args.split}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("rows with a DFT value", f"{result['structures_with_dft_value']:,}")
    table.add_row("covered by the references", f"{result['covered_by_references']:,}")
    table.add_row("MAE", f"{result['mae_eV_per_atom']:.4f} eV/atom")
    table.add_row("median absolute error", f"{result['median_ae_eV_per_atom']:.4f} eV/atom")
    table.add_row("RMSE", f"{result['rmse_eV_per_atom']:.4f} eV/atom")
    Console().print(table)


if __name__ == "__main__":
    main()
