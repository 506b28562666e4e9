"""Batched relaxation: many structures relaxed together, one CHGNet batch per FIRE step.

Each structure keeps its own ASE optimizer (FIRE) and cell filter (``FrechetCellFilter``, as
CHGNet's ``StructOptimizer`` uses), so each follows the very path it would alone and stops on
its own convergence; only the force evaluation is shared: at every step the structures still
moving are converted to crystal graphs and predicted in batches (``CHGNet.predict_structure``),
and each optimizer steps on its structure's energy, forces and stress. Batching amortises the
model's per-call overhead, which dominates one-at-a-time relaxation of small cells.

Units: energies eV/atom, forces eV/Å, ``fmax`` eV/Å (cell degrees of freedom included, as in
ASE's convergence test), distances Å.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.core import Structure

from tools.energy import check_supported, chgnet_model
from tools.relaxation import RelaxationResult, check_relax_options, displacement_rmsd

# CHGNet predicts stress in GPa; ASE wants eV/Å^3 (CHGNetCalculator's default stress weight).
GPA_TO_EV_PER_A3 = 1 / 160.21766208
BATCH_SIZE = 64  # structures per model call


class _Relaxing:
    """One structure's state: its atoms, the filter FIRE moves, the optimizer, the record so far."""

    def __init__(self, structure: Structure, relax_cell: bool):
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE
        from pymatgen.io.ase import AseAtomsAdaptor

        self.initial = structure
        self.atoms = AseAtomsAdaptor.get_atoms(structure)
        self.moving = FrechetCellFilter(self.atoms) if relax_cell else self.atoms
        self.optimizer = FIRE(self.moving, logfile=None)
        self.steps = 0
        self.initial_energy: float | None = None
        self.energy = 0.0
        self.max_force = float("inf")
        self.converged = False
        self.done = False

    def structure(self) -> Structure:
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(self.atoms)

    def take(self, prediction: dict, fmax: float, max_steps: int) -> None:
        """Attach the batch's prediction, then stop (converged or out of steps) or take one FIRE step."""
        from ase.calculators.singlepoint import SinglePointCalculator

        n_atoms = len(self.atoms)
        self.energy = float(prediction["e"])  # eV/atom
        self.atoms.calc = SinglePointCalculator(
            self.atoms, energy=self.energy * n_atoms, free_energy=self.energy * n_atoms,
            forces=np.asarray(prediction["f"], dtype=float), stress=np.asarray(prediction["s"], dtype=float) * GPA_TO_EV_PER_A3)
        if self.initial_energy is None:
            self.initial_energy = self.energy
        self.max_force = float(np.linalg.norm(self.atoms.get_forces(), axis=1).max())
        gradient = self.moving.get_forces()
        self.converged = float(np.sqrt((gradient ** 2).sum(axis=1).max())) < fmax
        if self.converged or self.steps >= max_steps:
            self.done = True
            return
        self.optimizer.step(gradient)  # the forces just computed: the filter's are costly (a matrix log)
        self.steps += 1

    def result(self) -> RelaxationResult:
        final = self.structure()
        return RelaxationResult(structure=final, initial_energy_per_atom=float(self.initial_energy),
                                final_energy_per_atom=self.energy, rmsd=displacement_rmsd(self.initial, final),
                                max_force=self.max_force, converged=self.converged, steps=self.steps)


def relax_many(structures: Sequence[Structure], fmax: float = 0.05, max_steps: int = 500, relax_cell: bool = True,
               batch_size: int = BATCH_SIZE, on_step: Callable[[int, int], None] | None = None) -> list[RelaxationResult]:
    """Relax every structure (positions and, with ``relax_cell``, the cell) until its forces are
    below ``fmax`` or it took ``max_steps`` FIRE steps; results in input order.

    ``on_step(structures still moving, step)`` reports progress after each batched step.
    Raises ``ValueError`` for options out of range or a structure CHGNet cannot score
    (``tools.energy.check_supported``), before any work.
    """
    check_relax_options(fmax, max_steps)
    if not 1 <= batch_size <= 1024:
        raise ValueError(f"batch_size must lie in 1-1024, got {batch_size}")
    for structure in structures:
        check_supported(structure)
    model = chgnet_model()
    states = [_Relaxing(structure, relax_cell) for structure in structures]
    step = 0
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        while active := [state for state in states if not state.done]:
            predictions = model.predict_structure([state.structure() for state in active], task="efs", batch_size=batch_size)
            if isinstance(predictions, dict):  # one structure: CHGNet answers with a dict, not a list
                predictions = [predictions]
            for state, prediction in zip(active, predictions):
                state.take(prediction, fmax, max_steps)
            step += 1
            if on_step:
                on_step(sum(not state.done for state in states), step)
    return [state.result() for state in states]
