"""Structure generation for a formula: prototype substitution (GenMS's cheap baseline), with
random symmetric structures (pyxtal) for formulae that fit no prototype.

For a formula and a crystal family, every way the formula's elements fill the family's
template sites (A/B swaps included) is put on each of the family's prototypes
(``generators.prototypes``) with the lattice scaled to a predicted volume. Distinct
structures come first; when fewer than L exist, seeded variants (volume within +-6 %,
atoms rattled by up to 0.05 Å) fill the rest, for relaxation to take to nearby minima.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from generators.prototypes import build, prototypes_for
from tools.families import CrystalFamily, families_fitting, get_family
from tools.formula import ParsedFormula, parse_formula
from tools.structure import structural_validity

MAX_STRUCTURES = 100


class GenerationError(ValueError):
    """A formula the generator cannot place; the message says why."""


@dataclass
class GeneratedStructure:
    """One generated structure and where it came from."""

    structure: Structure
    formula: str
    family: str
    prototype: str
    assignment: dict[str, str]
    generator: str = "template"
    variant: int = 0
    notes: list[str] = field(default_factory=list)


def _families(parsed: ParsedFormula, family: str | None) -> list[CrystalFamily]:
    if family:
        chosen = get_family(family)
        if not chosen.fits(parsed):
            ratios = ", ".join(f"{t.name} ({t.ratio})" for t in chosen.templates)
            raise GenerationError(f"{parsed.plain_formula} does not fit the {chosen.name} templates {ratios}")
        return [chosen]
    fitting = [get_family(name) for name in families_fitting(parsed)]
    if not fitting:
        raise GenerationError(f"{parsed.plain_formula} fits no family of the catalogue; name one with --family")
    return fitting


def _candidates(parsed: ParsedFormula, families: list[CrystalFamily]) -> list[GeneratedStructure]:
    """One structure per (family, template assignment, prototype), duplicates removed."""
    matcher = StructureMatcher(stol=0.3, ltol=0.2, angle_tol=5)
    found: list[GeneratedStructure] = []
    for family in families:
        for template, assignment in family.assignments(parsed):
            for prototype in prototypes_for(family.name, template.name):
                structure = build(prototype, assignment)
                if any(matcher.fit(structure, other.structure) for other in found):
                    continue
                found.append(GeneratedStructure(structure, parsed.plain_formula, family.name, prototype.name, assignment))
    return found


def _variant(base: GeneratedStructure, number: int, rng: random.Random) -> GeneratedStructure:
    structure = base.structure.copy()
    scale = 1 + rng.uniform(-0.06, 0.06)
    structure.scale_lattice(structure.volume * scale)
    structure.perturb(0.05, min_distance=0.0, seed=rng.randrange(2**32))  # seeded: variants are reproducible
    note = f"variant {number}: volume x{scale:.3f}, atoms rattled <= 0.05 Å"
    return GeneratedStructure(structure, base.formula, base.family, base.prototype, base.assignment, variant=number, notes=[note])


def generate_template(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    """Up to ``n`` structures of ``formula`` on its family's prototypes (distinct ones first)."""
    if not 1 <= n <= MAX_STRUCTURES:
        raise GenerationError(f"n must lie in 1-{MAX_STRUCTURES}, got {n}")
    parsed = parse_formula(formula)
    candidates = [c for c in _candidates(parsed, _families(parsed, family)) if structural_validity(c.structure).valid]
    if not candidates:
        raise GenerationError(f"no prototype gives a valid structure for {parsed.plain_formula}")
    rng = random.Random(seed)
    results = candidates[:n]
    number = 1
    while len(results) < n:
        variant = _variant(candidates[(number - 1) % len(candidates)], number, rng)
        if structural_validity(variant.structure).valid:
            results.append(variant)
        number += 1
    return results


def generate_random(formula: str, n: int = 4, seed: int = 0, max_atoms: int = 40) -> list[GeneratedStructure]:
    """Up to ``n`` random symmetric structures (pyxtal) of a formula that fits no prototype."""
    from generators.random_symmetric import random_symmetric_structures

    if not 1 <= n <= MAX_STRUCTURES:
        raise GenerationError(f"n must lie in 1-{MAX_STRUCTURES}, got {n}")
    parsed = parse_formula(formula)
    if sum(parsed.reduced_amounts.values()) > max_atoms:
        raise GenerationError(f"{parsed.plain_formula} has more than {max_atoms} atoms per formula unit")
    results = [
        GeneratedStructure(structure, parsed.plain_formula, "", f"random P{group}", {}, generator="random_symmetric")
        for structure, group in random_symmetric_structures(parsed.reduced_amounts, n, seed=seed, max_atoms=max_atoms)
        if structural_validity(structure).valid
    ]
    if not results:
        raise GenerationError(f"pyxtal found no valid symmetric arrangement of {parsed.plain_formula}")
    return results


def generate_any(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> tuple[list[GeneratedStructure], str | None]:
    """Prototype substitution when the formula fits a prototype, else random symmetric structures.

    Returns the structures and, after a fallback, why the template generator was not used.
    """
    try:
        return generate_template(formula, family=family, n=n, seed=seed), None
    except GenerationError:
        return generate_random(formula, n=n, seed=seed), "no prototype fits; random symmetric structures (pyxtal)"


def _template(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    return generate_template(formula, family=family, n=n, seed=seed)


def _random_symmetric(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    return generate_random(formula, n=n, seed=seed)


def _gfn(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    """Crystal-GFN for a formula: its sampler picks space group, formula units and lattice (see
    ``tools.gfn_generation``); pyxtal places the atoms, CHGNet relaxes them."""
    from tools.gfn_generation import generate_gfn_for_formula

    return generate_gfn_for_formula(formula, family=family, n=n, seed=seed)


def _diffusion(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    """GenMS's diffusion model (``tools.diffusion_generation``): L samples, the number of
    formula units drawn from MP-20's statistics."""
    from tools.diffusion_generation import generate_diffusion

    return generate_diffusion(formula, family=family, n=n, seed=seed)


def _unimdm(formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    """Uni-MDM (``tools.unimdm_generation``) without a property target: predicted symmetry, then
    the Crystal DiT. A clear GenerationError until its weights exist."""
    from tools.unimdm_generation import generate_unimdm

    return generate_unimdm(formula=formula, family=family, n=n, seed=seed)


# Generators by the name that ``GeneratedStructure.generator`` records; each takes
# ``(formula, family=None, n=4, seed=0)``. The MCP tool schema lists these names,
# so registering a generator here offers it everywhere.
GENERATORS: dict[str, Callable[..., list[GeneratedStructure]]] = {
    "diffusion": _diffusion,
    "template": _template,
    "random_symmetric": _random_symmetric,
    "gfn": _gfn,
    "unimdm": _unimdm,
}


def generate_with(generator: str, formula: str, family: str | None = None, n: int = 4, seed: int = 0) -> list[GeneratedStructure]:
    """Up to ``n`` structures of ``formula`` from the named generator (see ``GENERATORS``)."""
    try:
        run = GENERATORS[generator]
    except KeyError:
        raise GenerationError(f"unknown generator {generator!r}; available: {', '.join(GENERATORS)}") from None
    return run(formula, family=family, n=n, seed=seed)
