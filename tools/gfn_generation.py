"""Crystal-GFN structures for the agent: sample, place atoms, relax.

A trained Crystal-GFN sampler (``generators.gfn``) draws (space group, composition, lattice)
under a reward (formation energy, band gap near a target, density) and the sampling-time
restrictions (elements, space groups, a fixed formula, atom counts, lattice ranges); pyxtal
places the atoms on the group's Wyckoff positions; CHGNet (``tools.relaxation``) relaxes
positions and cell. The result is a full structure the rest of the system scores like any other.

Ranking: a pool of ``POOL_FACTOR * n`` samples, duplicates of (space group, composition)
removed, ordered by the reward's own figure (proxy E_f ascending, |proxy gap - target|
ascending, density descending); the best are placed and relaxed until ``n`` succeed.
Band-gap targets other than the one the sampler was trained for (1.34 eV) re-rank the pool
of that sampler by closeness to the requested target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from tools.generation import MAX_STRUCTURES, GeneratedStructure, GenerationError
from tools.structure import structural_validity

POOL_FACTOR = 4
DEFAULT_RELAX_STEPS = 100
DEFAULT_FMAX = 0.1  # eV/Å
PLACEMENT_TIMEOUT_S = 5.0


@dataclass
class GFNStructure(GeneratedStructure):
    """A Crystal-GFN structure: what was sampled and what the proxies / CHGNet say about it."""

    sampled: dict = field(default_factory=dict)  # space_group, composition, lattice as sampled
    properties: dict = field(default_factory=dict)


@lru_cache(maxsize=4)
def load_sampler(kind: str):
    """The committed sampler for a reward kind (cached)."""
    from generators.gfn.gfn import WEIGHTS_DIR, GFNSampler

    path = WEIGHTS_DIR / f"sampler_{kind}.pt"
    if not path.is_file():
        raise GenerationError(f"no trained Crystal-GFN sampler for the {kind} reward ({path.name} missing)")
    return GFNSampler.load(path)


@lru_cache(maxsize=2)
def _proxy(target: str):
    from generators.gfn.proxy import Proxy

    return Proxy.load(target)


def parse_reward(spec: str) -> tuple[str, float | None]:
    """``formation_energy`` | ``band_gap[:TARGET_EV]`` | ``density`` -> (kind, band-gap target or None)."""
    from generators.gfn.gfn import parse_reward as _parse

    try:
        return _parse(spec)
    except ValueError as exc:
        raise GenerationError(str(exc)) from None


def model_elements() -> tuple[str, ...]:
    """Elements the committed samplers know (the paper's 22)."""
    return load_sampler("formation_energy").env.config.elements


def _figures(crystals) -> list[dict]:
    from generators.gfn.env import cell_volume
    from generators.gfn.rewards import AMU_PER_A3_TO_G_PER_CM3

    from pymatgen.core import Element

    e_form = _proxy("formation_energy").predict(crystals)
    gap = _proxy("band_gap").predict(crystals)
    out = []
    for c, e, g in zip(crystals, e_form, gap):
        mass = sum(float(Element(el).atomic_mass) * n for el, n in c.composition.items())
        volume = cell_volume(c.lattice)
        out.append({"proxy_formation_energy": round(float(e), 4), "proxy_band_gap": round(max(float(g), 0.0), 4),
                    "density": round(mass * AMU_PER_A3_TO_G_PER_CM3 / volume, 4) if volume > 0 else None})
    return out


def _rank_key(kind: str, target: float | None):
    def key(fig: dict) -> float:
        if kind == "formation_energy":
            return fig["proxy_formation_energy"]
        if kind == "band_gap":
            return abs(fig["proxy_band_gap"] - target)
        return -(fig["density"] or 0.0)
    return key


def generate_gfn(reward: str = "formation_energy", elements: list[str] | None = None,
                 space_groups: list[int] | None = None, n: int = 4, seed: int = 0,
                 formula: dict[str, int] | None = None, max_atoms: int | None = None,
                 lattice_ranges: dict | None = None, relax_steps: int = DEFAULT_RELAX_STEPS,
                 fmax: float = DEFAULT_FMAX,
                 progress: Callable[[str, int, int], None] | None = None) -> list[GFNStructure]:
    """Up to ``n`` relaxed Crystal-GFN structures under ``reward`` and the restrictions.

    ``elements``: only these may appear (the model's 22 elements); ``space_groups``: only these;
    ``formula``: a fixed composition ({element: amount}), k formula units per cell; ``max_atoms``:
    atoms per conventional cell (<= 80); ``relax_steps`` 0 keeps pyxtal's unrelaxed placement.
    ``progress(stage, done, total)`` reports 'sample', 'place', 'relax'. Raises
    :class:`GenerationError` with the reason when the request cannot be met.
    """
    if not 1 <= n <= MAX_STRUCTURES:
        raise GenerationError(f"n must lie in 1-{MAX_STRUCTURES}, got {n}")
    if not 0 <= relax_steps <= 2000:
        raise GenerationError(f"relax_steps must lie in 0-2000, got {relax_steps}")
    kind, target = parse_reward(reward)
    sampler = load_sampler(kind)
    trained_target = sampler.meta.get("reward_params", {}).get("target")
    report = progress or (lambda stage, done, total: None)
    report("sample", 0, 1)
    try:
        crystals = sampler.sample_crystals(POOL_FACTOR * n, elements=elements, space_groups=space_groups, seed=seed,
                                           formula=formula, max_atoms=max_atoms, lattice_ranges=lattice_ranges)
    except ValueError as exc:
        raise GenerationError(f"Crystal-GFN cannot sample this: {exc}") from None
    report("sample", 1, 1)
    seen, pool = set(), []
    for c in crystals:
        key = (c.space_group, tuple(sorted(c.composition.items())))
        if key not in seen:
            seen.add(key)
            pool.append(c)
    figures = _figures(pool)
    order = sorted(range(len(pool)), key=lambda i: _rank_key(kind, target)(figures[i]))
    results: list[GFNStructure] = []
    for rank, i in enumerate(order):
        if len(results) >= n:
            break
        report("place", len(results), n)
        crystal, fig = pool[i], dict(figures[i])
        structure = _place(crystal, seed + rank)
        if structure is None:
            continue
        notes = [f"sampled by the {kind} sampler: space group {crystal.space_group}, "
                 f"{'-'.join(crystal.composition)} {crystal.formula()}, pyxtal placement"]
        if kind == "band_gap" and trained_target is not None and abs(target - trained_target) > 1e-6:
            notes.append(f"sampler trained for {trained_target:g} eV; pool re-ranked for {target:g} eV")
        if relax_steps:
            report("relax", len(results), n)
            relaxed = _relax(structure, relax_steps, fmax)
            if relaxed is None:
                continue
            structure, info = relaxed
            fig.update(info)
            notes.append(f"CHGNet relaxation: {info['relax_steps']} steps, "
                         f"{'converged' if info['relax_converged'] else 'not converged'}, "
                         f"E {info['chgnet_energy_initial']:.3f} -> {info['chgnet_energy']:.3f} eV/atom")
        validity = structural_validity(structure)
        if not validity.valid:
            continue
        fig["density_final"] = round(float(structure.density), 4)
        results.append(GFNStructure(
            structure=structure, formula=structure.composition.reduced_formula, family="",
            prototype=f"gfn {kind} sg{crystal.space_group}", assignment={}, generator="gfn", variant=rank,
            notes=notes, sampled=crystal.to_dict(), properties=fig))
    report("relax" if relax_steps else "place", len(results), n)
    if not results:
        raise GenerationError(f"no Crystal-GFN sample could be placed and relaxed into a valid structure "
                              f"({len(pool)} distinct samples tried)")
    return results


def _place(crystal, seed: int):
    from generators.gfn.gfn import place_atoms

    return place_atoms(crystal, seed=seed, timeout_s=PLACEMENT_TIMEOUT_S)


def _relax(structure, steps: int, fmax: float):
    from tools.relaxation import relax

    try:
        result = relax(structure, fmax=fmax, max_steps=steps)
    except Exception:  # noqa: BLE001 - a structure CHGNet cannot handle is skipped like a failed placement
        return None
    if not math.isfinite(result.final_energy_per_atom):
        return None
    return result.structure, {
        "chgnet_energy_initial": round(result.initial_energy_per_atom, 4),
        "chgnet_energy": round(result.final_energy_per_atom, 4),
        "relax_steps": result.steps, "relax_converged": bool(result.converged), "relax_rmsd": round(result.rmsd, 4),
    }


def generate_gfn_for_formula(formula: str, family: str | None = None, n: int = 4, seed: int = 0,
                             relax_steps: int | None = None) -> list[GFNStructure]:
    """The registry's form: structures of a given formula (the sampler picks space groups, the
    number of formula units and the lattice under the formation-energy reward).

    A family narrows the space groups to the family's; elements outside the model's 22 or a
    formula no space group can host within 80 atoms (16 per element) raise GenerationError.
    """
    from tools.families import get_family
    from tools.formula import parse_formula

    parsed = parse_formula(formula)
    amounts = parsed.reduced_amounts
    known = set(model_elements())
    outside = sorted(set(amounts) - known)
    if outside:
        raise GenerationError(f"Crystal-GFN knows only {', '.join(model_elements())}; "
                              f"{parsed.plain_formula} has {', '.join(outside)} (use template or random_symmetric)")
    groups = None
    if family:
        fam = get_family(family)
        groups = sorted(set(fam.spacegroups) & set(load_sampler("formation_energy").env.config.space_groups))
        if not groups:
            raise GenerationError(f"none of the {fam.name} space groups {list(fam.spacegroups)} is in the sampler's set")
    steps = DEFAULT_RELAX_STEPS if relax_steps is None else relax_steps
    return generate_gfn("formation_energy", space_groups=groups, n=n, seed=seed, formula=amounts, relax_steps=steps)


# ---------------------------------------------------------------------------- the search's use


def gfn_reward_for(spec) -> tuple[str | None, str]:
    """Crystal-GFN's reward for a search spec, or None, with the reason either way.

    Crystal-GFN fits open exploration under a property target: no family or stoichiometry
    pattern (the formula proposer and prototypes serve those), no anion class, element group,
    element count or application (its sampler cannot be held to them), a band-gap target (reward
    ``band_gap:TARGET``) or a request for dense phases (``density``), and required elements
    within the model's 22 (at least two elements allowed).
    """
    if spec.family or spec.stoichiometry:
        return None, "a family or stoichiometry is given (formula proposer and prototypes fit)"
    if spec.anion_class or spec.required_any or spec.n_elements or spec.application:  # its sampler honours elements only
        return None, ("an anion class, element groups, an element count or an application is given (the formula "
                      "proposer honours them)")
    if spec.band_gap is not None:
        reward, what = f"band_gap:{spec.band_gap:g}", f"a band gap near {spec.band_gap:g} eV"
    elif getattr(spec, "high_density", False):
        reward, what = "density", "dense phases"
    else:
        return None, "no band-gap or density target for Crystal-GFN's rewards"
    try:
        vocab = set(model_elements())
    except GenerationError as exc:
        return None, str(exc)
    outside = sorted(set(spec.required_elements) - vocab)
    if outside:
        return None, f"{', '.join(outside)} outside Crystal-GFN's elements"
    allowed = _allowed_elements(spec, vocab)
    if len(allowed) < 2 or not set(spec.required_elements) <= allowed:
        return None, "fewer than two of Crystal-GFN's elements are allowed"
    return reward, (f"open exploration under a property target ({what}): Crystal-GFN's {reward.split(':')[0]} "
                    f"sampler proposes compositions over {len(allowed)} elements")


def _allowed_elements(spec, vocab: set[str]) -> set[str]:
    allowed = set(spec.allowed_elements) & vocab if spec.allowed_elements is not None else set(vocab)
    return allowed - set(spec.excluded_elements)


def propose_gfn(spec, n: int, seed: int = 0, avoid: set[str] = frozenset()):
    """``n`` formulae (``tools.proposer.Proposal``, source 'gfn') from the sampler of the spec's
    reward: sampled crystals over the allowed elements, ranked by the reward's figure, distinct
    reduced formulae containing the required elements and not in ``avoid`` (composition keys)."""
    from tools.formula import parse_formula
    from tools.proposer import Proposal

    reward, why = gfn_reward_for(spec)
    if reward is None:
        raise GenerationError(f"Crystal-GFN does not fit this request: {why}")
    kind, target = parse_reward(reward)
    sampler = load_sampler(kind)
    vocab = set(sampler.env.config.elements)
    allowed = _allowed_elements(spec, vocab)
    try:
        crystals = sampler.sample_crystals(max(64, 8 * n), elements=None if allowed == vocab else sorted(allowed), seed=seed)
    except ValueError as exc:
        raise GenerationError(f"Crystal-GFN cannot sample this: {exc}") from None
    crystals = [c for c in crystals if set(spec.required_elements) <= set(c.composition)]
    figures = _figures(crystals)
    order = sorted(range(len(crystals)), key=lambda i: _rank_key(kind, target)(figures[i]))
    chosen, seen = [], set(avoid)
    for i in order:
        parsed = parse_formula("".join(f"{el}{k}" for el, k in crystals[i].composition.items()))
        if parsed.key not in seen:
            seen.add(parsed.key)
            chosen.append((parsed.reduced_formula, i))
        if len(chosen) >= n:
            break
    proposals = []
    for rank, (formula, i) in enumerate(chosen):
        fig = figures[i]
        proposals.append(Proposal(
            formula=formula, source="gfn", prior=round(1.0 - rank / len(chosen), 4),  # best first, in (0, 1]
            rationale=(f"Crystal-GFN {kind} sampler: space group {crystals[i].space_group}, proxy E_f "
                       f"{fig['proxy_formation_energy']:.2f} eV/atom, proxy gap {fig['proxy_band_gap']:.2f} eV, "
                       f"density {fig['density'] or 0:.2f} g/cm3")))
    return proposals
