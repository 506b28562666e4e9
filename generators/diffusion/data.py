"""CPU preprocessing of the shared data into compact tensor files (uses pymatgen).

``python -m generators.diffusion.data build --out .device_data/`` parses every CIF of MP-20
train/val/test and of the extra 2018-snapshot structures (<= 20 sites, MP id in no MP-20
split, see ``generators/datasets.py`` for where the data lives), reduces each cell (Niggli,
pymatgen's standard orientation) and writes one tensor file per split in the format of
:mod:`generators.diffusion.tensor_files`, plus ``meta.json`` (row counts, sources, sizes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from generators.diffusion.representation import MAX_ATOMS
from generators.diffusion.tensor_files import SPLITS, split_path


def _rows_of_cif(cif: str):
    """(frac [n,3], numbers [n], lattice [6], formula) of one CIF, or None when it cannot be used."""
    from pymatgen.core import Structure

    from generators.diffusion.crystal import structure_to_rows

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
            rows = structure_to_rows(structure)
            formula = structure.composition.formula.replace(" ", "")
    except (ValueError, KeyError, IndexError, AssertionError):
        return None
    if not 1 <= len(rows.atomic_numbers) <= MAX_ATOMS:
        return None
    return rows.frac_coords, rows.atomic_numbers, rows.lattice, formula


def pack_rows(rows: list, material_ids: list[str]) -> dict:
    """Padded tensors (format of :mod:`generators.diffusion.tensor_files`) from per-crystal rows."""
    count = len(rows)
    frac = np.zeros((count, MAX_ATOMS, 3), dtype=np.float32)
    numbers = np.zeros((count, MAX_ATOMS), dtype=np.uint8)
    lattice = np.zeros((count, 6), dtype=np.float32)
    n_atoms = np.zeros(count, dtype=np.int16)
    for i, (coords, atomic_numbers, parameters, _) in enumerate(rows):
        n = len(atomic_numbers)
        frac[i, :n], numbers[i, :n], lattice[i], n_atoms[i] = coords, atomic_numbers, parameters, n
    n_atoms_tensor = torch.from_numpy(n_atoms)
    return {
        "frac_coords": torch.from_numpy(frac),
        "atomic_numbers": torch.from_numpy(numbers),
        "mask": torch.arange(MAX_ATOMS)[None, :] < n_atoms_tensor.long()[:, None],
        "lattice": torch.from_numpy(lattice),
        "n_atoms": n_atoms_tensor,
        "material_ids": list(material_ids),
        "formulas": [r[3] for r in rows],
    }


def split_table(split: str):
    """(material ids, CIF strings) of one split of the shared data."""
    from generators.datasets import MP20_SPLITS, load_mp20, read_table, MP2018_FILE

    if split in MP20_SPLITS:
        table = load_mp20(split)
        return table["material_id"].tolist(), table["cif"].tolist()
    mp20_ids = set().union(*(set(load_mp20(s)["material_id"]) for s in MP20_SPLITS))
    snapshot = read_table(MP2018_FILE)
    keep = (snapshot["n_sites"] <= MAX_ATOMS) & snapshot["mp20_split"].isna() & ~snapshot["material_id"].isin(mp20_ids)
    chosen = snapshot[keep]
    return chosen["material_id"].tolist(), chosen["cif"].tolist()


def build_split(split: str, workers: int, limit: int | None = None) -> tuple[dict, int]:
    """Tensors of one split and the number of rows skipped (unparsable or too large)."""
    ids, cifs = split_table(split)
    if limit:
        ids, cifs = ids[:limit], cifs[:limit]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parsed = pool.map(_rows_of_cif, cifs, chunksize=64)
    else:
        parsed = [_rows_of_cif(cif) for cif in cifs]
    kept = [(material_id, rows) for material_id, rows in zip(ids, parsed) if rows is not None]
    return pack_rows([r for _, r in kept], [m for m, _ in kept]), len(ids) - len(kept)


def build(out: Path, splits: list[str], workers: int, limit: int | None = None) -> dict:
    """Write ``<split>.pt`` for each split and ``meta.json`` into ``out``; returns the metadata."""
    from generators.datasets import data_dir

    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": str(data_dir()), "command": " ".join(["python -m generators.diffusion.data", *sys.argv[1:]]), "splits": {}}
    for split in splits:
        start = time.perf_counter()
        tensors, skipped = build_split(split, workers, limit)
        path = split_path(out, split)
        torch.save(tensors, path)
        meta["splits"][split] = {
            "rows": len(tensors["material_ids"]),
            "skipped": skipped,
            "atoms": int(tensors["n_atoms"].long().sum()),
            "megabytes": round(path.stat().st_size / 1e6, 2),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps({split: meta["splits"][split]}), flush=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generators.diffusion.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write the tensor files of the splits")
    build_parser.add_argument("--out", type=Path, default=Path(".device_data"))
    build_parser.add_argument("--splits", default=",".join(SPLITS), help=f"comma-separated, from {', '.join(SPLITS)}")
    build_parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    build_parser.add_argument("--limit", type=int, default=None, help="first N rows of each split only (for tests)")
    args = parser.parse_args(argv)
    build(args.out, [s for s in args.splits.split(",") if s], args.workers, args.limit)


if __name__ == "__main__":
    main()
