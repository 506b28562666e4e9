"""Space group and Wyckoff assignment of crystals, and the per-atom operations (pymatgen, pyxtal).

As DiffCSP++ (``get_symmetry_info``): pymatgen's ``SpacegroupAnalyzer`` (symprec 0.01) refines
the structure, pyxtal's ``from_seed`` (tol 0.01, then 1e-4) finds its Wyckoff sites in the
standard setting (conventional cell; R groups hexagonal). Each Wyckoff orbit has one
representative (element, letter, fractional coordinates ``u``); each atom of the conventional
cell has the affine operation ``x = R u + t`` (pyxtal's Wyckoff operation) that maps its
orbit's representative onto it. For a special position the first operation projects: the
representative's free coordinates are the diagonal of ``pinv(R0) R0`` (0/1 for every Wyckoff
position of pyxtal's tables; checked when built) and the columns of every ``R`` outside them
are zero, so constrained components of ``u`` do not matter.

Operations are stored as int8: rotations have entries in {-2..2}, translations are multiples of
1/24 (stored as ``24 t``), both checked exactly.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

SYMPREC = 0.01  # SpacegroupAnalyzer / pyxtal tolerance (DiffCSP++)
TRANSLATION_GRID = 24
LETTERS = "abcdefghijklmnopqrstuvwxyzA"  # pyxtal's Wyckoff letters, 'a' = highest site symmetry
CENTERING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}


@dataclass
class Orbit:
    """One Wyckoff orbit: element (Z), letter, representative coordinates, operations of its atoms."""

    atomic_number: int
    letter: str
    position: np.ndarray  # [3] representative u
    rotations: np.ndarray  # [m, 3, 3]
    translations: np.ndarray  # [m, 3]

    @property
    def multiplicity(self) -> int:
        return len(self.rotations)

    @property
    def free(self) -> np.ndarray:
        return free_components(self.rotations[0])


@dataclass
class SymmetryInfo:
    """A crystal as its space group, lattice (conventional cell) and Wyckoff orbits."""

    space_group: int
    lattice: np.ndarray  # [6] lengths (Å), angles (degrees)
    orbits: list[Orbit] = field(default_factory=list)

    @property
    def n_atoms(self) -> int:
        return sum(o.multiplicity for o in self.orbits)

    def frac_coords(self) -> np.ndarray:
        return np.concatenate([expand(o.rotations, o.translations, o.position) for o in self.orbits])

    def atomic_numbers(self) -> np.ndarray:
        return np.concatenate([[o.atomic_number] * o.multiplicity for o in self.orbits]).astype(np.int64)

    def structure(self):
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice.from_parameters(*self.lattice), self.atomic_numbers().tolist(), self.frac_coords())

    def wyckoff_letters(self) -> dict[int, list[str]]:
        """Letters of each element's orbits (sorted), the Wyckoff assignment."""
        letters: dict[int, list[str]] = {}
        for o in self.orbits:
            letters.setdefault(o.atomic_number, []).append(o.letter)
        return {z: sorted(v, key=LETTERS.index) for z, v in sorted(letters.items())}


