"""The user-facing Uni-MDM sampler: elements or a formula + a target property -> crystal structures.

>>> sampler = UniMDMSampler.load()                      # reads nothing yet
>>> crystals = sampler.sample(formula="BaTiO3", band_gap=3.0, n=4, seed=0)
>>> crystals[0].structure, crystals[0].space_group, crystals[0].letters

Two steps, as Uni-MDM: the symmetry predictor (:mod:`generators.unimdm.predictor`) proposes
space groups and Wyckoff assignments for the composition and the property (top 5, each
validated with pyxtal), then the Crystal DiT generates the lattice and the Wyckoff
representatives' coordinates for each chosen candidate, conditioned on the property; the
structures (conventional cells) carry the candidate's exact space group. ``space_group``
restricts the candidates to one group. With ``elements`` only, the formula is taken from the
known formulas of exactly those elements (Materials Project first, ICSD-reported next, fewest atoms first).
Models are read on first use from ``generators/weights/unimdm/`` (CPU unless CUDA is present).

With ``templates_dir`` (the DiT's training symmetry files, ``make unimdm-data``)
a candidate whose Wyckoff prototype occurs among the training crystals starts from a prototype
template (:mod:`generators.unimdm.templates`: the most alike training crystal of that prototype,
elements substituted, re-described from an equivalent setting where needed; the next most alike
for repeated draws) noised to ``TEMPLATE_START_LEVEL``,
and the DiT denoises it from there; other candidates start from noise. On MP-20 with the true
symmetry this lifts the match rate from 79.5% to 81.9% (generators/unimdm/README.md, Prototype templates).

Samples from noise by the default ``fast`` method use autoguidance (Karras et al. 2024) by
``guide.pt``, an early, weaker checkpoint of the same DiT (run 1, int8): ``(1 + w) main - w
guide`` with ``w = autoguidance`` (default :data:`AUTOGUIDANCE`; 0 turns it off). It matched
+1.05 points more of 2,560 held-out MP-20 crystals with ``fast`` (two network calls per step) and
nothing more with the 1000-step ``ddpm`` (-0.17 on 3,000 test crystals), so ``ddpm`` samples
and template starts stay unguided (generators/weights/unimdm/README.md, sixteenth entry).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from generators.diffusion.diffusion import SamplerSettings
from generators.diffusion.sampler import cpu_threads
from generators.unimdm.network import PROPERTIES, PROPERTY_SCALE
from generators.unimdm.templates import TEMPLATE_START_LEVEL

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "unimdm"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "model.pt"
DEFAULT_GUIDE = WEIGHTS_DIR / "guide.pt"  # run 1 of the model card as int8: the autoguidance guide of model.pt
AUTOGUIDANCE = 1.0  # weight w of (1 + w) main - w guide; picked on 512 val crystals (w = 2: +0.2 points, w = 1: +1.6)
AUTOGUIDED_METHODS = ("fast",)  # where the guide was measured to help (ddpm: no gain for twice the work)
MAX_CONVENTIONAL_ATOMS = 80  # the largest conventional cell in MP-20 train


@dataclass
class GeneratedCrystal:
    structure: object  # pymatgen Structure (conventional cell)
    formula: str
    space_group: int
    letters: dict[str, list[str]]
    symmetry_log_prob: float
    properties: dict = field(default_factory=dict)
    template: str | None = None  # material id of the training crystal the DiT started from (None: from noise)
    substitutions: dict[str, str] = field(default_factory=dict)  # requested element -> the template's, where they differ
    autoguidance: float = 0.0  # weight of the guide that steered this sample (0: the DiT alone)


def composition_counts(formula: str, formula_units: int = 1) -> dict[int, int]:
    """{Z: atoms} of ``formula`` times ``formula_units`` (ValueError for unreadable or fractional formulas)."""
    from pymatgen.core import Composition, Element

    try:
        composition = Composition(formula)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"cannot read formula {formula!r}: {exc}") from exc
    if not len(composition):
        raise ValueError(f"formula {formula!r} has no elements")
    counts = {}
    for element, amount in composition.items():
        if abs(amount - round(amount)) > 1e-6 or round(amount) < 1:
            raise ValueError(f"formula {formula!r} has a non-integer amount of {element}")
        counts[Element(str(element)).Z] = int(round(amount)) * int(formula_units)
    return counts


def formulas_for_elements(elements: list[str], limit: int = 3) -> list[str]:
    """Known reduced formulas made of exactly these elements: in MP first, reported in ICSD (observed)
    next, then fewest atoms (so FeO, FeO2, Fe2O3, Fe3O4 come before OQMD-only hypotheticals)."""
    from pymatgen.core import Composition

    from generators.datasets import KNOWN_FORMULAS_FILE, read_table

    wanted = {str(e).strip() for e in elements if str(e).strip()}
    table = read_table(KNOWN_FORMULAS_FILE)
    rows = []
    for formula, sources in zip(table["reduced_formula"], table["sources"]):
        if not isinstance(formula, str) or set(re.findall(r"[A-Z][a-z]?", formula)) != wanted:
            continue  # pandas reads the formula "NaN" as a float; it is not a match anyway
        composition = Composition(formula)
        if {str(el) for el in composition} == wanted:
            known_in = str(sources).split(";")
            rows.append(("MP" not in known_in, "ICSD" not in known_in, composition.num_atoms, formula))
    if not rows:
        raise ValueError(f"no known formula with exactly the elements {sorted(wanted)}: give a formula")
    return [formula for *_, formula in sorted(rows)[:limit]]


class UniMDMSampler:
    """Symmetry predictor + Crystal DiT; ``sample(...)`` returns :class:`GeneratedCrystal` objects."""

    def __init__(self, weights: str | Path | None = None, predictor_weights: str | Path | None = None,
                 device: str | None = None, threads: int | None = None, symmetry_source: Callable | None = None,
                 templates_dir: str | Path | None = None, start_level: int = TEMPLATE_START_LEVEL,
                 guide_weights: str | Path | None = None, autoguidance: float = AUTOGUIDANCE):
        """``symmetry_source``: an optional ``(counts, band_gap, formation_energy, space_group, top_k) -> candidates``
        used instead of the offline predictor (e.g. ``tools.claude_symmetry.ClaudeSymmetrySource``).
        ``templates_dir``: symmetry tensor files of the training crystals (train.pt, val_rest.pt) whose
        prototypes start the DiT at ``start_level`` (1..1000); None: every sample starts from noise.
        ``guide_weights``: the autoguidance guide of samples from noise (default: ``guide.pt`` for the
        default weights, none for other weights, whose guide must be named); ``autoguidance``: its weight
        w >= 0 (0: off)."""
        if not 1 <= int(start_level) <= 1000:
            raise ValueError(f"start_level must lie in 1..1000 (the diffusion's levels), got {start_level}")
        if not (autoguidance >= 0 and math.isfinite(autoguidance)):
            raise ValueError(f"autoguidance must be a finite weight >= 0, got {autoguidance}")
        self.templates_dir = Path(templates_dir) if templates_dir else None
        self.start_level = int(start_level)
        self._index = None
        self.weights = Path(weights) if weights else DEFAULT_WEIGHTS
        default_weights = self.weights.resolve() == DEFAULT_WEIGHTS.resolve()
        self.guide_weights = Path(guide_weights) if guide_weights else (DEFAULT_GUIDE if default_weights else None)
        self.autoguidance = float(autoguidance)
        self._noise_model = None
        self.predictor_weights = predictor_weights
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.threads = threads
        self.symmetry_source = symmetry_source
        self._model = None
        self._predictor = None

    @classmethod
    def load(cls, weights=None, predictor_weights=None, device=None, threads=None, symmetry_source=None,
             templates_dir=None, start_level=TEMPLATE_START_LEVEL, guide_weights=None,
             autoguidance=AUTOGUIDANCE) -> UniMDMSampler:
        return cls(weights, predictor_weights, device, threads, symmetry_source, templates_dir, start_level,
                   guide_weights, autoguidance)

    @staticmethod
    def available(weights: str | Path | None = None) -> bool:
        from generators.unimdm.predictor import WEIGHTS

        return Path(weights or DEFAULT_WEIGHTS).is_file() and WEIGHTS.is_file()

    @property
    def model(self):
        if self._model is None:
            if not self.weights.is_file():
                raise FileNotFoundError(f"Uni-MDM Crystal DiT weights missing at {self.weights}: they come from the GPU "
                                        "run described in generators/unimdm/README.md")
            from generators.unimdm.checkpoint import load_model

            self._model = load_model(self.weights, self.device)
        return self._model

    @property
    def noise_model(self):
        """The model that samples from noise: guided by ``guide_weights`` when there is a guide and a weight."""
        if self._noise_model is None:
            if self.autoguidance > 0 and self.guide_weights is not None:
                if not self.guide_weights.is_file():  # raised at every call, never a silent unguided fallback
                    raise FileNotFoundError(f"Uni-MDM autoguidance guide missing at {self.guide_weights} "
                                            "(autoguidance=0 samples without it)")
                from generators.unimdm.checkpoint import load_model, with_guide

                self._noise_model = with_guide(self.model, load_model(self.guide_weights, self.device), self.autoguidance)
            else:
                self._noise_model = self.model
        return self._noise_model

    @property
    def index(self):
        """The training crystals by Wyckoff prototype (None without ``templates_dir``), read on first use."""
        if self._index is None and self.templates_dir is not None:
            from generators.unimdm.templates import PrototypeIndex

            self._index = PrototypeIndex.from_dir(self.templates_dir)
        return self._index

    @property
    def predictor(self):
        if self._predictor is None:
            from generators.unimdm.predictor import SymmetryPredictor

            self._predictor = SymmetryPredictor.load(self.predictor_weights)
        return self._predictor

    def propose_symmetry(self, counts: dict[int, int], band_gap=None, formation_energy=None, space_group=None,
                         top_k: int = 5) -> list[dict]:
        """Validated candidates ``{space_group, letters {Z: [..]}, log_prob}`` for primitive-cell counts
        (from ``symmetry_source`` when set, else the offline predictor)."""
        from generators.unimdm.wyckoff import conventional_counts

        top_k = 1 if space_group else top_k
        if self.symmetry_source is not None:
            candidates = self.symmetry_source(counts, band_gap, formation_energy, space_group, top_k)
        else:
            candidates = self.predictor.predict(counts, band_gap, formation_energy, top_k=top_k, space_group=space_group)
        fitting = [c for c in candidates if sum(conventional_counts(c["space_group"], counts).values()) <= MAX_CONVENTIONAL_ATOMS]
        if not fitting:
            detail = f" in space group {space_group}" if space_group else ""
            raise ValueError(f"no Wyckoff assignment of this composition{detail} within {MAX_CONVENTIONAL_ATOMS} atoms per conventional cell")
        return fitting

    def sample(self, formula: str | None = None, elements: list[str] | None = None, band_gap: float | None = None,
               formation_energy: float | None = None, space_group: int | None = None, n: int = 4, formula_units: int = 1,
               method: str = "fast", steps: int | None = None, guidance: float = 0.0, seed: int = 0) -> list[GeneratedCrystal]:
        """``n`` structures for a formula (or elements) and target properties (eV; eV/atom)."""
        if formula is None:
            if not elements:
                raise ValueError("give a formula or elements")
            formula = formulas_for_elements(elements, limit=1)[0]
        counts = composition_counts(formula, formula_units)
        candidates = self.propose_symmetry(counts, band_gap, formation_energy, space_group)
        rng = np.random.default_rng(seed)
        weights = np.exp(np.array([c["log_prob"] for c in candidates]) - max(c["log_prob"] for c in candidates))
        chosen = rng.choice(len(candidates), size=n, p=weights / weights.sum())
        return self._generate(counts, [candidates[i] for i in chosen], band_gap, formation_energy, method, steps, guidance, seed)

    def _generate(self, counts, candidates, band_gap, formation_energy, method, steps, guidance, seed) -> list[GeneratedCrystal]:
        from pymatgen.core import Element, Lattice, Structure

        from generators.unimdm.data import pack_infos
        from generators.unimdm.symmetry import SymmetryInfo, orbits_from_letters
        from generators.unimdm.tensor_files import take_rows
        from generators.unimdm.templates import with_template_starts

        infos = [SymmetryInfo(c["space_group"], np.array([1.0, 1.0, 1.0, 90.0, 90.0, 90.0]),
                              orbits_from_letters(c["space_group"], c["letters"])) for c in candidates]
        gap = float("nan") if band_gap is None else float(band_gap)
        energy = float("nan") if formation_energy is None else float(formation_energy)
        split = pack_infos(infos, ["query"] * len(infos), ["query"] * len(infos), [gap] * len(infos), [energy] * len(infos))
        settings = SamplerSettings.for_method(method, self.model.schedule.config.timesteps, steps)
        generator = torch.Generator(self.model.device).manual_seed(seed)
        starts = self.template_starts(split, candidates)
        templated = [row for row, start in enumerate(starts) if start is not None]
        from_noise = [row for row, start in enumerate(starts) if start is None]
        coords, lattice, guide_weight = [None] * len(infos), [None] * len(infos), [0.0] * len(infos)
        for rows, part, level in ((from_noise, take_rows(split, from_noise), None),
                                  (templated, with_template_starts(take_rows(split, templated), [starts[r] for r in templated]), self.start_level)):
            if rows:
                model = self.noise_model if level is None and method in AUTOGUIDED_METHODS else self.model
                weight = float(model.training.get("autoguidance") or 0.0)
                for row, atoms, cell in zip(rows, *self._denoise(model, part, settings, guidance, generator, level)):
                    coords[row], lattice[row], guide_weight[row] = atoms, cell, weight
        results = []
        for row, (info, candidate) in enumerate(zip(infos, candidates)):
            n = info.n_atoms
            structure = Structure(Lattice.from_parameters(*lattice[row]), info.atomic_numbers().tolist(), coords[row][:n])
            letters = {Element.from_Z(z).symbol: v for z, v in candidate["letters"].items()}
            results.append(GeneratedCrystal(structure, structure.composition.reduced_formula, candidate["space_group"], letters,
                                            candidate["log_prob"], {"band_gap": band_gap, "formation_energy": formation_energy},
                                            *_template_origin(starts[row]), guide_weight[row]))
        return results

    def template_starts(self, split: dict, candidates: list[dict]) -> list:
        """Per row of ``split`` its prototype template (:class:`generators.unimdm.templates.Template`) or None:
        the k-th draw of one symmetry candidate takes its k-th most alike template (None once they run out,
        and always without ``templates_dir``)."""
        if self.index is None:
            return [None] * len(candidates)
        from generators.unimdm.templates import split_crystals

        keys = [(c["space_group"], tuple(sorted((z, tuple(v)) for z, v in c["letters"].items()))) for c in candidates]
        crystals = dict(zip(keys, split_crystals(split)))  # one request per distinct candidate
        found = {key: self.index.templates(crystal, keys.count(key)) for key, crystal in crystals.items()}
        starts = []
        for row, key in enumerate(keys):
            rank = keys[:row].count(key)
            starts.append(found[key][rank] if rank < len(found[key]) else None)
        return starts

    def _denoise(self, model, split: dict, settings, guidance: float, generator, start_level: int | None):
        """Atom coordinates and lattice parameters (numpy, per row) of ``model``'s samples for a packed split."""
        from generators.unimdm.diffusion import sample
        from generators.unimdm.tensor_files import collate_all

        batch = collate_all(split).to(model.device)
        with cpu_threads(self.threads):
            _, coords, lattice = sample(model.network, batch, model.schedule, model.normaliser, model.tables, settings,
                                        guidance=guidance, generator=generator, start_level=start_level)
        return coords.cpu().double().numpy(), lattice.cpu().double().numpy()


def _template_origin(template) -> tuple[str | None, dict[str, str]]:
    """(source material id, {requested element: the template's} where they differ) of a start; (None, {}) from noise."""
    from pymatgen.core import Element

    if template is None:
        return None, {}
    return template.source, {Element.from_Z(a).symbol: Element.from_Z(b).symbol for a, b in template.elements.items() if a != b}


__all__ = ["GeneratedCrystal", "UniMDMSampler", "composition_counts", "formulas_for_elements", "PROPERTIES", "PROPERTY_SCALE"]
