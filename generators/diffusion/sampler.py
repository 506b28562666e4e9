"""The user-facing diffusion sampler: a formula in, crystal structures (pymatgen) out.

>>> sampler = DiffusionSampler.load()          # reads nothing yet
>>> structures = sampler.sample("SrTiO3", n=4, seed=0)

The model is read on first use (CPU by default, the GPU when torch sees one). A formula is a
formula unit as written (``SrTiO3``, ``Sr2Ti2O6``); ``formula_units`` multiplies it. Without
``formula_units``, each structure's number of formula units is drawn from how often MP-20
training cells of that formula-unit size hold 1, 2, 3 ... units (recorded in the model
file), among the counts that keep the cell within :data:`MAX_ATOMS` atoms.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Composition, Element, Structure

from generators.diffusion.checkpoint import DiffusionModel, load_model
from generators.diffusion.crystal import rows_to_structure
from generators.diffusion.diffusion import SamplerSettings, sample
from generators.diffusion.representation import MAX_ATOMIC_NUMBER, MAX_ATOMS

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "diffusion" / "model.pt"
DEFAULT_BATCH = {"cpu": 32, "cuda": 1024}  # crystals per network call


def formula_unit_atoms(formula: str) -> list[int]:
    """Atomic numbers of one formula unit as written (``"Sr2Ti2O6"`` -> 10 numbers), sorted.

    Raises ValueError for unparsable formulas, fractional amounts, or elements beyond Z = 100.
    """
    try:
        composition = Composition(formula)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"cannot read formula {formula!r}: {exc}") from exc
    if len(composition) == 0:
        raise ValueError(f"formula {formula!r} has no elements")
    numbers = []
    for element, amount in composition.items():
        if abs(amount - round(amount)) > 1e-6 or round(amount) < 1:
            raise ValueError(f"formula {formula!r} has a non-integer amount of {element}: {amount}")
        z = Element(str(element)).Z
        if z > MAX_ATOMIC_NUMBER:
            raise ValueError(f"element {element} (Z = {z}) is beyond the model's elements (Z <= {MAX_ATOMIC_NUMBER})")
        numbers.extend([z] * int(round(amount)))
    return sorted(numbers)


def check_size(formula: str, atoms_per_unit: int, formula_units: int) -> None:
    """Raise ValueError when the cell would exceed :data:`MAX_ATOMS` atoms (the MP-20 limit)."""
    if formula_units < 1:
        raise ValueError(f"formula_units must be a positive integer, got {formula_units}")
    total = atoms_per_unit * formula_units
    if total > MAX_ATOMS:
        raise ValueError(
            f"{formula} x {formula_units} formula unit(s) = {total} atoms per cell; the diffusion model "
            f"supports at most {MAX_ATOMS} atoms per cell (the MP-20 limit)"
        )


def draw_formula_units(atoms_per_unit: int, n: int, prior: list[list[int]] | None, rng: np.random.Generator) -> list[int]:
    """Formula units for ``n`` cells, drawn from the training prior among those fitting :data:`MAX_ATOMS`."""
    allowed = np.arange(1, MAX_ATOMS // atoms_per_unit + 1)
    counts = np.array([prior[atoms_per_unit][z] if prior else 0 for z in allowed], dtype=float)
    if counts.sum() == 0:
        return [1] * n
    return [int(z) for z in rng.choice(allowed, size=n, p=counts / counts.sum())]


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Torch's CPU thread count set to ``threads`` inside the block (unchanged when None)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class DiffusionSampler:
    """Samples crystal structures for formulas with a trained diffusion model (loaded lazily)."""

    def __init__(
        self, weights: str | Path = DEFAULT_WEIGHTS, device: str | torch.device | None = None, threads: int | None = None
    ):
        self.weights = Path(weights)
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.threads = threads
        self._model: DiffusionModel | None = None

    @classmethod
    def load(
        cls, weights: str | Path | None = None, device: str | torch.device | None = None, threads: int | None = None
    ) -> DiffusionSampler:
        """A sampler for ``weights`` (default: the committed model); the file is read on first use.

        ``threads``: torch CPU threads while sampling (default: torch's setting). On a machine
        whose cores are busy with other work, 1 is much faster than oversubscribing.
        """
        path = Path(weights) if weights else DEFAULT_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"diffusion weights not found at {path}; train them with `python -m generators.diffusion.train` "
                "(see generators/diffusion/README.md)"
            )
        return cls(path, device, threads)

    @property
    def model(self) -> DiffusionModel:
        if self._model is None:
            self._model = load_model(self.weights, self.device)
        return self._model

    def sample(
        self,
        formula: str,
        n: int = 1,
        formula_units: int | None = None,
        steps: int | None = None,
        method: str = "fast",
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> list[Structure]:
        """``n`` structures of ``formula`` (``formula_units`` times the written unit, or drawn per structure).

        ``method``: ``fast`` (default ``steps`` 100, predictor-corrector with DDIM lattice) or
        ``ddpm`` (all 1000 steps). Raises ValueError for bad formulas or cells over 20 atoms.
        """
        unit = formula_unit_atoms(formula)
        settings = SamplerSettings.for_method(method, self.model.schedule.config.timesteps, steps)
        rng = np.random.default_rng(seed)
        if formula_units is not None:
            check_size(formula, len(unit), formula_units)
            units = [formula_units] * n
        else:
            check_size(formula, len(unit), 1)
            units = draw_formula_units(len(unit), n, self.model.training.get("formula_units_prior"), rng)
        cells = [unit * z for z in units]
        return self.sample_cells(cells, settings, seed, batch_size)

    def sample_cells(
        self, cells: list[list[int]], settings: SamplerSettings, seed: int | None = None, batch_size: int | None = None
    ) -> list[Structure]:
        """One structure per cell, each given as its list of atomic numbers; batched by cell size."""
        for cell in cells:
            if not 1 <= len(cell) <= MAX_ATOMS:
                raise ValueError(f"a cell of {len(cell)} atoms is outside 1..{MAX_ATOMS} (the MP-20 limit)")
        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()  # fresh entropy for this generator only; the global RNG is untouched
        else:
            generator.manual_seed(seed)
        batch_size = batch_size or DEFAULT_BATCH.get(self.device.type, 32)
        results: list[Structure | None] = [None] * len(cells)
        order = sorted(range(len(cells)), key=lambda i: len(cells[i]))
        with cpu_threads(self.threads):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                for index, structure in zip(chunk, self._sample_chunk([cells[i] for i in chunk], settings, generator)):
                    results[index] = structure
        return results

    def _sample_chunk(self, cells: list[list[int]], settings: SamplerSettings, generator: torch.Generator) -> list[Structure]:
        width = max(len(c) for c in cells)
        numbers = torch.zeros(len(cells), width, dtype=torch.long)
        for row, cell in enumerate(cells):
            numbers[row, : len(cell)] = torch.tensor(cell)
        n_atoms = torch.tensor([len(c) for c in cells])
        model = self.model
        coords, lattices = sample(
            model.network, model.schedule, model.normaliser, numbers.to(self.device), n_atoms.to(self.device), settings, generator
        )
        coords, lattices = coords.cpu().double().numpy(), lattices.cpu().double().numpy()
        return [rows_to_structure(coords[i, : len(c)], c, lattices[i]) for i, c in enumerate(cells)]
