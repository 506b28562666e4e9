"""CPU preprocessing of MP-20 into Uni-MDM's symmetry tensor files (uses pymatgen and pyxtal).

``python -m generators.unimdm.data build --out .device_data_unimdm/`` reads every CIF of MP-20
train and test (and the first ``--val-rows`` of val, for the validation loss), extracts the
space group and Wyckoff orbits (:func:`generators.unimdm.symmetry.symmetry_info`), and writes
one file per split in the format of :mod:`generators.unimdm.tensor_files`, plus ``meta.json``
(rows, failures, the reconstruction check, sizes). Band gap and formation energy come from
the MP-20 table (NaN where missing).

Split ``val_rest``: the ``--val-rest-rows`` MP-20 val rows after the validation subset. The
shared MP-20 train holds 21,226 of the standard 27,136 crystals; these 5,910 val crystals
(never test, never the validation subset) bring a training set back to the standard size
(``train.py --train-sets train,val_rest``).

Split ``mp2018_extra``: crystals of the 2018 MP snapshot outside MP-20 (no ``mp20_split``) with at
most ``EXTRA_MAX_SITES`` sites whose reduced formula is in neither MP-20 val nor test (so no
renamed or deprecated copy of a held-out crystal enters training) and whose conventional cell
has at most ``MAX_CELL_ATOMS`` atoms: extra training data (``--train-sets train,val_rest,mp2018_extra``),
never evaluated on.
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
from typing import TYPE_CHECKING

import numpy as np
import torch

from generators.unimdm.symmetry import LETTERS, SymmetryInfo, encode_operations, polar_axes
from generators.unimdm.tensor_files import concatenate, split_path

if TYPE_CHECKING:
    import pandas as pd


def _symmetry_of_cif_unchecked(cif: str):
    return _symmetry_of_cif(cif, check=False)


def _symmetry_of_cif(cif: str, check: bool = True):
    """(SymmetryInfo, reconstruction ok (None when not checked)) of one CIF, or (None, error text)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from generators.unimdm.symmetry import symmetry_info

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
            info = symmetry_info(structure)
            for orbit in info.orbits:
                encode_operations(orbit.rotations, orbit.translations)
            matched = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).fit(info.structure(), structure) if check else None
    except Exception as exc:  # pymatgen/pyxtal/encoding failures: skip the row, count it
        return None, f"{type(exc).__name__}: {exc}"[:200]
    return info, matched


def pack_infos(infos: list[SymmetryInfo], material_ids: list[str], formulas: list[str],
               band_gap: list[float], formation_energy: list[float]) -> dict:
    """Packed tensors (see :mod:`generators.unimdm.tensor_files`) of several crystals."""
    from generators.unimdm.lattice import k_from_parameters

    orbits = [o for info in infos for o in info.orbits]
    lattice = torch.tensor(np.array([info.lattice for info in infos]), dtype=torch.float64).reshape(-1, 6)
    ops = [encode_operations(o.rotations, o.translations) for o in orbits]
    return {
        "format": "genms-unimdm-symmetry/1",
        "material_ids": list(material_ids),
        "formulas": list(formulas),
        "space_group": torch.tensor([info.space_group for info in infos], dtype=torch.int16),
        "lattice": lattice.float(),
        "k": k_from_parameters(lattice).float() if len(infos) else torch.zeros(0, 6),
        "n_atoms": torch.tensor([info.n_atoms for info in infos], dtype=torch.int16),
        "n_orbits": torch.tensor([len(info.orbits) for info in infos], dtype=torch.int16),
        "orbit_z": torch.tensor([o.atomic_number for o in orbits], dtype=torch.uint8),
        "orbit_letter": torch.tensor([LETTERS.index(o.letter) for o in orbits], dtype=torch.int8),
        "orbit_multiplicity": torch.tensor([o.multiplicity for o in orbits], dtype=torch.int16),
        "orbit_coords": torch.tensor(np.array([o.position for o in orbits]).reshape(-1, 3), dtype=torch.float32),
        "orbit_free": torch.tensor(np.array([o.free for o in orbits]).reshape(-1, 3), dtype=torch.bool),
        "atom_ops": torch.from_numpy(np.concatenate(ops) if ops else np.zeros((0, 12), np.int8)),
        "band_gap": torch.tensor(band_gap, dtype=torch.float32),
        "formation_energy": torch.tensor(formation_energy, dtype=torch.float32),
        "polar_axes": torch.tensor([[False] * 3] + [list(polar_axes(g)) for g in range(1, 231)], dtype=torch.bool),
    }


