"""Crystal structure checks: CIF reading and writing, structural validity, space group.

Structural validity follows CDVAE/GenMS: every interatomic distance, periodic images
included, exceeds 0.5 Å. A volume-per-atom window guards against cells that are absurdly
dense or empty. Distances are in Å, volumes in Å^3.

Structure text from outside is hostile until checked, so reading bounds the work before any
native code runs: the file size, then (on the parsed CIF blocks, before pymatgen expands the
symmetry) the cell parameters and the number of positions the symmetry expansion would
create, then the lattice of the structure read (finite, non-degenerate, a volume per atom in
a wide window). Only a structure that passes reaches neighbour lists, spglib or the models.
The bounds live in :mod:`tools.limits`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.cif import CifBlock, CifFile, CifParser, CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from tools.files import InputFileError, read_bounded_text
from tools.limits import (
    MAX_LATTICE_LENGTH,
    MAX_NEIGHBOUR_PAIRS,
    MAX_SITES,
    MAX_STRUCTURE_BYTES,
    MAX_SYMMETRY_EXPANSION,
    MAX_SYMMETRY_OPERATIONS,
    MIN_LATTICE_HEIGHT,
    READABLE_VOLUME_PER_ATOM,
)

MIN_DISTANCE = 0.5  # Å, GenMS/CDVAE structural validity
# MP structures span 4.8-134 Å^3/atom (MP-20 train and the 2018 snapshot); the window is wider.
VOLUME_PER_ATOM_RANGE = (3.0, 200.0)
MAX_CIF_BYTES = MAX_STRUCTURE_BYTES
SYMPREC = 0.1  # Å, the tolerance the MP-20 data README prescribes
NEIGHBOUR_RADIUS = 6.0  # Å, search radius for the shortest distance
# CIF keys whose loops hold symmetry operations (pymatgen reads the first one present).
_SYMOP_KEYS = (
    "_symmetry_equiv_pos_as_xyz", "_symmetry_equiv_pos_as_xyz_", "_space_group_symop_operation_xyz",
    "_space_group_symop_operation_xyz_", "_space_group_symop_magn_operation.xyz",
)
_SITE_KEYS = ("_atom_site_fract_x", "_atom_site_Cartn_x", "_atom_site_label", "_atom_site_type_symbol")
_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c")
_ANGLE_KEYS = ("_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


class StructureError(ValueError):
    """A structure or CIF that cannot be used; the message is meant for the user."""


def read_cif(text: str) -> Structure:
    """Parse CIF text into a ``Structure`` (the first block), with clear errors.

    Rejects empty or oversized text, text with no readable structure, and cells with more
    than ``MAX_SITES`` sites.
    """
    if not isinstance(text, str) or not text.strip():
        raise StructureError("empty CIF")
    if len(text.encode("utf-8", "replace")) > MAX_CIF_BYTES:
        raise StructureError(f"CIF too large ({len(text):,} characters; at most {MAX_CIF_BYTES:,} bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the blocks alone first (linear in the text), to bound the work before the expansion
            check_cif_blocks(list(CifFile.from_str(text).data.values()))
        except StructureError:
            raise
        except Exception as exc:  # pymatgen raises ValueError, KeyError, IndexError... on bad CIFs
            raise StructureError(f"not a readable CIF: {_describe(exc)}") from exc
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
        except Exception as exc:
            raise StructureError(f"not a readable CIF: {_describe(exc)}") from exc
    if not structures:
        raise StructureError("not a readable CIF: no structure found")
    return checked_structure(structures[0])


def checked_structure(structure: Structure) -> Structure:
    """``structure`` when its size, order and lattice are usable; :class:`StructureError` otherwise."""
    if len(structure) == 0:
        raise StructureError("structure has no atoms")
    if len(structure) > MAX_SITES:
        raise StructureError(f"structure too large ({len(structure)} sites; at most {MAX_SITES})")
    if not structure.is_ordered:
        raise StructureError("disordered structure (partial occupancies) is not supported")
    reason = lattice_problem(structure)
    if reason:
        raise StructureError(reason)
    return structure


def lattice_problem(structure: Structure) -> str | None:
    """Why the cell cannot be used (non-finite, degenerate, absurd size), or ``None``.

    Cheap numpy only: it runs before any neighbour list, spglib call or model, which misbehave
    on such cells (spglib crashes on an infinite cell; the memory of a neighbour search grows as
    1/volume).
    """
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    coords = np.asarray(structure.frac_coords, dtype=float)
    if not (np.isfinite(matrix).all() and np.isfinite(coords).all()):
        return "lattice or coordinates not finite"
    lengths = np.linalg.norm(matrix, axis=1)
    if lengths.max() > MAX_LATTICE_LENGTH:
        return f"lattice length {lengths.max():.4g} Å beyond {MAX_LATTICE_LENGTH:g} Å"
    volume = abs(float(np.linalg.det(matrix)))
    # Distance between opposite faces of the cell: volume over the area of each face.
    faces = [np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)]
    if volume <= 0 or min(volume / face if face > 0 else 0.0 for face in faces) < MIN_LATTICE_HEIGHT:
        return f"degenerate cell (thinner than {MIN_LATTICE_HEIGHT} Å between lattice planes)"
    low, high = READABLE_VOLUME_PER_ATOM
    per_atom = volume / len(structure)
    if not low <= per_atom <= high:
        return f"volume per atom {per_atom:.4g} Å^3 outside the readable range {low:g}-{high:g} Å^3"
    return None


def check_cif_blocks(blocks: list[CifBlock]) -> None:
    """Refuse CIF blocks whose cell is unusable or whose symmetry expansion is too much work.

    Counted on the parsed text, before pymatgen builds a structure: pymatgen's expansion of
    symmetry operations x asymmetric-unit sites takes time quadratic in their product (19,200
    positions: ~26 s), so the product is bounded by ``MAX_SYMMETRY_EXPANSION``.
    """
    positions = 0
    for block in blocks:
        data = block.data
        for key in _CELL_KEYS + _ANGLE_KEYS:
            if key in data:
                value = _cif_number(data[key])
                if value is None or not math.isfinite(value):
                    raise StructureError(f"{key} is not a finite number")
        for key in _CELL_KEYS:
            value = _cif_number(data.get(key, "1"))
            if value is not None and not 0 < value <= MAX_LATTICE_LENGTH:
                raise StructureError(f"{key} {value:g} Å outside 0-{MAX_LATTICE_LENGTH:g} Å")
        positions += _operation_count(data) * max((_count(data[k]) for k in _SITE_KEYS if k in data), default=0)
    if positions > MAX_SYMMETRY_EXPANSION:
        raise StructureError(
            f"symmetry expansion too large ({positions:,} positions from operations x sites; at most "
            f"{MAX_SYMMETRY_EXPANSION:,})")


def _count(value) -> int:
    return len(value) if isinstance(value, list) else 1


def _cif_number(value) -> float | None:
    """A CIF number such as ``3.905(2)``; ``None`` when the value is not one."""
    if isinstance(value, list):
        value = value[0] if value else ""
    text = str(value).split("(", 1)[0].strip()
    try:
        return float(text)
    except ValueError:
        return None


def _operation_count(data: dict) -> int:
    """Symmetry operations a block's expansion applies: its listed ones (a magnetic CIF's times its
    centring translations), else its space group's."""
    for key in _SYMOP_KEYS:
        if key in data:
            return _count(data[key]) * _count(data.get("_space_group_symop_magn_centering.xyz", []) or [1])
    for key in ("_symmetry_Int_Tables_number", "_space_group_IT_number", "_space_group.IT_number"):
        number = _cif_number(data.get(key, ""))
        if number is not None and number.is_integer() and 1 <= number <= 230:
            from pymatgen.symmetry.groups import SpaceGroup

            return len(SpaceGroup.from_int_number(int(number)).symmetry_ops)
    return MAX_SYMMETRY_OPERATIONS


