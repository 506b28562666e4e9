"""Conversions between pymatgen structures and the diffusion model's rows (uses pymatgen).

A structure becomes its Niggli-reduced cell in pymatgen's standard orientation for its lattice
parameters (as CDVAE and DiffCSP preprocess MP-20): fractional coordinates in [0, 1),
atomic numbers, and lengths (Å) and angles (degrees). Rows convert back to a ``Structure``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Lattice, Structure

from generators.diffusion.representation import MAX_ATOMIC_NUMBER


@dataclass
class CrystalRows:
    """One crystal: ``frac_coords`` [n,3] in [0,1), ``atomic_numbers`` [n], ``lattice`` [6] (Å, degrees)."""

    frac_coords: np.ndarray
    atomic_numbers: np.ndarray
    lattice: np.ndarray


def canonical_structure(structure: Structure, niggli: bool = True) -> Structure:
    """The (Niggli-reduced) cell rebuilt from its lattice parameters, coordinates wrapped to [0, 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduced = structure.get_reduced_structure() if niggli else structure
    lattice = Lattice.from_parameters(*reduced.lattice.parameters)
    return Structure(lattice, reduced.species, np.mod(reduced.frac_coords, 1.0), coords_are_cartesian=False)


def structure_to_rows(structure: Structure, niggli: bool = True) -> CrystalRows:
    """Rows of a structure (ordered sites, elements up to Z = 100); raises ValueError otherwise."""
    if not structure.is_ordered:
        raise ValueError("disordered structures (partial occupancies) have no row representation")
    canonical = canonical_structure(structure, niggli)
    numbers = np.array([site.specie.Z for site in canonical], dtype=np.int64)
    if numbers.max(initial=0) > MAX_ATOMIC_NUMBER:
        raise ValueError(f"elements beyond Z = {MAX_ATOMIC_NUMBER} are not supported")
    frac = np.mod(canonical.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0
    lattice = np.array([*canonical.lattice.abc, *canonical.lattice.angles], dtype=np.float64)
    return CrystalRows(frac.astype(np.float64), numbers, lattice)


def rows_to_structure(frac_coords, atomic_numbers, lattice) -> Structure:
    """A ``Structure`` from rows: [n,3] fractional coordinates, [n] atomic numbers, [6] lengths (Å) and angles (degrees)."""
    frac = np.asarray(frac_coords, dtype=np.float64)
    numbers = [int(z) for z in np.asarray(atomic_numbers)]
    parameters = [float(v) for v in np.asarray(lattice, dtype=np.float64)]
    return Structure(Lattice.from_parameters(*parameters), numbers, frac, coords_are_cartesian=False)
