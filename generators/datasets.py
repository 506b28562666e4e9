"""Access to the shared materials data (MP-20 splits, the 2018 MP snapshot, formula tables).

Everything is read through one configurable directory: the environment variable
``GENMS_DATA_DIR`` when set, otherwise ``../shared/data`` beside the repository root.
Rows are yielded as :class:`MaterialRecord` objects whose pymatgen ``Structure`` is parsed
only when first asked for, so scanning a split for formulas or properties stays cheap.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import pandas as pd

DATA_DIR_ENV = "GENMS_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]

MP20_SPLITS = ("train", "val", "test")
MP20_FILES = {split: f"mp20/{split}.csv.gz" for split in MP20_SPLITS}
MP2018_FILE = "mp2018/structures.csv.gz"
KNOWN_FORMULAS_FILE = "formulas/known_formulas.csv.gz"
FORMATION_ENERGY_FILE = "properties/mp_formation_energy.csv.gz"
BAND_GAP_FILE = "properties/mp_band_gap.csv.gz"
ALL_FILES = (*MP20_FILES.values(), MP2018_FILE, KNOWN_FORMULAS_FILE, FORMATION_ENERGY_FILE, BAND_GAP_FILE)


class DataNotFoundError(FileNotFoundError):
    """The data directory or one of its files is missing; the message says which and how to fix it."""


def data_dir_candidates() -> list[Path]:
    """Directories tried, in order, when looking for the shared data."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return [Path(env).expanduser()]
    return [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def data_dir() -> Path:
    """The shared data directory (``GENMS_DATA_DIR``, else ``../shared/data`` beside the repo)."""
    candidates = data_dir_candidates()
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"genms data directory not found (tried: {tried}). "
        f"Set {DATA_DIR_ENV} to the folder that holds mp20/, mp2018/, formulas/ and properties/."
    )


def data_file(relative_path: str) -> Path:
    """Path of one file of the shared data, with an error naming it when it is absent."""
    path = data_dir() / relative_path
    if not path.is_file():
        raise DataNotFoundError(
            f"genms data file missing: {path} (expected '{relative_path}' under the data directory; "
            f"set {DATA_DIR_ENV} to point elsewhere)"
        )
    return path


def read_table(relative_path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one gzip CSV table of the shared data (optionally only some columns).

    Whole tables are read once per process and shared (callers must not modify them).
    """
    path = data_file(relative_path)
    table = _cached_table(str(path), path.stat().st_mtime)
    return table[columns] if columns else table


@lru_cache(maxsize=8)
def _cached_table(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


@dataclass
class MaterialRecord:
    """One Materials Project entry of the shared data.

    Energies are in eV/atom, band gaps in eV; missing values are ``None``. The structure is
    the P1 cell of the MP relaxed structure, parsed from ``cif`` on first access.
    """

    material_id: str
    cif: str = field(repr=False)
    dataset: str
    split: str | None = None
    formula: str | None = None
    spacegroup_number: int | None = None
    n_sites: int | None = None
    formation_energy_per_atom: float | None = None
    band_gap: float | None = None
    e_above_hull: float | None = None
    source: str | None = None

    @cached_property
    def structure(self):
        """The pymatgen ``Structure`` of this entry (parsed once)."""
        from pymatgen.core import Structure

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(self.cif, fmt="cif")


def _optional(value, cast):
    return None if pd.isna(value) else cast(value)


def load_mp20(split: str) -> pd.DataFrame:
    """The MP-20 split as a table (``train``, ``val`` or ``test``)."""
    if split not in MP20_FILES:
        raise ValueError(f"unknown MP-20 split {split!r}; choose one of {', '.join(MP20_SPLITS)}")
    return read_table(MP20_FILES[split])


def iter_mp20(split: str) -> Iterator[MaterialRecord]:
    """Records of an MP-20 split, structures parsed lazily."""
    for row in load_mp20(split).itertuples(index=False):
        yield MaterialRecord(
            material_id=row.material_id,
            cif=row.cif,
            dataset="mp20",
            split=split,
            formula=row.pretty_formula,
            spacegroup_number=_optional(row.spacegroup_number, int),
            n_sites=_optional(row.n_sites, int),
            formation_energy_per_atom=_optional(row.formation_energy_per_atom, float),
            band_gap=_optional(row.band_gap, float),
            e_above_hull=_optional(row.e_above_hull, float),
            source=row.source,
        )


def iter_mp2018() -> Iterator[MaterialRecord]:
    """Records of the 2018 MP snapshot, structures parsed lazily.

    ``split`` carries the entry's MP-20 split ('train', 'val', 'test') or ``None`` when the
    MP id is not in MP-20; ``formula`` is the cell's formula (``Bi4Ir4O14``), not reduced.
    """
    for row in read_table(MP2018_FILE).itertuples(index=False):
        yield MaterialRecord(
            material_id=row.material_id,
            cif=row.cif,
            dataset="mp2018",
            split=_optional(row.mp20_split, str),
            formula=formula_from_cif_header(row.cif),
            n_sites=_optional(row.n_sites, int),
            formation_energy_per_atom=_optional(row.formation_energy_per_atom, float),
            band_gap=_optional(row.band_gap, float),
        )


def formula_from_cif_header(cif: str) -> str | None:
    """The ``_chemical_formula_sum`` of a pymatgen-written CIF, read without parsing the cell."""
    for line in cif.splitlines():
        if line.startswith("_chemical_formula_sum"):
            return line.split(None, 1)[1].strip().strip("'\"").replace(" ", "")
    return None


def data_status() -> dict[str, object]:
    """Where the data directory is and which of the expected files it holds."""
    try:
        root = data_dir()
    except DataNotFoundError as exc:
        return {"data_dir": None, "error": str(exc), "files": {name: False for name in ALL_FILES}}
    return {"data_dir": str(root), "error": None, "files": {name: (root / name).is_file() for name in ALL_FILES}}
