"""Isovalent element substitution of the training crystals: a data augmentation for the Crystal DiT.

Prototype templates (:mod:`generators.unimdm.templates`) show that a training crystal's arrangement
carried over to alike elements is often the right structure (86% of the test crystals with a
template). This module writes that knowledge into training data instead of retrieving it at
sampling time: every training crystal gets one copy with one of its elements replaced by an alike
element, and the DiT is trained on the originals and the copies, then sampled from noise as before.

An element may replace another when both are metals or both are not, the new one is no noble gas,
the two share a common oxidation state (pymatgen's ``common_oxidation_states``: charge balance is
kept) and their :func:`~generators.unimdm.templates.element_distance` (electronegativity and radius)
is at most ``max_distance``. The replaced element is drawn uniformly from the crystal's elements with
such a neighbour not already in the crystal, the new one with weight ``exp(-distance / 0.2)``.
Every orbit of the replaced element takes the new one; coordinates, letters and operations stay; the
cell is scaled by the cube root of the atomic volumes' ratio (:func:`~generators.unimdm.templates.atomic_volume`)
and ``k6`` moves with it. The copies have unknown properties (NaN: the learned null embeddings).

CLI: ``python -m generators.unimdm.substitution --data .device_data_unimdm`` writes ``sub.pt`` beside the
training files (27,136 MP-20 training crystals -> 26,903 copies in ~5 s with seed 0); train with
``--train-sets train,val_rest,sub``.

Measured (session 22, the model card's fifteenth run): run 10 fine-tuned ~106 epochs on the
originals and the copies matched 79.3% of MP-20 test against run 10's 79.5%, and 86.7% against 87.0%
of the 1,098 test crystals that have a copy of their own formula and prototype: no gain, so the
committed weights were not trained with it.
"""

from __future__ import annotations

import argparse
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from generators.unimdm.tensor_files import concatenate, load_split, take_rows
from generators.unimdm.templates import Crystal, atomic_volume, composition, element_distance, split_crystals, training_split_names

MAX_DISTANCE = 0.6  # top-1 templates up to this distance matched 91.7% of the val crystals (session 21)
TEMPERATURE = 0.2  # weight exp(-distance / TEMPERATURE): the nearest elements are drawn most often
SPLIT_NAME = "sub"


@lru_cache(maxsize=None)
def _element(z: int):
    from pymatgen.core import Element

    return Element.from_Z(z)


def can_replace(a: int, b: int, max_distance: float = MAX_DISTANCE) -> bool:
    """Whether element ``b`` may replace element ``a`` (atomic numbers; rules in the module docstring)."""
    first, second = _element(a), _element(b)
    return (a != b and first.is_metal == second.is_metal and not second.is_noble_gas
            and bool(set(first.common_oxidation_states) & set(second.common_oxidation_states))
            and element_distance(a, b) <= max_distance)


def isovalent_neighbours(elements: list[int], max_distance: float = MAX_DISTANCE) -> dict[int, list[tuple[int, float]]]:
    """Element -> [(replacing element, distance)] among ``elements``."""
    return {a: [(b, element_distance(a, b)) for b in elements if can_replace(a, b, max_distance)] for a in elements}


def draw_substitution(crystal: Crystal, neighbours: dict[int, list[tuple[int, float]]],
                      rng: np.random.Generator) -> dict[int, int] | None:
    """{replaced: new} for one element of ``crystal``, or None when none of its elements has a neighbour."""
    present = sorted({orbit.z for orbit in crystal.orbits})
    options = {a: [(b, d) for b, d in neighbours.get(a, []) if b not in present] for a in present}
    replaceable = [a for a in present if options[a]]
    if not replaceable:
        return None
    a = replaceable[rng.integers(len(replaceable))]
    weights = np.exp(-np.array([d for _, d in options[a]]) / TEMPERATURE)
    b = options[a][rng.choice(len(weights), p=weights / weights.sum())][0]
    return {a: b}


def substituted_split(split: dict, seed: int = 0, max_distance: float = MAX_DISTANCE) -> dict:
    """A packed split (tensor_files format) of one substituted copy per crystal of ``split`` that can
    take one; material ids read ``<id>~<old><new>`` (e.g. ``mp-1000~BaSr``)."""
    from pymatgen.core import Composition

    rng = np.random.default_rng(seed)
    crystals = split_crystals(split)
    neighbours = isovalent_neighbours(sorted({orbit.z for c in crystals for orbit in c.orbits}), max_distance)
    drawn = [(row, draw_substitution(c, neighbours, rng)) for row, c in enumerate(crystals)]
    drawn = [(row, m) for row, m in drawn if m is not None]
    copies = take_rows(split, [row for row, _ in drawn])
    maps = [m for _, m in drawn]
    per_orbit = np.repeat(np.arange(len(maps)), copies["n_orbits"].numpy().astype(np.int64))
    copies["orbit_z"] = torch.tensor([maps[i].get(z, z) for i, z in zip(per_orbit, copies["orbit_z"].tolist())],
                                     dtype=split["orbit_z"].dtype)
    scale = torch.tensor([(atomic_volume(crystals[row], m) / atomic_volume(crystals[row])) ** (1 / 3) for row, m in drawn],
                         dtype=torch.float32)
    copies["lattice"] = copies["lattice"].clone()
    copies["lattice"][:, :3] *= scale[:, None]
    copies["k"] = copies["k"].clone()
    copies["k"][:, 5] += torch.log(scale)  # k6 = log(volume) / 3
    copies["band_gap"] = torch.full_like(copies["band_gap"], math.nan)
    copies["formation_energy"] = torch.full_like(copies["formation_energy"], math.nan)
    copies["material_ids"] = [crystals[row].material_id + "~" + "".join(_element(a).symbol + _element(b).symbol for a, b in m.items())
                              for row, m in drawn]  # one id per copy, whatever the number of replaced elements
    copies["formulas"] = [Composition({_element(m.get(z, z)).symbol: n for z, n in composition(crystals[row]).items()}).reduced_formula
                          for row, m in drawn]
    return copies


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.substitution", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the symmetry tensor files (train.pt, val_rest.pt)")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the copies (default DATA/{SPLIT_NAME}.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-distance", type=float, default=MAX_DISTANCE,
                        help="largest electronegativity + radius distance of a replacing element, > 0")
    args = parser.parse_args(argv)
    if not args.max_distance > 0:
        parser.error(f"--max-distance must be positive, got {args.max_distance}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = training_split_names(args.data)
    copies = substituted_split(concatenate([load_split(args.data, name) for name in names]), args.seed, args.max_distance)
    out = args.out or args.data / f"{SPLIT_NAME}.pt"
    torch.save(copies, out)
    print(f"{len(copies['material_ids'])} substituted copies of the crystals of {', '.join(names)} -> {out}")


if __name__ == "__main__":
    main()