MOLECULE_SUFFIXES = {".xyz", ".mol", ".sdf", ".pdb", ".gjf", ".com", ".mol2"}
POSCAR_NAMES = ("POSCAR", "CONTCAR")


def read_structure_text(text: str, filename: str = "") -> Structure:
    """Parse a crystal from CIF or POSCAR text (chosen by file name, CIF by default).

    Molecule formats (XYZ, MOL, PDB ...) are refused: scoring and generation need a
    periodic crystal with a lattice.
    """
    name = filename.rsplit("/", 1)[-1]
    suffix = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if suffix in MOLECULE_SUFFIXES:
        raise StructureError(f"{name} is a non-periodic molecule format; genms needs a periodic crystal (CIF or POSCAR)")
    if name.upper().startswith(POSCAR_NAMES) or suffix == ".vasp":
        if len(text.encode("utf-8", "replace")) > MAX_CIF_BYTES:
            raise StructureError(f"file too large ({len(text):,} characters; at most {MAX_CIF_BYTES:,} bytes)")
        try:
            structure = Structure.from_str(text, fmt="poscar")
        except Exception as exc:
            raise StructureError(f"not a readable POSCAR: {_describe(exc)}") from exc
        return checked_structure(structure)
    return read_cif(text)


def read_text_file(path: str | Path, max_bytes: int = MAX_CIF_BYTES) -> str:
    """Text of a structure file (regular files only, at most ``max_bytes``); :class:`StructureError` otherwise."""
    try:
        return read_bounded_text(path, max_bytes)
    except InputFileError as exc:
        raise StructureError(str(exc)) from None


