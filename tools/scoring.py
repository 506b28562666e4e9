"""Scoring of crystal structures (GenMS's R_lo): CHGNet energy, formation energy, hull, guard.

``score_structures`` is what the agent, the CLI and the evaluations call. Each structure
goes through the plausibility guard (GenMS's protection against a generator exploiting the
scorer): overlapping atoms, absurd cells, too many sites, elements CHGNet does not cover,
non-finite outputs, exploding forces and formation energies outside the range known
compounds span are rejected with the reason. Energies in eV/atom, forces eV/Å, stress GPa.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from tools.energy import EnergyPrediction, UnsupportedStructureError, check_supported, predict
from tools.formation_energy import elemental_references
from tools.hull import energy_above_hull
from tools.structure import StructureError, read_text_file, structural_validity, write_cif

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringLimits:
    """The guard's thresholds.

    MP formation energies span -5.8 to +4.3 eV/atom (99.9% below +1.5), so predictions
    outside -6 to +2 eV/atom are treated as the scorer being fooled, not as discoveries.
    """

    max_sites: int = 200
    formation_energy_range: tuple[float, float] = (-6.0, 2.0)  # eV/atom
    max_force: float = 50.0  # eV/Å; larger forces mean a broken geometry or a model blow-up


def guard_structure(structure: Structure, limits: ScoringLimits) -> str | None:
    """Reason to reject a structure before scoring it, or ``None``."""
    if len(structure) == 0:
        return "structure has no atoms"
    if len(structure) > limits.max_sites:
        return f"too many sites ({len(structure)}; the scoring cap is {limits.max_sites})"
    try:
        check_supported(structure)
    except UnsupportedStructureError as exc:
        return str(exc)
    validity = structural_validity(structure)
    return validity.reason


def guard_prediction(prediction: EnergyPrediction, formation_energy: float | None, limits: ScoringLimits) -> str | None:
    """Reason to reject a scored structure, or ``None`` when its predictions are plausible."""
    values = [prediction.energy_per_atom, *np.ravel(prediction.forces), *np.ravel(prediction.stress)]
    if not all(math.isfinite(v) for v in values):
        return "non-finite CHGNet output"
    if prediction.max_force > limits.max_force:
        return f"exploding forces: {prediction.max_force:.1f} eV/Å > {limits.max_force} eV/Å"
    low, high = limits.formation_energy_range
    if formation_energy is not None and not low <= formation_energy <= high:
        return f"formation energy {formation_energy:.2f} eV/atom outside the plausible range {low} to {high} eV/atom"
    return None


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _empty_report(label: str | None, structure: Structure | None) -> dict[str, object]:
    return {
        "label": label,
        "reduced_formula": structure.composition.reduced_formula if structure is not None else None,
        "n_sites": len(structure) if structure is not None else None,
        "energy_per_atom": None,
        "formation_energy_per_atom": None,
        "e_above_hull": None,
        "decomposition": None,
        "max_force": None,
        "max_stress": None,
        "plausible": False,
        "reason": None,
    }


def _fill_energies(report: dict, structure: Structure, prediction: EnergyPrediction, limits: ScoringLimits) -> None:
    references = elemental_references()
    formation = references.formation_energy_per_atom(structure.composition, prediction.energy_per_atom)
    report.update(
        energy_per_atom=_rounded(prediction.energy_per_atom),
        formation_energy_per_atom=_rounded(formation),
        max_force=_rounded(prediction.max_force),
        max_stress=_rounded(np.abs(prediction.stress).max()),
    )
    reason = guard_prediction(prediction, formation, limits)
    if formation is None:
        missing = ", ".join(references.missing(structure.composition))
        reason = reason or f"no formation-energy reference for {missing}"
    elif reason is None:
        hull = energy_above_hull(structure.composition, formation)
        if hull.e_above_hull is None:
            report["reason"] = f"energy above hull unknown: no reference data with {', '.join(hull.unknown_elements)}"
        report.update(e_above_hull=_rounded(hull.e_above_hull), decomposition=hull.decomposition or None)
    report["plausible"] = reason is None
    report["reason"] = reason or report["reason"]


class _ProgressRaised(Exception):
    """The progress callback raised inside a batched relaxation (carries the exception as cause)."""


def _relax_all(structures: list[Structure], fmax: float, max_steps: int,
               progress: Callable[[str, int, int], None] | None) -> list:
    """Every structure relaxed together (``tools.batch_relax.relax_many``); a result or the exception
    that structure raised. When the batch fails, each structure is relaxed alone, so that one
    bad structure costs only its own result (and the log says so)."""
    from tools.batch_relax import relax_many
    from tools.relaxation import relax

    total = len(structures)

    def on_step(active: int, step: int) -> None:
        try:
            progress("relax", total - active, total)
        except BaseException as exc:  # the caller's own stop ('search stopped'): not a failed batch
            raise _ProgressRaised from exc

    try:
        return relax_many(structures, fmax=fmax, max_steps=max_steps, on_step=on_step if progress else None)
    except _ProgressRaised as raised:
        raise raised.__cause__ from None
    except Exception as exc:  # noqa: BLE001 - find the structure that broke it, keep the others
        log.warning("batched relaxation failed (%s: %s); relaxing the %d structures one at a time", type(exc).__name__, exc, total)
    results: list = []
    for done, structure in enumerate(structures, start=1):
        try:
            results.append(relax(structure, fmax=fmax, max_steps=max_steps))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
        if progress:
            progress("relax", done, total)
    return results


def score_structures(
    structures: Sequence[Structure],
    labels: Sequence[str] | None = None,
    relax: bool = False,
    fmax: float = 0.05,
    max_steps: int = 500,
    limits: ScoringLimits = ScoringLimits(),
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, object]]:
    """Score structures (optionally after CHGNet relaxation); one JSON-ready dict each.

    Keys: ``label, reduced_formula, n_sites, energy_per_atom, formation_energy_per_atom,
    e_above_hull, decomposition, max_force, max_stress, plausible, reason`` and, when
    relaxed, ``relaxed_cif, relax_converged, rmsd, energy_drop_per_atom, relax_steps``.
    ``progress(stage, done, total)`` reports long work.
    """
    from tools.relaxation import check_relax_options

    if relax:  # the call's arguments, refused before any work (a failure inside the loop is one item's)
        check_relax_options(fmax, max_steps)

    labels = list(labels) if labels is not None else [None] * len(structures)
    reports = [_empty_report(label, s) for label, s in zip(labels, structures)]
    scored: list[tuple[int, Structure]] = []
    for i, structure in enumerate(structures):
        reports[i]["reason"] = _per_item(guard_structure, structure, limits)
        if reports[i]["reason"] is None:
            scored.append((i, structure))
    if relax:
        results = _relax_all([s for _, s in scored], fmax, max_steps, progress)
        for position, ((i, structure), result) in enumerate(zip(list(scored), results)):
            if isinstance(result, Exception):  # this structure broke the relaxation; the others go on
                reports[i]["reason"] = f"relaxation failed: {type(result).__name__}: {result}"
                continue
            reports[i].update(
                relaxed_cif=write_cif(result.structure),
                relax_converged=result.converged,
                rmsd=_rounded(result.rmsd),
                energy_drop_per_atom=_rounded(result.energy_drop_per_atom),
                relax_steps=result.steps,
            )
            reason = structural_validity(result.structure).reason
            if reason:
                reports[i]["reason"] = f"after relaxation: {reason}"
            scored[position] = (i, result.structure)
        scored = [(i, s) for i, s in scored if reports[i]["reason"] is None]
    predictions = predict(
        [s for _, s in scored], on_batch=(lambda n: progress("score", n, len(scored))) if progress else None
    )
    for (i, structure), prediction in zip(scored, predictions):
        if isinstance(prediction, Exception):
            reports[i]["reason"] = str(prediction)
        else:
            failure = _per_item(_fill_energies, reports[i], structure, prediction, limits)
            if failure:
                reports[i].update(plausible=False, reason=failure)
    return reports


def _per_item(check: Callable[..., str | None], *arguments) -> str | None:
    """``check(*arguments)``, with an unexpected failure turned into that item's reason."""
    try:
        return check(*arguments)
    except Exception as exc:
        return f"scoring failed: {type(exc).__name__}: {exc}"


