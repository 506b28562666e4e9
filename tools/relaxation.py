"""Structure relaxation with CHGNet (positions and cell, FIRE), bounded in force and steps."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from tools.energy import check_supported, chgnet_model

FMAX_RANGE = (0.001, 1.0)  # eV/Å
MAX_STEPS_RANGE = (1, 5000)


@dataclass(frozen=True)
class RelaxationResult:
    """Outcome of one relaxation. Energies in eV/atom, distances in Å, forces in eV/Å."""

    structure: Structure
    initial_energy_per_atom: float
    final_energy_per_atom: float
    rmsd: float
    max_force: float
    converged: bool
    steps: int

    @property
    def energy_drop_per_atom(self) -> float:
        """How much the relaxation lowered the energy (positive when it did), eV/atom."""
        return self.initial_energy_per_atom - self.final_energy_per_atom


_per_thread = threading.local()


def _optimizer():
    """This thread's FIRE optimizer around the one CHGNet model.

    One per thread: the optimizer's ASE calculator keeps the last results as state, so two
    relaxations at once (the MCP server runs calls side by side) sharing it would read each
    other's results ("stress not present in this calculation").
    """
    optimizer = getattr(_per_thread, "optimizer", None)
    if optimizer is None:
        from chgnet.model import StructOptimizer

        optimizer = _per_thread.optimizer = StructOptimizer(model=chgnet_model(), optimizer_class="FIRE")
    return optimizer


def displacement_rmsd(initial: Structure, final: Structure) -> float:
    """RMS displacement (Å) of atoms between two structures with the same site order.

    Fractional displacements are wrapped across the cell and converted with the final
    lattice; the mean displacement (a rigid translation) is removed first.
    """
    delta = final.frac_coords - initial.frac_coords
    delta -= np.round(delta)
    cartesian = final.lattice.get_cartesian_coords(delta)
    cartesian -= cartesian.mean(axis=0)
    return float(np.sqrt((np.linalg.norm(cartesian, axis=1) ** 2).mean()))


def check_relax_options(fmax: float, max_steps: int) -> None:
    """``ValueError`` unless ``fmax`` (eV/Å) lies in ``FMAX_RANGE`` and ``max_steps`` in ``MAX_STEPS_RANGE``."""
    if not FMAX_RANGE[0] <= fmax <= FMAX_RANGE[1]:
        raise ValueError(f"fmax must lie in {FMAX_RANGE[0]}-{FMAX_RANGE[1]} eV/Å, got {fmax}")
    if not MAX_STEPS_RANGE[0] <= max_steps <= MAX_STEPS_RANGE[1]:
        raise ValueError(f"max_steps must lie in {MAX_STEPS_RANGE[0]}-{MAX_STEPS_RANGE[1]}, got {max_steps}")


def relax(structure: Structure, fmax: float = 0.05, max_steps: int = 500, relax_cell: bool = True) -> RelaxationResult:
    """Relax atomic positions (and the cell) with CHGNet and FIRE until forces < ``fmax``.

    ``fmax`` in eV/Å within ``FMAX_RANGE``; ``max_steps`` within ``MAX_STEPS_RANGE``.
    """
    check_relax_options(fmax, max_steps)
    check_supported(structure)
    n_atoms = len(structure)
    # CHGNet and ASE print per-step tables; keep the user's terminal clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        result = _optimizer().relax(structure, fmax=fmax, steps=max_steps, relax_cell=relax_cell, verbose=False)
    trajectory = result["trajectory"]
    final = result["final_structure"]
    forces = np.asarray(trajectory.forces[-1])
    max_force = float(np.linalg.norm(forces, axis=1).max())
    steps = len(trajectory.energies) - 1
    return RelaxationResult(
        structure=final,
        initial_energy_per_atom=float(trajectory.energies[0]) / n_atoms,
        final_energy_per_atom=float(trajectory.energies[-1]) / n_atoms,
        rmsd=displacement_rmsd(structure, final),
        max_force=max_force,
        # FIRE stops before max_steps only once forces (and, with the cell, stresses) are below fmax.
        converged=steps < max_steps or max_force < fmax,
        steps=steps,
    )
