"""CHGNet energies, forces and stresses (the GNN of GenMS's R_lo).

Uses the pretrained CHGNet 0.3.0 checkpoint that the ``chgnet`` package ships (no download),
loaded once on first use. Predictions are batched through ``CHGNet.predict_structure``.
Units: energy in eV/atom, forces in eV/Å, stress in GPa.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pymatgen.core import Structure

CHGNET_VERSION = "0.3.0"
MAX_ATOMIC_NUMBER = 94  # CHGNet's element embedding and reference energies stop at Pu
DEFAULT_BATCH_SIZE = 64
log = logging.getLogger(__name__)


class UnsupportedStructureError(ValueError):
    """A structure CHGNet cannot score (elements beyond Pu, no atoms); the message says why."""


@lru_cache(maxsize=1)
def chgnet_model():
    """The pretrained CHGNet, loaded once (CPU, or a GPU when torch sees one)."""
    from chgnet.model import CHGNet

    # CHGNet prints a banner on construction even with verbose=False; stdout may carry JSON.
    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(model_name=CHGNET_VERSION, verbose=False)


def check_supported(structure: Structure) -> None:
    """Raise :class:`UnsupportedStructureError` for structures CHGNet does not cover."""
    if len(structure) == 0:
        raise UnsupportedStructureError("structure has no atoms")
    beyond = sorted({site.specie.symbol for site in structure if site.specie.Z > MAX_ATOMIC_NUMBER})
    if beyond:
        raise UnsupportedStructureError(f"CHGNet does not cover {', '.join(beyond)} (elements up to Pu only)")


@dataclass(frozen=True)
class EnergyPrediction:
    """CHGNet prediction for one structure."""

    energy_per_atom: float  # eV/atom
    forces: np.ndarray  # (n_sites, 3), eV/Å
    stress: np.ndarray  # (3, 3), GPa

    @property
    def max_force(self) -> float:
        """Largest force norm on any atom, eV/Å."""
        return float(np.linalg.norm(self.forces, axis=1).max()) if len(self.forces) else 0.0


def _to_prediction(raw: dict) -> EnergyPrediction:
    return EnergyPrediction(float(raw["e"]), np.asarray(raw["f"], dtype=float), np.asarray(raw["s"], dtype=float))


def predict(
    structures: Sequence[Structure],
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> list[EnergyPrediction | Exception]:
    """Energies, forces and stresses for structures, batched.

    A structure that fails (unsupported elements, a graph CHGNet cannot build) yields its
    exception in place of a prediction, so one bad structure does not lose the batch.
    ``on_batch(n)`` is called after each batch with the number of structures done.
    """
    results: list[EnergyPrediction | Exception | None] = [None] * len(structures)
    todo = []
    for i, structure in enumerate(structures):
        try:
            check_supported(structure)
            todo.append(i)
        except UnsupportedStructureError as exc:
            results[i] = exc
    model = chgnet_model() if todo else None
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        for i, outcome in zip(chunk, _predict_chunk(model, [structures[i] for i in chunk])):
            results[i] = outcome
        if on_batch:
            on_batch(min(start + batch_size, len(todo)))
    return results


def _quiet_predict(model, structures: list[Structure], task: str) -> list[dict]:
    """``predict_structure`` without CHGNet's harmless tensor-conversion warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad", category=UserWarning)
        raw = model.predict_structure(structures, task=task, batch_size=len(structures))
    return raw if isinstance(raw, list) else [raw]


def _predict_chunk(model, structures: list[Structure]) -> list[EnergyPrediction | Exception]:
    try:
        raw = _quiet_predict(model, structures, "efs")
        return [_to_prediction(r) for r in raw]
    except Exception as exc:  # one structure spoiled the batch: retry one by one to isolate it
        if len(structures) == 1:
            log.debug("CHGNet failed on a structure: %s", exc)
            return [UnsupportedStructureError(f"CHGNet could not score this structure: {exc}")]
        return [outcome for s in structures for outcome in _predict_chunk(model, [s])]


def predict_energies(structures: Sequence[Structure], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Energy per atom (eV/atom) only, batched; the fast path for large reference sets."""
    model = chgnet_model()
    energies = []
    for start in range(0, len(structures), batch_size):
        energies.extend(float(r["e"]) for r in _quiet_predict(model, list(structures[start : start + batch_size]), "e"))
    return np.asarray(energies)