def _describe(exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def write_cif(structure: Structure, symprec: float | None = None) -> str:
    """CIF text of a structure (P1 unless ``symprec`` asks for the symmetrised cell)."""
    return str(CifWriter(structure, symprec=symprec))


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance between two atoms, periodic images (of the same atom too) included, in Å.

    The search radius is ``NEIGHBOUR_RADIUS`` Å, shrunk for very dense cells so that the
    expected number of pairs listed (n^2 / V x 4/3 pi r^3) stays under ``MAX_NEIGHBOUR_PAIRS``:
    the neighbour list's memory grows with it. Returns ``inf`` when no pair lies within the
    radius.
    """
    n, volume = len(structure), structure.volume
    affordable = (MAX_NEIGHBOUR_PAIRS * volume / (n * n * 4 / 3 * math.pi)) ** (1 / 3)
    radius = min(NEIGHBOUR_RADIUS, max(affordable, 1.2 * MIN_DISTANCE))
    _, _, _, distances = structure.get_neighbor_list(radius)
    return float(distances.min()) if len(distances) else float("inf")


@dataclass(frozen=True)
class StructuralValidity:
    """Structural verdict: ``valid`` when min_distance > 0.5 Å and the volume per atom is sane."""

    valid: bool
    min_distance: float
    volume_per_atom: float
    reason: str | None


def structural_validity(structure: Structure) -> StructuralValidity:
    """Check the lattice, the shortest interatomic distance and the volume per atom of a structure.

    A cell :func:`lattice_problem` refuses is invalid without a neighbour search (its distance
    is reported as ``nan``).
    """
    volume = structure.volume / len(structure) if len(structure) else float("nan")
    unusable = lattice_problem(structure) if len(structure) else "structure has no atoms"
    if unusable:
        return StructuralValidity(False, float("nan"), volume, unusable)
    distance = min_interatomic_distance(structure)
    low, high = VOLUME_PER_ATOM_RANGE
    reason = None
    if not np.isfinite(volume) or volume <= 0:
        reason = "degenerate cell (zero or non-finite volume)"
    elif distance <= MIN_DISTANCE:
        reason = f"atoms overlap: shortest distance {distance:.3f} Å <= {MIN_DISTANCE} Å"
    elif not low <= volume <= high:
        reason = f"volume per atom {volume:.1f} Å^3 outside the plausible range {low}-{high} Å^3"
    return StructuralValidity(reason is None, distance, volume, reason)


@dataclass(frozen=True)
class SpaceGroup:
    """International number and Hermann-Mauguin symbol."""

    number: int
    symbol: str


def detect_spacegroup(structure: Structure, symprec: float = SYMPREC) -> SpaceGroup | None:
    """Space group by spglib through pymatgen (``symprec`` in Å); ``None`` when spglib fails."""
    if lattice_problem(structure):  # spglib crashes the process on non-finite cells
        return None
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return SpaceGroup(analyzer.get_space_group_number(), analyzer.get_space_group_symbol())
    except Exception:  # spglib gives up on badly overlapping or degenerate cells
        return None
