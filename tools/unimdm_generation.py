"""Uni-MDM structures for the agent: elements or a formula + a property target -> structures.

The symmetry predictor proposes space groups and Wyckoff assignments for the composition and
the target (band gap, formation energy); the Crystal DiT generates each structure with that
exact symmetry, conditioned on the target (``generators.unimdm``). With an Anthropic key the
symmetry comes from Claude few-shot (``tools.claude_symmetry``; the offline predictor is its
fallback). Where the DiT's training symmetry files are built (``python -m generators.unimdm.data
build``; :func:`templates_dir`), a candidate whose Wyckoff prototype occurs among the training
crystals starts from the most alike of them, elements substituted, and the DiT refines it
(``generators.unimdm.templates``). Samples that fail the project's structural checks
(``tools.diffusion_generation.rejection_reason``) are redrawn a few times. The generator is
usable only once its weights exist (``generators/weights/unimdm/``); before that every call
raises :class:`~tools.generation.GenerationError` saying so.

Elements without counts and a band-gap target: the stoichiometry is part of the answer. Up to
:data:`STOICHIOMETRY_CANDIDATES` known formulas of exactly those elements each get one probe
structure for the target, the Crystal-GFN band-gap proxy predicts its gap, and the formula whose
probe comes nearest the target is generated (for Ti,O: TiO near 0 eV, TiO2 towards 3 eV), with
stability weighed in: a formula far above the Materials Project convex hull (a hypothetical such as
ZnO3) pays for it against its gap miss (:func:`probe_cost`). With a fixed composition the target
can act only through the polymorph, which moves the gap little.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tools.generation import MAX_STRUCTURES, GeneratedStructure, GenerationError

DRAW_ROUNDS = 3
METHODS = ("fast", "ddpm")
MAX_STEPS = 1000  # the diffusion's timesteps: more reverse steps than that do not exist
STOICHIOMETRY_CANDIDATES = 6  # known formulas probed per element set (MP first, ICSD next, fewest atoms first)
# Stability in the choice of formula: each eV/atom above the MP hull beyond the tolerance costs as much as
# STABILITY_WEIGHT eV of band-gap miss. The tolerance is the spread of unrelaxed probes of phases that lie on
# the hull (static CHGNet: TiO 0.22, Cu2O 0.25, FeO 0.29 eV/atom), so only clearly unstable formulas pay; at
# weight 2 a formula 0.8 eV/atom above the hull must come 1 eV nearer the target than a stable one to win.
STABILITY_WEIGHT = 2.0  # eV of band-gap miss per eV/atom
STABILITY_TOLERANCE = 0.3  # eV/atom above the hull that costs nothing
TEMPLATES_ENV = "GENMS_UNIMDM_TEMPLATES"
DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / ".device_data_unimdm"  # generators.unimdm.data build's --out


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
    return UniMDMSampler.load(threads=int(threads) if threads else None, symmetry_source=claude_symmetry_source(),
                              templates_dir=templates_dir())


def template_note(source: str | None, substitutions: dict[str, str], autoguidance: float = 0.0) -> str:
    """Where a sample started: a training crystal (and which of its elements were replaced), or noise
    (and the weight of the autoguidance guide that steered it, when one did)."""
    if source is None:
        return f"from noise, autoguided (weight {autoguidance:g})" if autoguidance else "from noise"
    if not substitutions:
        return f"refined from the training crystal {source} (the same elements)"
    swapped = ", ".join(f"{new} for {old}" for new, old in substitutions.items())
    return f"refined from the training crystal {source}'s arrangement ({swapped})"


def templates_dir() -> Path | None:
    """The DiT's training symmetry files whose Wyckoff prototypes start its samples: ``$GENMS_UNIMDM_TEMPLATES``
    (``off``: none), else ``.device_data_unimdm`` in the repository once built; None without them (every
    sample starts from noise). A named folder without train.pt is an error, not a silent fallback."""
    setting = os.environ.get(TEMPLATES_ENV)
    if setting is not None and setting.strip().lower() in ("", "off", "none", "0"):
        return None
    folder = Path(setting).expanduser() if setting else DEFAULT_TEMPLATES_DIR
    if (folder / "train.pt").is_file():
        return folder
    if setting:
        raise GenerationError(f"{TEMPLATES_ENV}={setting} has no train.pt: build the symmetry files with "
                              "`make unimdm-data UNIMDM_DATA=DIR` (train and val_rest: all 27,136 training crystals), or set it to off")
    return None


def claude_symmetry_source():
    """The Claude few-shot symmetry predictor when an Anthropic key is set (offline fallback inside), else None."""
    from tools.claude import claude_configured

    if not claude_configured():
        return None
    from tools.claude_symmetry import ClaudeSymmetrySource

    return ClaudeSymmetrySource()


@dataclass(frozen=True)
class Probe:
    """One candidate formula's probe structure: its proxy band gap (eV; NaN: no usable probe), its energy
    above the MP reference hull from static CHGNet (eV/atom), and the lowest of the formula's MP reference
    entries (DFT, eV/atom); ``None`` where unknown (no probe, a probe the scorer rejects, no entry)."""

    band_gap: float
    e_above_hull: float | None = None
    reference_e_above_hull: float | None = None

    @property
    def stability(self) -> float | None:
        """The formula's energy above hull as weighed (eV/atom): the lower of the probe's and the MP entry's.

        Each is the energy of one structure of the formula, so each bounds the formula's lowest energy from
        above; the lower is the better estimate. It spares known stable phases whose single unrelaxed probe came
        out poorly (probes of SrTiO3 and Fe2O3 score 3.3 and 2.0 eV/atom above the hull), while a formula with no
        MP entry (ZnO3, OQMD only) is judged by its probe."""
        known = [e for e in (self.e_above_hull, self.reference_e_above_hull) if e is not None]
        return min(known) if known else None


def probe_cost(probe: Probe, band_gap: float) -> float:
    """What choosing this probe's formula costs (eV): |gap - target| + STABILITY_WEIGHT * max(0, stability -
    STABILITY_TOLERANCE); the gap miss alone when the stability is unknown."""
    excess = 0.0 if probe.stability is None else max(0.0, probe.stability - STABILITY_TOLERANCE)
    return abs(probe.band_gap - band_gap) + STABILITY_WEIGHT * excess


def probe_hull_energies(structures: list) -> list[float | None]:
    """Energy above the MP reference hull (eV/atom) of each structure from one static CHGNet evaluation
    (``tools.scoring.score_structures``, with its plausibility guard); ``None`` for a missing structure or one
    the scorer rejects or cannot place on a hull."""
    from tools.scoring import score_structures

    present = [i for i, s in enumerate(structures) if s is not None]
    energies: list[float | None] = [None] * len(structures)
    for i, report in zip(present, score_structures([structures[i] for i in present])):
        energies[i] = report["e_above_hull"]
    return energies


def reference_hull_energy(formula: str) -> float | None:
    """The lowest energy above the MP reference hull (DFT, eV/atom) among the reference entries of this
    reduced formula (``tools.hull.phase_diagram``), or ``None`` when the reference data has none."""
    from pymatgen.core import Composition

    from tools.hull import phase_diagram

    composition = Composition(formula)
    diagram = phase_diagram(frozenset(el.symbol for el in composition.elements))
    energies = [diagram.get_e_above_hull(entry) for entry in diagram.all_entries
                if entry.composition.reduced_formula == composition.reduced_formula]
    return float(min(energies)) if energies else None


def formula_for_band_gap(sampler, elements: list[str], band_gap: float, space_group: int | None = None,
                         formation_energy: float | None = None, method: str = "fast", steps: int | None = None,
                         seed: int = 0, candidates: int = STOICHIOMETRY_CANDIDATES) -> tuple[str, dict[str, Probe]]:
    """The known formula of exactly ``elements`` whose probe structure has the lowest :func:`probe_cost`
    for the ``band_gap`` target (eV): proxy band gap near the target, not far above the hull; and every
    candidate's :class:`Probe` (band gap NaN: no usable probe, e.g. a formula that the imposed
    ``space_group`` cannot hold)."""
    from generators.gfn.proxy import structure_band_gaps
    from generators.unimdm.sampler import formulas_for_elements

    formulas = formulas_for_elements(elements, limit=candidates)
    if len(formulas) == 1:
        return formulas[0], {}
    structures = []
    for formula in formulas:
        try:
            structures.append(sampler.sample(formula=formula, band_gap=band_gap, formation_energy=formation_energy,
                                             space_group=space_group, n=1, method=method, steps=steps, seed=seed)[0].structure)
        except ValueError:  # no Wyckoff assignment of this formula in the imposed group
            structures.append(None)
    gaps = structure_band_gaps(structures)
    hull_energies = probe_hull_energies(structures)
    probes = {f: Probe(float(gap), e_hull, reference_hull_energy(f)) for f, gap, e_hull in zip(formulas, gaps, hull_energies)}
    usable = [f for f in formulas if math.isfinite(probes[f].band_gap)]
    return (min(usable, key=lambda f: probe_cost(probes[f], band_gap)) if usable else formulas[0]), probes


def describe_probe(formula: str, probe: Probe) -> str:
    """``formula gap eV, e_above_hull eV/atom`` for the choice note (the MP entry's too where it is lower)."""
    hull = "n/a" if probe.e_above_hull is None else f"{probe.e_above_hull:.2f}"
    text = f"{formula} {probe.band_gap:.2f} eV, {hull} eV/atom"
    if probe.reference_e_above_hull is not None and probe.stability == probe.reference_e_above_hull:
        text += f" (MP entry {probe.reference_e_above_hull:.2f})"
    return text


def generate_unimdm(formula: str | None = None, elements: list[str] | None = None, band_gap: float | None = None,
                    formation_energy: float | None = None, space_group: int | None = None, n: int = 4, seed: int = 0,
                    method: str = "fast", steps: int | None = None, family: str | None = None) -> list[GeneratedStructure]:
    """Up to ``n`` valid Uni-MDM structures (conventional cells with the predicted or given space group)."""
    from pymatgen.core import Element

    from tools.diffusion_generation import rejection_reason

    if not 1 <= n <= MAX_STRUCTURES:
        raise GenerationError(f"n must lie in 1-{MAX_STRUCTURES}, got {n}")
    if method not in METHODS:
        raise GenerationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise GenerationError(f"steps must lie in 1-{MAX_STEPS}, got {steps}")
    if space_group is not None and not 1 <= int(space_group) <= 230:
        raise GenerationError(f"space group must lie in 1-230, got {space_group}")
    unknown = [e for e in elements or [] if not Element.is_valid_symbol(str(e).strip())]
    if unknown:
        raise GenerationError(f"unknown element symbol(s): {', '.join(map(str, unknown))}")
    sampler = load_sampler()
    choice_note = None
    if formula is None and elements and band_gap is not None:
        try:
            formula, probes = formula_for_band_gap(sampler, elements, band_gap, space_group, formation_energy,
                                                   method=method, steps=steps, seed=seed)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        if probes:
            probed = "; ".join(describe_probe(f, p) for f, p in probes.items())
            choice_note = (f"stoichiometry for the {band_gap:g} eV target: {formula} (one probe each: proxy band gap, "
                           f"energy above the MP hull; {STABILITY_WEIGHT:g} eV of gap miss per eV/atom beyond "
                           f"{STABILITY_TOLERANCE:g}: {probed})")
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
            origin = template_note(crystal.template, crystal.substitutions, crystal.autoguidance)
            note = f"Uni-MDM sample ({method}, space group {crystal.space_group}, Wyckoff {letters}, {targets}, seed {seed}, {origin})"
            results.append(GeneratedStructure(crystal.structure, crystal.formula, family or "", f"unimdm sg {crystal.space_group}",
                                              {}, generator="unimdm", variant=len(results),
                                              notes=[note, choice_note] if choice_note else [note]))
        if len(results) == n:
            break
    if not results:
        raise GenerationError(f"no valid Uni-MDM sample among {len(rejected)}: {rejected[0] if rejected else 'none drawn'}")
    return results
