"""Prototype templates: for a requested composition and symmetry (space group and per-element Wyckoff
letters), the training crystals of the same Wyckoff prototype with their elements substituted:
the prototype-substitution first guess of crystal structure prediction.

A crystal's Wyckoff prototype is its space group and its per-element sorted orbit letters with the
elements left anonymous (KCl and NaCl: Fm-3m, one element on 4a, one on 4b). A training crystal of
the requested prototype gives every orbit of the request a representative (the orbit of the mapped
element on the same letter; orbits of one element on one letter are interchangeable), which the
request's own Wyckoff operations expand, so the template has exactly the requested symmetry. The
templates are ranked by how alike the substituted elements are (Pauling electronegativity and
atomic radius); the lattice keeps the template's shape and is scaled by the atomic volumes.

Measured on the complete MP-20 test split (session 19, generators/unimdm/README.md): 8,079 of
9,046 test crystals have a training crystal of their prototype; the most alike template matches
86.0% of them (StructureMatcher, DiffCSP's gate), the Crystal DiT's single sample 83.6%.

CLI: ``python -m generators.unimdm.templates --data .device_data_unimdm --inputs test --fallback
DIT_SAMPLES.pt --out F.pt`` writes a samples file (``evals.bench_csp_unimdm --samples F.pt``):
the most alike template where one exists, the DiT's sample elsewhere (``--candidates K``: the K
most alike templates per crystal as ranked candidates instead).
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from generators.unimdm.tensor_files import collate_all, load_split, take_rows

TRAINING_SPLITS = ("train", "val_rest")  # the symmetry tensor files the DiT trains on
MAX_ELEMENT_MAPS = 120  # element maps tried per template (elements sharing one letter set permute)
# The level the DiT refines a template from (UniMDMSampler). Chosen on the held-out val crystals (session 20,
# run 10, DDPM): templates with the DiT's sample elsewhere 82.9%, refined from level 250 82.8%, 400 82.4%,
# 550 81.7%, the DiT alone 81.9%: a low level keeps the template's arrangement and still varies it.
TEMPLATE_START_LEVEL = 250


@dataclass(frozen=True)
class Orbit:
    z: int  # atomic number
    letter: int  # Wyckoff letter as an index of symmetry.LETTERS
    position: np.ndarray  # [3] representative's fractional coordinates (constrained components 0)


@dataclass(frozen=True)
class Crystal:
    """One crystal of a packed symmetry split, as the templates read it."""

    material_id: str
    space_group: int
    orbits: tuple[Orbit, ...]
    lattice: np.ndarray  # [6] a, b, c (Å), alpha, beta, gamma (degrees)

    @property
    def letters_by_element(self) -> dict[int, tuple[int, ...]]:
        per_element: dict[int, list[int]] = {}
        for orbit in self.orbits:
            per_element.setdefault(orbit.z, []).append(orbit.letter)
        return {z: tuple(sorted(letters)) for z, letters in per_element.items()}

    @property
    def prototype(self) -> tuple:
        """(space group, sorted per-element tuples of sorted letters): the elements anonymous."""
        return self.space_group, tuple(sorted(self.letters_by_element.values()))


@dataclass(frozen=True)
class Template:
    """A training crystal of the requested prototype, its elements substituted."""

    source: str  # the training crystal's material id
    elements: dict[int, int]  # requested atomic number -> the training crystal's
    dissimilarity: float  # of the substituted elements (0: the same elements)
    orbit_coords: np.ndarray  # [R, 3] a representative per requested orbit (the request's orbit order)
    lattice: np.ndarray  # [6] the template's lattice scaled to the requested atoms' volumes (Å, degrees)


def split_crystals(split: dict) -> list[Crystal]:
    """The crystals of a packed symmetry split (tensor_files format)."""
    elements, letters = split["orbit_z"].tolist(), split["orbit_letter"].tolist()
    positions = split["orbit_coords"].double().numpy() if "orbit_coords" in split else None
    lattices = split["lattice"].double().numpy() if "lattice" in split else None
    crystals, start = [], 0
    for row, (material_id, group, count) in enumerate(zip(split["material_ids"], split["space_group"].tolist(),
                                                          split["n_orbits"].tolist())):
        orbits = tuple(Orbit(elements[j], letters[j], positions[j] if positions is not None else np.zeros(3))
                       for j in range(start, start + count))
        crystals.append(Crystal(material_id, int(group), orbits, lattices[row] if lattices is not None else np.zeros(6)))
        start += count
    return crystals


def wyckoff_prototypes(split: dict) -> dict[str, tuple]:
    """Material id -> its Wyckoff prototype in a packed symmetry split."""
    return {crystal.material_id: crystal.prototype for crystal in split_crystals(split)}


@lru_cache(maxsize=None)
def element_features(z: int) -> tuple[float, float]:
    """(Pauling electronegativity, atomic radius in Å) from pymatgen; noble gases without an
    electronegativity get 2.0 (only their radius then tells them apart)."""
    from pymatgen.core import Element

    element = Element.from_Z(z)
    with warnings.catch_warnings():  # pymatgen warns for elements without a Pauling value (noble gases)
        warnings.simplefilter("ignore")
        electronegativity = element.X if element.X == element.X else 2.0
    radius = element.atomic_radius or element.atomic_radius_calculated or 1.5
    return float(electronegativity), float(radius)


def element_distance(a: int, b: int) -> float:
    """|delta Pauling electronegativity| + |delta atomic radius| / 0.5 Å of two elements (atomic numbers)."""
    (x_a, r_a), (x_b, r_b) = element_features(a), element_features(b)
    return abs(x_a - x_b) + abs(r_a - r_b) / 0.5


def element_dissimilarity(elements: dict[int, int]) -> float:
    """Sum over substituted elements of :func:`element_distance` + 0.1 (each substitution costs a
    little, so fewer substitutions win ties)."""
    return sum(element_distance(requested, template) + 0.1 for requested, template in elements.items() if requested != template)


def element_maps(request: Crystal, template: Crystal):
    """Every map of the request's elements onto the template's that keeps each element's letters."""
    requested, offered = {}, {}
    for z, letters in request.letters_by_element.items():
        requested.setdefault(letters, []).append(z)
    for z, letters in template.letters_by_element.items():
        offered.setdefault(letters, []).append(z)
    per_letter_set = [[dict(zip(zs, order)) for order in itertools.permutations(offered[letters])]
                      for letters, zs in requested.items()]
    for combination in itertools.islice(itertools.product(*per_letter_set), MAX_ELEMENT_MAPS):
        yield {a: b for part in combination for a, b in part.items()}