def score_texts(items: Sequence[tuple[str, str | StructureError]], **options) -> list[dict[str, object]]:
    """Score ``(label, CIF or POSCAR text)`` pairs; unreadable ones get a report with the reason.

    The texts come from outside, so each is read in a worker process (:mod:`tools.sandbox`):
    one that crashes or stalls the reader costs its own report only. A text may also be the
    :class:`StructureError` met while reading it (a file that could not be read). ``options``
    are those of :func:`score_structures`. Reports keep the input order.
    """
    from tools.sandbox import SandboxError, run_isolated

    structures, positions = [], []
    reports: list[dict[str, object] | None] = [None] * len(items)
    for position, (label, text) in enumerate(items):
        try:
            if isinstance(text, StructureError):
                raise text
            read = run_isolated("read_structure", {"text": text, "label": label})
            if "error" in read:
                raise StructureError(read["error"])
            structures.append(Structure.from_dict(read["structure"]))
            positions.append(position)
        except (StructureError, SandboxError) as exc:
            reports[position] = {**_empty_report(label, None), "reason": str(exc)}
    scored = score_structures(structures, [items[p][0] for p in positions], **options)
    for position, report in zip(positions, scored):
        reports[position] = report
    return reports


def score_files(paths: Sequence[str | Path], **options) -> list[dict[str, object]]:
    """Score structure files (CIF, POSCAR); each report's ``label`` is the path."""
    items = []
    for path in map(str, paths):
        try:
            items.append((path, read_text_file(path)))
        except StructureError as exc:
            items.append((path, exc))
    return score_texts(items, **options)
