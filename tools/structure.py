"""Crystal structure checks: CIF reading and writing, structural validity, space group.

Structural validity follows CDVAE/GenMS: every interatomic distance, periodic images
included, exceeds 0.5 Å. A volume-per-atom window guards against cells that are absurdly
dense or empty. Distances are in Å, volumes in Å^3.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser, CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

MIN_DISTANCE = 0.5  # Å, GenMS/CDVAE structural validity
# MP structures span 4.8-134 Å^3/atom (MP-20 train and the 2018 snapshot); the window is wider.
VOLUME_PER_ATOM_RANGE = (3.0, 200.0)
MAX_CIF_BYTES = 2_000_000
MAX_SITES = 1000
SYMPREC = 0.1  # Å, the tolerance the MP-20 data README prescribes
NEIGHBOUR_RADIUS = 6.0  # Å, search radius for the shortest distance


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
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # pymatgen raises ValueError, KeyError, IndexError... on bad CIFs
            raise StructureError(f"not a readable CIF: {_describe(exc)}") from exc
    if not structures:
        raise StructureError("not a readable CIF: no structure found")
    structure = structures[0]
    if len(structure) > MAX_SITES:
        raise StructureError(f"structure too large ({len(structure)} sites; at most {MAX_SITES})")
    if not structure.is_ordered:
        raise StructureError("disordered structure (partial occupancies) is not supported")
    return structure


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
        if len(structure) > MAX_SITES:
            raise StructureError(f"structure too large ({len(structure)} sites; at most {MAX_SITES})")
        return structure
    return read_cif(text)


def read_text_file(path: str | Path, max_bytes: int = MAX_CIF_BYTES) -> str:
    """Text of a structure file; :class:`StructureError` when unreadable or over ``max_bytes``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise StructureError(f"file too large ({size:,} bytes; at most {max_bytes:,})")
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StructureError(f"cannot read file: {exc.strerror or exc}") from exc


def _describe(exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def write_cif(structure: Structure, symprec: float | None = None) -> str:
    """CIF text of a structure (P1 unless ``symprec`` asks for the symmetrised cell)."""
    return str(CifWriter(structure, symprec=symprec))


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance between two atoms, periodic images (of the same atom too) included, in Å.

    Returns ``inf`` for a structure with no neighbours within ``NEIGHBOUR_RADIUS`` Å.
    """
    _, _, _, distances = structure.get_neighbor_list(NEIGHBOUR_RADIUS)
    return float(distances.min()) if len(distances) else float("inf")


@dataclass(frozen=True)
class StructuralValidity:
    """Structural verdict: ``valid`` when min_distance > 0.5 Å and the volume per atom is sane."""

    valid: bool
    min_distance: float
    volume_per_atom: float
    reason: str | None


def structural_validity(structure: Structure) -> StructuralValidity:
    """Check the shortest interatomic distance and the volume per atom of a structure."""
    distance = min_interatomic_distance(structure)
    volume = structure.volume / len(structure)
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
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return SpaceGroup(analyzer.get_space_group_number(), analyzer.get_space_group_symbol())
    except Exception:  # spglib gives up on badly overlapping or degenerate cells
        return None