def composition(crystal: Crystal) -> dict[int, int]:
    """Atomic number -> atoms of the conventional cell."""
    from generators.unimdm.symmetry import LETTERS, wyckoff_operations

    counts: dict[int, int] = {}
    for orbit in crystal.orbits:
        counts[orbit.z] = counts.get(orbit.z, 0) + len(wyckoff_operations(crystal.space_group, LETTERS[orbit.letter])[0])
    return counts


def atomic_volume(crystal: Crystal, elements: dict[int, int] | None = None) -> float:
    """Sum of r^3 over the conventional cell's atoms (r: atomic radius of the element, or of its image under ``elements``)."""
    elements = elements or {}
    return sum(element_features(elements.get(z, z))[1] ** 3 * count for z, count in composition(crystal).items())


def substitute(request: Crystal, template: Crystal, elements: dict[int, int]) -> Template:
    pool: dict[tuple[int, int], list[np.ndarray]] = {}
    for orbit in template.orbits:
        pool.setdefault((orbit.z, orbit.letter), []).append(orbit.position)
    taken: dict[tuple[int, int], int] = {}
    positions = []
    for orbit in request.orbits:
        key = (elements[orbit.z], orbit.letter)
        positions.append(pool[key][taken.get(key, 0)])
        taken[key] = taken.get(key, 0) + 1
    lattice = template.lattice.copy()
    lattice[:3] *= (atomic_volume(request) / atomic_volume(request, elements)) ** (1 / 3)
    return Template(template.material_id, elements, element_dissimilarity(elements), np.array(positions), lattice)


def training_split_names(symmetry_dir: str | Path, names: tuple[str, ...] = TRAINING_SPLITS) -> list[str]:
    """The training symmetry files present in ``symmetry_dir`` (train.pt required)."""
    present = [name for name in names if (Path(symmetry_dir) / f"{name}.pt").exists()]
    if "train" not in present:
        raise ValueError(f"{symmetry_dir} has no train.pt: give the symmetry tensor files the DiT was trained on")
    return present


