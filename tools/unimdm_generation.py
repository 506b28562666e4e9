"""Uni-MDM structures for the agent: elements or a formula + a property target -> structures.

The symmetry predictor proposes space groups and Wyckoff assignments for the composition and
the target (band gap, formation energy); the Crystal DiT generates each structure with that
exact symmetry, conditioned on the target (``generators.unimdm``). With an Anthropic key the
symmetry comes from Claude few-shot (``tools.claude_symmetry``; the offline predictor is its
fallback). Samples that fail the project's structural checks
(``tools.diffusion_generation.rejection_reason``) are redrawn a few times. The generator is
usable only once its weights exist (``generators/weights/unimdm/``); before that every call
raises :class:`~tools.generation.GenerationError` saying so.

Elements without counts and a band-gap target: the stoichiometry is part of the answer. Up to
:data:`STOICHIOMETRY_CANDIDATES` known formulas of exactly those elements each get one probe
structure for the target, the Crystal-GFN band-gap proxy predicts its gap, and the formula whose
probe comes nearest the target is generated (for Ti,O: TiO near 0 eV, TiO2 towards 3 eV). With a
fixed composition the target can act only through the polymorph, which moves the gap little.
"""

from __future__ import annotations

import os
from functools import lru_cache

from tools.generation import MAX_STRUCTURES, GeneratedStructure, GenerationError

DRAW_ROUNDS = 3
METHODS = ("fast", "ddpm")
MAX_STEPS = 1000  # the diffusion's timesteps: more reverse steps than that do not exist
STOICHIOMETRY_CANDIDATES = 6  # known formulas probed per element set (MP first, fewest atoms first)


def weights_available() -> bool:
    """Whether both the Crystal DiT and the symmetry predictor weights exist."""
    from generators.unimdm.sampler import UniMDMSampler

    return UniMDMSampler.available()


@lru_cache(maxsize=1)
def load_sampler():
    from generators.unimdm.sampler import UniMDMSampler

    if not UniMDMSampler.available():
        raise GenerationError("the Uni-MDM generator has no trained weights yet (generators/weights/unimdm/model.pt and "
                              "predictor.pt; see generators/unimdm/README.md for the GPU run)")
    threads = os.environ.get("GENMS_DIFFUSION_THREADS")
    return UniMDMSampler.load(threads=int(threads) if threads else None, symmetry_source=claude_symmetry_source())


def claude_symmetry_source():
    """The Claude few-shot symmetry predictor when an Anthropic key is set (offline fallback inside), else None."""
    from tools.claude_proposer import claude_configured

    if not claude_configured():
        return None
    from tools.claude_symmetry import ClaudeSymmetrySource

    return ClaudeSymmetrySource()


def formula_for_band_gap(sampler, elements: list[str], band_gap: float, space_group: int | None = None,
                         formation_energy: float | None = None, method: str = "fast", steps: int | None = None,
                         seed: int = 0, candidates: int = STOICHIOMETRY_CANDIDATES) -> tuple[str, dict[str, float]]:
    """The known formula of exactly ``elements`` whose probe structure's proxy band gap (eV) lies
    nearest ``band_gap``, and every candidate's probe gap (NaN: no usable probe, e.g. a formula
    that the imposed ``space_group`` cannot hold)."""
    import math

    from generators.gfn.proxy import structure_band_gaps
    from generators.unimdm.sampler import formulas_for_elements

    formulas = formulas_for_elements(elements, limit=candidates)
    if len(formulas) == 1:
        return formulas[0], {}
    probes = []
    for formula in formulas:
        try:
            probes.append(sampler.sample(formula=formula, band_gap=band_gap, formation_energy=formation_energy,
                                         space_group=space_group, n=1, method=method, steps=steps, seed=seed)[0].structure)
        except ValueError:  # no Wyckoff assignment of this formula in the imposed group
            probes.append(None)
    gaps = dict(zip(formulas, (float(g) for g in structure_band_gaps(probes))))
    usable = [f for f in formulas if math.isfinite(gaps[f])]
    return (min(usable, key=lambda f: abs(gaps[f] - band_gap)) if usable else formulas[0]), gaps


def generate_unimdm(formula: str | None = None, elements: list[str] | None = None, band_gap: float | None = None,
                    formation_energy: float | None = None, space_group: int | None = None, n: int = 4, seed: int = 0,
                    method: str = "fast", steps: int | None = None, family: str | None = None) -> list[GeneratedStructure]:
    """Up to ``n`` valid Uni-MDM structures (conventional cells with the predicted or given space group)."""
    from tools.diffusion_generation import rejection_reason

    if not 1 <= n <= MAX_STRUCTURES:
        raise GenerationError(f"n must lie in 1-{MAX_STRUCTURES}, got {n}")
    if method not in METHODS:
        raise GenerationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise GenerationError(f"steps must lie in 1-{MAX_STEPS}, got {steps}")
    if space_group is not None and not 1 <= int(space_group) <= 230:
        raise GenerationError(f"space group must lie in 1-230, got {space_group}")
    sampler = load_sampler()
    choice_note = None
    if formula is None and elements and band_gap is not None:
        try:
            formula, gaps = formula_for_band_gap(sampler, elements, band_gap, space_group, formation_energy,
                                                 method=method, steps=steps, seed=seed)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        if gaps:
            probed = ", ".join(f"{f} {g:.2f}" for f, g in gaps.items())
            choice_note = f"stoichiometry for the {band_gap:g} eV target: {formula} (proxy band gap of one probe each, eV: {probed})"
    results, rejected = [], []
    for round_number in range(DRAW_ROUNDS):
        try:
            crystals = sampler.sample(formula=formula, elements=elements, band_gap=band_gap, formation_energy=formation_energy,
                                      space_group=space_group, n=n - len(results), method=method, steps=steps,
                                      seed=seed + 7919 * round_number)
        except (ValueError, FileNotFoundError) as exc:
            raise GenerationError(str(exc)) from None
        for crystal in crystals:
            reason = rejection_reason(crystal.structure)
            if reason:
                rejected.append(reason)
                continue
            targets = ", ".join(f"{k} {v}" for k, v in crystal.properties.items() if v is not None) or "no property target"
            letters = " ".join(f"{el}:{''.join(v)}" for el, v in crystal.letters.items())
            note = f"Uni-MDM sample ({method}, space group {crystal.space_group}, Wyckoff {letters}, {targets}, seed {seed})"
            results.append(GeneratedStructure(crystal.structure, crystal.formula, family or "", f"unimdm sg {crystal.space_group}",
                                              {}, generator="unimdm", variant=len(results),
                                              notes=[note, choice_note] if choice_note else [note]))
        if len(results) == n:
            break
    if not results:
        raise GenerationError(f"no valid Uni-MDM sample among {len(rejected)}: {rejected[0] if rejected else 'none drawn'}")
    return results
