"""GenMS diffusion structures for the agent (the low-level policy pi_lo).

The trained diffusion model (``generators.diffusion``) samples L structures for a formula; each
sample is checked (CIF round trip is the scorer's job; here: atoms not overlapping, volume per
atom plausible, no cell axis under :data:`MIN_AXIS` Å) and the ones that pass come back as
:class:`~tools.generation.GeneratedStructure`. Selecting among them is GenMS's best-of-N: the
search scores every sample with CHGNet and keeps each formula's lowest-energy plausible one.

Sampling runs on the CPU by default (torch's thread setting; ``GENMS_DIFFUSION_THREADS``
overrides it) and on the GPU when torch sees one.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from tools.formula import parse_formula
from tools.generation import MAX_STRUCTURES, GeneratedStructure, GenerationError
from tools.structure import structural_validity

MIN_AXIS = 1.0  # Å: a thinner cell is a collapsed sample, not a crystal
DRAW_ROUNDS = 3  # rounds of draws that replace invalid samples
METHODS = ("fast", "ddpm")


@lru_cache(maxsize=2)
def load_sampler(weights: str | None = None):
    """The diffusion sampler for ``weights`` (default: the committed model), read once per process."""
    from generators.diffusion.sampler import DiffusionSampler

    threads = os.environ.get("GENMS_DIFFUSION_THREADS")
    try:
        return DiffusionSampler.load(weights, threads=int(threads) if threads else None)
    except FileNotFoundError as exc:
        raise GenerationError(str(exc)) from None


def weights_available(weights: str | Path | None = None) -> bool:
    """Whether the diffusion weights exist (the search falls back to prototypes otherwise)."""
    from generators.diffusion.sampler import DEFAULT_WEIGHTS

    return Path(weights or DEFAULT_WEIGHTS).is_file()


def rejection_reason(structure) -> str | None:
    """Why a sample is unusable (collapsed axis, overlapping atoms, implausible volume), or None."""
    shortest = min(structure.lattice.abc)
    if shortest < MIN_AXIS:
        return f"cell axis {shortest:.2f} Å < {MIN_AXIS} Å"
    validity = structural_validity(structure)
    return None if validity.valid else validity.reason


def _formula_unit(amounts: dict[str, float]) -> dict[str, int]:
    """The formula unit as written when its amounts are whole (``Sr2Ti2O6`` keeps 10 atoms), else reduced."""
    if all(abs(a - round(a)) < 1e-6 and round(a) >= 1 for a in amounts.values()):
        return {el: int(round(a)) for el, a in amounts.items()}
    from tools.formula import integer_amounts

    return integer_amounts(amounts)


def generate_diffusion(
    formula: str,
    family: str | None = None,
    n: int = 4,
    seed: int = 0,
    formula_units: int | None = None,
    method: str = "fast",
    steps: int | None = None,
    weights: str | None = None,
) -> list[GeneratedStructure]:
    """Up to ``n`` valid diffusion samples of ``formula`` (a formula unit as written).

    ``formula_units`` fixes the number of units per cell (default: drawn from MP-20's
    statistics for that unit size); ``method`` ``fast`` (100 predictor-corrector steps) or
    ``ddpm`` (1000 steps); ``family`` is only recorded. Raises GenerationError for bad
    formulas, cells over the model's 20 atoms, missing weights, or when no sample is valid.
    """
    if not 1 <= n <= MAX_STRUCTURES:
        raise GenerationError(f"n must lie in 1-{MAX_STRUCTURES}, got {n}")
    if method not in METHODS:
        raise GenerationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if steps is not None and not 1 <= steps <= 1000:
        raise GenerationError(f"steps must lie in 1-1000, got {steps}")
    parsed = parse_formula(formula)
    unit = _formula_unit(parsed.amounts)
    written = "".join(f"{el}{count}" for el, count in unit.items())
    sampler = load_sampler(weights)
    results, rejected = [], []
    # Invalid samples are replaced by fresh draws (a few rounds), so n valid ones usually come back.
    for round_number in range(DRAW_ROUNDS):
        wanted = n - len(results)
        try:
            samples = sampler.sample(written, n=wanted, formula_units=formula_units, steps=steps, method=method,
                                     seed=seed + 7919 * round_number)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        for structure in samples:
            reason = rejection_reason(structure)
            if reason:
                rejected.append(reason)
                continue
            units = round(len(structure) / sum(unit.values()))
            note = f"diffusion sample {len(results) + len(rejected)} ({method}, {units} formula unit(s), seed {seed})"
            results.append(GeneratedStructure(structure, parsed.plain_formula, family or "", f"diffusion ({method})", {},
                                              generator="diffusion", variant=len(results), notes=[note]))
        if len(results) == n:
            break
    if not results:
        raise GenerationError(f"no valid diffusion sample of {parsed.plain_formula} among {len(rejected)}: {rejected[0]}")
    return results