def _representative(rotation: np.ndarray, translation: np.ndarray, atoms: np.ndarray) -> np.ndarray | None:
    """Free components ``u`` with ``R u + t`` equal to one of ``atoms`` (mod 1), constrained ones 0; None if none fits."""
    from generators.unimdm.symmetry import free_components

    inverse, free = np.linalg.pinv(rotation), free_components(rotation)
    for atom in atoms:
        for shift in itertools.product((0.0, -1.0, 1.0), repeat=3):
            target = atom + np.array(shift) - translation
            u = inverse @ target
            if np.allclose(rotation @ u, target, atol=1e-5):
                return np.where(free, np.mod(u, 1.0), 0.0)
    return None


def redescribe(crystal: Crystal, coset: tuple[dict[str, str], np.ndarray, np.ndarray]) -> Crystal | None:
    """``crystal`` in another of its group's equivalent descriptions (a coset of
    :func:`~generators.unimdm.symmetry.normaliser_cosets`): each orbit's atoms moved by ``W x + w``,
    its letter mapped, a new representative found for the new letter, the cell's vectors transformed
    alike; None when an orbit finds no representative. For some cosets the tables' letter map
    belongs to the inverse operation, which is tried second (every re-description that finds all its
    representatives is the same crystal: StructureMatcher rms 0 for all 3,321 checked in session 21)."""
    letter_map, rotation, translation = coset
    inverse = np.linalg.inv(rotation)
    return _moved(crystal, letter_map, rotation, translation) or _moved(crystal, letter_map, inverse, -inverse @ translation)


def _moved(crystal: Crystal, letter_map: dict[str, str], rotation: np.ndarray, translation: np.ndarray) -> Crystal | None:
    from pymatgen.core import Lattice

    from generators.unimdm.symmetry import LETTERS, expand, wyckoff_operations

    orbits = []
    for orbit in crystal.orbits:
        atoms = expand(*wyckoff_operations(crystal.space_group, LETTERS[orbit.letter]), orbit.position)
        moved = np.mod(atoms @ rotation.T + translation, 1.0)
        letter = LETTERS.index(letter_map[LETTERS[orbit.letter]])
        rotations, translations = wyckoff_operations(crystal.space_group, LETTERS[letter])
        position = _representative(rotations[0], translations[0], moved)
        if position is None:
            return None
        orbits.append(Orbit(orbit.z, letter, position))
    # fractional x' = W x + w keeps the Cartesian atoms when the row basis becomes W^-T L
    matrix = np.linalg.inv(rotation).T @ Lattice.from_parameters(*crystal.lattice).matrix
    return Crystal(crystal.material_id, crystal.space_group, tuple(orbits), np.array(Lattice(matrix).parameters))


class PrototypeIndex:
    """Training crystals by Wyckoff prototype."""

    def __init__(self, crystals: list[Crystal]):
        self.by_prototype: dict[tuple, list[Crystal]] = {}
        self._redescribed: dict[tuple, list[Crystal]] = {}
        for crystal in crystals:
            self.by_prototype.setdefault(crystal.prototype, []).append(crystal)

    @classmethod
    def from_dir(cls, symmetry_dir: str | Path, names: tuple[str, ...] = TRAINING_SPLITS) -> PrototypeIndex:
        """The index of the training symmetry files in ``symmetry_dir`` (train.pt required; val_rest.pt when present)."""
        return cls([crystal for name in training_split_names(symmetry_dir, names) for crystal in split_crystals(load_split(symmetry_dir, name))])

    def templates(self, request: Crystal, k: int = 1) -> list[Template]:
        """The ``k`` most alike templates for ``request`` (ties: the training files' order). Where no
        training crystal has the request's prototype, those that have it in another equivalent
        description (:func:`redescribe`); [] for a new prototype."""
        candidates = self.by_prototype.get(request.prototype) or self.in_other_settings(request.prototype)
        ranked = []
        for order, candidate in enumerate(candidates):
            if candidate.material_id == request.material_id:
                continue  # a request that is itself a training crystal gets other crystals' arrangements
            dissimilarity, elements = min(((element_dissimilarity(m), m) for m in element_maps(request, candidate)), key=lambda x: x[0])
            ranked.append((dissimilarity, order, candidate, elements))
        ranked.sort(key=lambda entry: entry[:2])
        return [substitute(request, candidate, elements) for _, _, candidate, elements in ranked[:k]]

    def in_other_settings(self, prototype: tuple) -> list[Crystal]:
        """The training crystals re-described into ``prototype`` from an equivalent description."""
        from generators.unimdm.symmetry import LETTERS, normaliser_cosets

        if prototype not in self._redescribed:
            group, per_element = prototype
            found: dict[str, Crystal] = {}  # material id -> its first re-description into the prototype
            for coset in normaliser_cosets(group)[1:]:
                inverse = {LETTERS.index(new): LETTERS.index(old) for old, new in coset[0].items()}
                source = (group, tuple(sorted(tuple(sorted(inverse[letter] for letter in letters)) for letters in per_element)))
                for crystal in self.by_prototype.get(source, []):
                    if crystal.material_id not in found:
                        moved = redescribe(crystal, coset)
                        if moved is not None and moved.prototype == prototype:
                            found[crystal.material_id] = moved
            self._redescribed[prototype] = list(found.values())
        return self._redescribed[prototype]