def expand(rotations: np.ndarray, translations: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[m, 3] coordinates ``R u + t`` wrapped into [0, 1)."""
    coords = np.einsum("mij,j->mi", rotations, position) + translations
    coords = np.mod(coords, 1.0)
    coords[coords >= 1.0 - 1e-12] = 0.0
    return coords


def free_components(rotation: np.ndarray) -> np.ndarray:
    """[3] bool: the diagonal of ``pinv(R) R`` for the site's first operation."""
    projector = np.linalg.pinv(rotation) @ rotation
    diagonal = np.round(np.diag(projector), 6)
    if not np.allclose(projector, np.diag(diagonal), atol=1e-6) or not np.all(np.isin(diagonal, (0.0, 1.0))):
        raise ValueError(f"Wyckoff operation with a non-axis-aligned free space: {rotation.tolist()}")
    return diagonal > 0.5


def centering_factor(space_group: int) -> int:
    """Lattice points of the conventional cell (P 1, A/B/C/I 2, R 3 in the hexagonal setting, F 4)."""
    return CENTERING[group_symbol(space_group)[0]]


TABLES_FILE = Path(__file__).with_name("wyckoff_tables.json")


@lru_cache(maxsize=1)
def _tables() -> dict[int, dict]:
    """Per space group: symbol, Wyckoff positions (letter, multiplicity, free) and polar axes, from
    ``wyckoff_tables.json`` (derived from pyxtal by ``python -m generators.unimdm.symmetry tables``;
    building pyxtal's 230 groups takes about 10 s, the file loads in milliseconds)."""
    if TABLES_FILE.is_file():
        return {int(g): row for g, row in json.loads(TABLES_FILE.read_text()).items()}
    return {g: _table_row(g) for g in range(1, 231)}


def _table_row(space_group: int) -> dict:
    group = _group(space_group)
    positions = []
    for wp in group.Wyckoff_positions:
        positions.append([wp.letter, int(wp.multiplicity), bool(free_components(wp.ops[0].affine_matrix[:3, :3]).any())])
    ops = group[0].ops
    polar = [bool(all(np.allclose(op.affine_matrix[:3, :3][:, d], np.eye(3)[d]) for op in ops)) for d in range(3)]
    return {"symbol": group.symbol, "positions": sorted(positions, key=lambda r: LETTERS.index(r[0])), "polar": polar}


def write_tables(path: Path = TABLES_FILE) -> None:
    rows = {g: _table_row(g) for g in range(1, 231)}
    path.write_text(json.dumps(rows, separators=(",", ":")) + "\n")


@lru_cache(maxsize=256)
def _group(space_group: int):
    from pyxtal.symmetry import Group

    return Group(int(space_group))


def group_symbol(space_group: int) -> str:
    return _tables()[int(space_group)]["symbol"]


@lru_cache(maxsize=None)
def wyckoff_table(space_group: int) -> tuple[tuple[str, int, bool], ...]:
    """(letter, multiplicity, has free parameters) of every Wyckoff position of a group, 'a' first."""
    return tuple((letter, int(m), bool(f)) for letter, m, f in _tables()[int(space_group)]["positions"])


@lru_cache(maxsize=None)
def normaliser_cosets(space_group: int) -> tuple[tuple[dict[str, str], np.ndarray, np.ndarray], ...]:
    """(letter map, rotation W [3, 3], translation w [3]) of each coset of the group in its Euclidean
    normaliser (pyxtal's ``Group.get_alternatives``, from the Bilbao tables: origin shifts and other
    settings that map the group onto itself), the identity first: the coordinates ``W x + w`` of a
    crystal's atoms describe the same crystal with the letters ``map[L]`` (in P-1 its atoms at 1a
    and 1b are also at 1d and 1f)."""
    from pymatgen.core.operations import SymmOp

    alternatives = _group(space_group).get_alternatives()
    rows = [row.split() for row in alternatives["Transformed WP"]]
    cosets = []
    for row, coset in zip(rows, alternatives["Coset Representative"]):
        operation = SymmOp.from_xyz_str(coset)
        cosets.append((dict(zip(rows[0], row)), operation.rotation_matrix.copy(), operation.translation_vector.copy()))
    return tuple(cosets)


def equivalent_letter_maps(space_group: int) -> tuple[dict[str, str], ...]:
    """The Wyckoff letter permutations of :func:`normaliser_cosets`, the identity first."""
    return tuple(letter_map for letter_map, _, _ in normaliser_cosets(space_group))


_OPERATION_TABLE: dict[tuple[int, str], np.ndarray] = {}


@lru_cache(maxsize=None)
def wyckoff_operations(space_group: int, letter: str) -> tuple[np.ndarray, np.ndarray]:
    """([m, 3, 3] rotations, [m, 3] translations) of one Wyckoff position, in pyxtal's order
    (from pyxtal, or from a table loaded by :func:`load_operation_table` where pyxtal is absent)."""
    if (int(space_group), letter) in _OPERATION_TABLE:
        codes = _OPERATION_TABLE[(int(space_group), letter)].astype(np.float64)
        return codes[:, :9].reshape(-1, 3, 3), codes[:, 9:] / TRANSLATION_GRID
    wp = _group(space_group).get_wyckoff_position(letter)
    matrices = np.array([op.affine_matrix for op in wp.ops])
    return matrices[:, :3, :3].copy(), matrices[:, :3, 3].copy()


def write_operation_table(path: Path) -> int:
    """All Wyckoff operations of the 230 groups (int8 codes of :func:`encode_operations`) as a torch file
    for machines without pyxtal; returns the number of operations."""
    import torch

    table, total = {}, 0
    for group in range(1, 231):
        for letter, _, _ in wyckoff_table(group):
            rotations, translations = wyckoff_operations(group, letter)
            table[f"{group}{letter}"] = torch.from_numpy(encode_operations(rotations, translations))
            total += len(rotations)
    torch.save(table, path)
    return total


def load_operation_table(path: Path) -> None:
    """Use the operations of :func:`write_operation_table`'s file (no pyxtal needed afterwards)."""
    import torch

    for key, codes in torch.load(path, weights_only=True).items():
        _OPERATION_TABLE[(int(key[:-1]), key[-1])] = codes.numpy()
    wyckoff_operations.cache_clear()


def symmetry_info(structure, symprec: float = SYMPREC) -> SymmetryInfo:
    """Space group, conventional lattice and Wyckoff orbits of a pymatgen structure (raises ValueError)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pyxtal import pyxtal

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refined = SpacegroupAnalyzer(structure, symprec=symprec).get_refined_structure()
        crystal = pyxtal()
        try:
            crystal.from_seed(refined, tol=symprec)
        except Exception:
            try:
                crystal.from_seed(refined, tol=1e-4)
            except Exception as exc:
                raise ValueError(f"pyxtal could not read the structure: {exc}") from exc
    orbits = []
    for site in crystal.atom_sites:
        matrices = np.array([op.affine_matrix for op in site.wp.ops])
        rotations, translations = matrices[:, :3, :3], matrices[:, :3, 3]
        position = np.mod(np.asarray(site.position, dtype=np.float64), 1.0)
        free = free_components(rotations[0])
        position = np.where(free, position, 0.0)
        from pymatgen.core import Element

        orbits.append(Orbit(Element(site.specie).Z, site.wp.letter, position, rotations, translations))
    return SymmetryInfo(int(crystal.group.number), np.array(crystal.lattice.get_para(degree=True), dtype=np.float64), orbits)


def orbits_from_letters(space_group: int, letters: dict[int, list[str]]) -> list[Orbit]:
    """Orbits (representatives at 0) for a Wyckoff assignment ``{Z: [letters]}`` of a space group."""
    orbits = []
    for z, element_letters in sorted(letters.items()):
        for letter in element_letters:
            rotations, translations = wyckoff_operations(space_group, letter)
            orbits.append(Orbit(int(z), letter, np.zeros(3), rotations, translations))
    return orbits


def encode_operations(rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """[m, 12] int8: 9 rotation entries then 24 x translation (mod 24), exactly (raises ValueError)."""
    r = np.round(rotations).astype(np.int64)
    t = np.round(np.mod(translations, 1.0) * TRANSLATION_GRID).astype(np.int64) % TRANSLATION_GRID
    if np.abs(r - rotations).max(initial=0) > 1e-6 or np.abs(r).max(initial=0) > 2:
        raise ValueError("rotation entries outside the integers -2..2")
    if np.abs(t / TRANSLATION_GRID - np.mod(translations, 1.0)).max(initial=0) > 1e-6 and \
            np.abs(np.mod(t / TRANSLATION_GRID - translations + 0.5, 1.0) - 0.5).max(initial=0) > 1e-6:
        raise ValueError("translation not a multiple of 1/24")
    return np.concatenate([r.reshape(-1, 9), t.reshape(-1, 3)], axis=1).astype(np.int8)


def polar_axes(space_group: int) -> tuple[bool, bool, bool]:
    """Axes along which the origin may move continuously (every rotation of the group fixes them)."""
    return tuple(bool(v) for v in _tables()[int(space_group)]["polar"])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["tables"]:
        write_tables()
        print(f"wrote {TABLES_FILE} ({TABLES_FILE.stat().st_size} bytes)")
    elif sys.argv[1:2] == ["ops"] and len(sys.argv) == 3:
        count = write_operation_table(Path(sys.argv[2]))
        print(f"wrote {sys.argv[2]}: {count} operations")
    else:
        raise SystemExit("usage: python -m generators.unimdm.symmetry tables | ops FILE.pt")