def _float(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


STANDARD_TRAIN_ROWS = 27_136  # MP-20 train as CDVAE/DiffCSP split it
SHARED_TRAIN_ROWS = 21_226  # the rows of it in the shared data (../shared/data/README.md)


BUILD_SPLITS = ("train", "val", "val_rest", "test", "mp2018_extra")  # what `build --splits` takes
EXTRA_MAX_SITES = 40  # primitive sites of an mp2018_extra crystal (MP-20 stops at 20)


def held_out_formulas() -> set[str]:
    """Reduced formulas of MP-20 val and test."""
    from pymatgen.core import Composition

    from generators.datasets import load_mp20

    return {Composition(f).reduced_formula for split in ("val", "test") for f in load_mp20(split)["pretty_formula"]}


def load_mp2018_extra(max_sites: int = EXTRA_MAX_SITES) -> pd.DataFrame:
    """The mp2018_extra rows (module docstring) as an MP-20-like table (``pretty_formula`` reduced)."""
    from pymatgen.core import Composition

    from generators.datasets import MP2018_FILE, formula_from_cif_header, read_table

    table = read_table(MP2018_FILE)
    table = table[table["mp20_split"].isna() & (table["n_sites"] <= max_sites)].copy()
    table["pretty_formula"] = [Composition(formula_from_cif_header(cif)).reduced_formula for cif in table["cif"]]
    return table[~table["pretty_formula"].isin(held_out_formulas())].reset_index(drop=True)


def load_table(name: str) -> pd.DataFrame:
    """An MP-20 table (``train``, ``val``, ``test``) or ``mp2018_extra``."""
    from generators.datasets import load_mp20

    return load_mp2018_extra() if name == "mp2018_extra" else load_mp20(name)


def split_rows(split: str, val_rows: int = 2048, val_rest_rows: int = STANDARD_TRAIN_ROWS - SHARED_TRAIN_ROWS,
               limit: int | None = None) -> tuple[str, slice]:
    """(MP-20 table, row slice) of a split name: ``train``/``test`` whole, ``val`` its first
    ``val_rows``, ``val_rest`` the next ``val_rest_rows``; ``limit`` caps any of them (tests)."""
    start, stop = {"val": (0, val_rows), "val_rest": (val_rows, val_rows + val_rest_rows)}.get(split, (0, None))
    if limit:
        stop = start + limit if stop is None else min(stop, start + limit)
    return ("val" if split == "val_rest" else split), slice(start, stop)


def build_split(split: str, workers: int, rows: slice = slice(None), part: tuple[int, int] = (0, 1),
                check: bool = True) -> tuple[dict, dict]:
    """Tensors of rows ``rows`` of one MP-20 table or ``mp2018_extra`` (or of part i of n contiguous
    parts of them) and their statistics (rows, failures, cells over ``MAX_CELL_ATOMS`` left out,
    reconstruction matches: the Wyckoff expansion matches the CIF's structure)."""
    from generators.unimdm.network import MAX_CELL_ATOMS

    table = load_table(split).iloc[rows]
    index, parts = part
    size = len(table)
    table = table.iloc[index * size // parts : (index + 1) * size // parts]
    cifs = table["cif"].tolist()
    function = _symmetry_of_cif if check else _symmetry_of_cif_unchecked
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(function, cifs, chunksize=32)
    else:
        results = [function(cif) for cif in cifs]
    keep = [i for i, (info, _) in enumerate(results) if info is not None and info.n_atoms <= MAX_CELL_ATOMS]
    errors = [results[i][1] for i in range(len(results)) if results[i][0] is None]
    too_large = sum(info is not None and info.n_atoms > MAX_CELL_ATOMS for info, _ in results)
    pick = lambda column, cast=lambda v: v: [cast(table[column].iloc[i]) for i in keep]  # noqa: E731
    tensors = pack_infos([results[i][0] for i in keep], pick("material_id"), pick("pretty_formula"),
                         pick("band_gap", _float), pick("formation_energy_per_atom", _float))
    stats = {
        "rows": len(keep), "failed": len(errors), "errors": errors[:5], "too_large": too_large,
        "reconstruction_matched": sum(bool(results[i][1]) for i in keep) if check else None,
        "atoms": int(tensors["n_atoms"].long().sum()), "max_atoms": int(tensors["n_atoms"].max()),
        "orbits": int(tensors["n_orbits"].long().sum()), "max_orbits": int(tensors["n_orbits"].max()),
    }
    return tensors, stats


def merge_parts(out: Path, split: str, parts: int) -> dict:
    """Join ``<split>.part<i>of<n>.pt`` files into ``<split>.pt`` and their statistics in ``meta.json``."""
    names = [out / f"{split}.part{i}of{parts}.pt" for i in range(parts)]
    tensors = concatenate([torch.load(n, weights_only=True) for n in names])
    path = split_path(out, split)
    torch.save(tensors, path)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"splits": {}}
    stats = [meta["splits"].pop(f"{split}.part{i}of{parts}") for i in range(parts)]
    meta["splits"][split] = {
        "rows": len(tensors["material_ids"]), "failed": sum(s["failed"] for s in stats),
        "too_large": sum(s.get("too_large", 0) for s in stats),
        "errors": [e for s in stats for e in s["errors"]][:5],
        "reconstruction_matched": None if any(s["reconstruction_matched"] is None for s in stats) else sum(s["reconstruction_matched"] for s in stats),
        "atoms": int(tensors["n_atoms"].long().sum()), "max_atoms": int(tensors["n_atoms"].max()),
        "orbits": int(tensors["n_orbits"].long().sum()), "max_orbits": int(tensors["n_orbits"].max()),
        "megabytes": round(path.stat().st_size / 1e6, 2), "seconds": round(max(s["seconds"] for s in stats), 1),
        "parts": parts,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    for name in names:
        name.unlink()
    return meta["splits"][split]


def build(out: Path, splits: list[str], workers: int, limit: int | None = None, val_rows: int = 2048,
          part: tuple[int, int] = (0, 1), check: bool = True,
          val_rest_rows: int = STANDARD_TRAIN_ROWS - SHARED_TRAIN_ROWS) -> dict:
    from generators.datasets import data_dir

    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"splits": {}}
    meta.update(source=str(data_dir()), command=" ".join(["python -m generators.unimdm.data", *sys.argv[1:]]))
    for split in splits:
        start = time.perf_counter()
        table, rows = split_rows(split, val_rows, val_rest_rows, limit)
        tensors, stats = build_split(table, workers, rows, part, check)
        name = split if part[1] == 1 else f"{split}.part{part[0]}of{part[1]}"
        path = split_path(out, name)
        torch.save(tensors, path)
        stats.update(megabytes=round(path.stat().st_size / 1e6, 2), seconds=round(time.perf_counter() - start, 1))
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else meta  # parts run concurrently
        meta["splits"][name] = stats
        print(json.dumps({name: stats}), flush=True)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write the symmetry tensor files of MP-20 splits")
    build_parser.add_argument("--out", type=Path, default=Path(".device_data_unimdm"))
    build_parser.add_argument("--splits", default="test,val,train", help=f"comma-separated: {', '.join(BUILD_SPLITS)}")
    build_parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    build_parser.add_argument("--limit", type=int, default=None, help="first N rows of each split (tests)")
    build_parser.add_argument("--val-rows", type=int, default=2048, help="rows of MP-20 val kept for the validation loss")
    build_parser.add_argument("--val-rest-rows", type=int, default=STANDARD_TRAIN_ROWS - SHARED_TRAIN_ROWS,
                              help="rows of MP-20 val after the validation subset in split val_rest (training data)")
    build_parser.add_argument("--part", default="0/1", help="i/n: only the i-th of n contiguous parts (merge them with `merge`)")
    build_parser.add_argument("--no-check", action="store_true", help="skip the StructureMatcher check of the expansion")
    merge_parser = commands.add_parser("merge", help="join the parts of a split built with --part")
    merge_parser.add_argument("--out", type=Path, default=Path(".device_data_unimdm"))
    merge_parser.add_argument("--split", default="train")
    merge_parser.add_argument("--parts", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "merge":
        print(json.dumps(merge_parts(args.out, args.split, args.parts)))
        return
    splits = [s for s in args.splits.split(",") if s]
    unknown = [s for s in splits if s not in BUILD_SPLITS]
    if unknown or not splits:
        parser.error(f"--splits takes {', '.join(BUILD_SPLITS)}; got {', '.join(unknown) or 'none'}")
    index, parts = (int(v) for v in args.part.split("/"))
    build(args.out, splits, args.workers, args.limit, args.val_rows, (index, parts),
          not args.no_check, args.val_rest_rows)


if __name__ == "__main__":
    main()