def template_samples(split: dict, index: PrototypeIndex, fallback: list[dict] | dict | None = None, candidates: int = 1,
                     refined: list[dict] | dict | None = None) -> dict:
    """A samples file dict for ``split``: per crystal its ``candidates`` most alike templates (ranks
    0..K-1), or, with ``fallback`` (samples files with one sample per crystal, e.g. the DiT's), the
    most alike template where one exists and the fallback's sample elsewhere. ``refined`` (samples
    of the templated crystals, e.g. the DiT started from their templates: ``sample_tensors
    --start-level``) take the raw templates' place."""
    from generators.unimdm.sample_tensors import pack

    if (fallback is not None or refined is not None) and candidates != 1:
        raise ValueError("a fallback or refined samples give one sample per crystal: use them with candidates=1")
    crystals = split_crystals(split)
    keys = row_keys(split)
    chosen = [index.templates(crystal, candidates) for crystal in crystals]
    fallback_rows = samples_by_crystal(fallback, [key for key, found in zip(keys, chosen) if not found],
                                       "fallback") if fallback is not None else {}
    refined_rows = samples_by_crystal(refined, [key for key, found in zip(keys, chosen) if found],
                                      "refined") if refined is not None else {}
    rows = [(i, 0) for i in range(len(crystals))] if fallback is not None else \
        [(i, rank) for i, found in enumerate(chosen) for rank in range(len(found))]
    requests = take_rows(split, [i for i, _ in rows])
    if fallback is None:  # ranked templates are the candidates; with a fallback each row keeps its own (predicted) rank
        requests["candidate"] = torch.tensor([rank for _, rank in rows], dtype=torch.int16)
    found = [rank < len(chosen[i]) for i, rank in rows]
    positions = [torch.tensor(chosen[i][rank].orbit_coords, dtype=torch.float32) if ok else torch.zeros(len(crystals[i].orbits), 3)
                 for (i, rank), ok in zip(rows, found)]
    expanded = expand_rows(requests, torch.cat(positions)) if rows else []
    coords, lattices = [], []
    for row, ((i, rank), ok) in enumerate(zip(rows, found)):
        if ok and refined_rows:
            sampled, _, lattice = refined_rows[keys[i]]
            coords.append(sampled.float())
            lattices.append(lattice.float())
        elif ok:
            coords.append(expanded[row])
            lattices.append(torch.tensor(chosen[i][rank].lattice, dtype=torch.float32))
        else:
            sampled, _, lattice = fallback_rows[keys[i]]
            coords.append(sampled.float())
            lattices.append(lattice.float())
    info = {"inputs": "prototype templates", "candidates": candidates, "samples": 1, "from_templates": sum(found),
            "fallback": _infos(fallback), "refined": _infos(refined)}
    return pack(requests, [coords], torch.stack(lattices)[None] if lattices else torch.zeros(1, 0, 6), info)


def row_keys(split: dict) -> list[tuple[str, int]]:
    """(material id, symmetry candidate rank) per row of a symmetry or samples file: a crystal with
    predicted symmetry has a row per candidate; with its true symmetry one, rank 0."""
    ranks = split["candidate"].tolist() if "candidate" in split else [0] * len(split["material_ids"])
    return list(zip(split["material_ids"], (int(rank) for rank in ranks)))


def samples_by_crystal(samples: list[dict] | dict, needed: list[tuple[str, int]], what: str) -> dict[tuple[str, int], tuple]:
    """(material id, candidate) -> (coords, numbers, lattice) of the first sample of that row in samples
    file dicts (one or several, e.g. a split sampled in parts); every ``needed`` row must be there."""
    from generators.diffusion.tensor_files import unpack_samples

    rows: dict[tuple[str, int], tuple] = {}
    for part in samples if isinstance(samples, list) else [samples]:
        for key, row in zip(row_keys(part), unpack_samples(part)[0]):
            rows.setdefault(key, row)
    missing = sorted(set(needed) - set(rows))
    if missing:
        raise ValueError(f"the {what} samples lack {len(missing)} of the split's rows (e.g. {missing[0]})")
    return rows


def _infos(samples: list[dict] | dict | None):
    if samples is None:
        return None
    return [part.get("info") for part in samples] if isinstance(samples, list) else samples.get("info")


def template_inputs(split: dict, index: PrototypeIndex) -> dict:
    """The split's crystals that have a template, as a symmetry file whose representatives, lattice and
    k are the most alike template's: the start of ``sample_tensors --start-level`` (the DiT denoises
    the template from an intermediate level)."""
    crystals = split_crystals(split)
    chosen = [index.templates(crystal, 1) for crystal in crystals]
    rows = [i for i, found in enumerate(chosen) if found]
    return with_template_starts(take_rows(split, rows), [chosen[i][0] for i in rows])


def with_template_starts(split: dict, templates: list[Template]) -> dict:
    """``split`` (one template per crystal, in order) with each crystal's representatives, lattice and k
    taken from its template, and the templates' sources as ``template_sources``: a start for
    ``diffusion.sample(start_level=...)``."""
    from generators.unimdm.lattice import k_from_parameters

    if len(templates) != len(split["material_ids"]):
        raise ValueError(f"{len(templates)} templates for {len(split['material_ids'])} crystals")
    split = dict(split)
    if templates:
        split["orbit_coords"] = torch.cat([torch.tensor(t.orbit_coords, dtype=torch.float32) for t in templates])
        split["lattice"] = torch.tensor(np.array([t.lattice for t in templates]), dtype=torch.float32)
        split["k"] = k_from_parameters(split["lattice"].double()).float()
    split["template_sources"] = [t.source for t in templates]
    return split


def expand_rows(split: dict, orbit_coords: torch.Tensor) -> list[torch.Tensor]:
    """Per crystal [n, 3] atom coordinates of the given representatives [R, 3], by the split's own operations."""
    batch = collate_all({**split, "orbit_coords": orbit_coords})
    atoms = batch.expand(batch.orbit_coords)
    return [atoms[i, : int(batch.n_atoms[i])].clone() for i in range(atoms.shape[0])]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.templates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="symmetry tensor files (train.pt, val_rest.pt, the inputs)")
    parser.add_argument("--inputs", default="test", help="symmetry file of the requests (default test)")
    parser.add_argument("--fallback", help="samples file(s), comma-separated, with one sample per crystal for crystals without a template")
    parser.add_argument("--refined", help="samples file(s), comma-separated, of the templated crystals (e.g. "
                        "`sample_tensors --inputs test_templates --start-level L`) used in place of the raw templates")
    parser.add_argument("--candidates", type=int, default=1, help="templates per crystal (ranked; not with --fallback)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--symmetry-out", type=Path, help="also write the crystals with a template as a symmetry file "
                        "started from it (DIR/NAME.pt; sample it with `sample_tensors --inputs NAME --start-level L`)")
    args = parser.parse_args(argv)
    if args.candidates < 1:
        parser.error("--candidates must be at least 1")
    if (args.fallback or args.refined) and args.candidates != 1:
        parser.error("--fallback and --refined give one sample per crystal: leave --candidates at 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    split = load_split(args.data, args.inputs)
    fallback, refined = (None if not paths else [torch.load(path, map_location="cpu", weights_only=True) for path in paths.split(",")]
                         for paths in (args.fallback, args.refined))
    index = PrototypeIndex.from_dir(args.data)  # read once: the samples and the starts share it
    samples = template_samples(split, index, fallback, args.candidates, refined)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(samples, args.out)
    if args.symmetry_out:
        args.symmetry_out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(template_inputs(split, index), args.symmetry_out)
    crystals = len(split["material_ids"])
    print(f"{samples['info']['from_templates']} template rows for {crystals} crystals -> {args.out}")


if __name__ == "__main__":
    main()
