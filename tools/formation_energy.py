"""Formation energy per atom from CHGNet energies, on the Materials Project scale.

CHGNet predicts a total energy per atom E (eV/atom, MPtrj-compatible). With elemental
reference energies mu_el, the formation energy per atom is ``E - sum_el x_el * mu_el`` (x the
atom fractions). The mu_el are fitted by least squares so that these formation energies match
the DFT formation energies of the MP-20 train split: for each structure,
``E_chgnet - E_f(MP) = sum_el x_el mu_el`` is one linear equation. One trimming pass drops
structures whose residual exceeds ``TRIM_EV`` (CHGNet outliers) and refits.

Commands (``python -m tools.formation_energy``):
  fit        compute CHGNet energies on MP-20 train (cached), fit, write the references
  evaluate   MAE against DFT on an MP-20 split (default: the complete test split)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition

REFERENCES_PATH = Path(__file__).with_name("data") / "chgnet_elemental_references.json"
TRIM_EV = 0.5  # eV/atom: residual beyond which a training structure counts as a CHGNet outlier


@dataclass(frozen=True)
class ElementalReferences:
    """Fitted elemental reference energies (eV/atom) and how they were obtained."""

    energies: dict[str, float]
    metadata: dict = field(default_factory=dict)

    def missing(self, composition: Composition) -> list[str]:
        """Elements of the composition with no fitted reference."""
        return sorted(el.symbol for el in composition.elements if el.symbol not in self.energies)

    def formation_energy_per_atom(self, composition: Composition, energy_per_atom: float) -> float | None:
        """E_f in eV/atom, or ``None`` when an element has no reference."""
        if self.missing(composition):
            return None
        fractions = composition.fractional_composition
        return float(energy_per_atom - sum(fractions[el] * self.energies[el.symbol] for el in composition.elements))

    def save(self, path: Path = REFERENCES_PATH) -> None:
        payload = {"metadata": self.metadata, "energies_eV_per_atom": dict(sorted(self.energies.items()))}
        path.write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def read(cls, path: Path = REFERENCES_PATH) -> ElementalReferences:
        payload = json.loads(path.read_text())
        return cls(payload["energies_eV_per_atom"], payload["metadata"])


@lru_cache(maxsize=1)
def elemental_references() -> ElementalReferences:
    """The committed references (``tools/data/chgnet_elemental_references.json``)."""
    return ElementalReferences.read(REFERENCES_PATH)


def fraction_matrix(compositions: list[Composition]) -> tuple[np.ndarray, list[str]]:
    """Atom fractions, one row per composition, one column per element (sorted symbols)."""
    elements = sorted({el.symbol for comp in compositions for el in comp.elements})
    column = {el: j for j, el in enumerate(elements)}
    matrix = np.zeros((len(compositions), len(elements)))
    for i, comp in enumerate(compositions):
        for el, fraction in comp.fractional_composition.items():
            matrix[i, column[el.symbol]] = fraction
    return matrix, elements


def fit_references(compositions: list[Composition], chgnet_energy: np.ndarray, dft_formation: np.ndarray) -> tuple[dict[str, float], dict]:
    """Least-squares elemental references with one outlier-trimming pass; returns (mu, stats)."""
    matrix, elements = fraction_matrix(compositions)
    target = chgnet_energy - dft_formation
    mu, *_ = np.linalg.lstsq(matrix, target, rcond=None)
    keep = np.abs(matrix @ mu - target) <= TRIM_EV
    mu, *_ = np.linalg.lstsq(matrix[keep], target[keep], rcond=None)
    residual = matrix @ mu - target
    stats = {
        "structures": int(len(target)),
        "kept_after_trim": int(keep.sum()),
        "trim_eV_per_atom": TRIM_EV,
        "train_mae_eV_per_atom": round(float(np.abs(residual).mean()), 4),
        "train_mae_kept_eV_per_atom": round(float(np.abs(residual[keep]).mean()), 4),
    }
    return {el: round(float(m), 6) for el, m in zip(elements, mu)}, stats


def mp20_energies(split: str, progress: bool = True) -> pd.DataFrame:
    """CHGNet energy per atom for every MP-20 row of a split with a DFT formation energy.

    Columns: material_id, formula, chgnet_energy_per_atom, dft_formation_energy_per_atom.
    Cached in the user cache directory (about 5 minutes for the train split on 2 cores).
    """
    from generators.datasets import iter_mp20
    from memory.paths import user_cache_dir
    from tools.energy import CHGNET_VERSION, predict_energies

    cache = user_cache_dir() / f"chgnet{CHGNET_VERSION}_mp20_{split}_energies.csv.gz"
    if cache.is_file():
        return pd.read_csv(cache)
    records = [r for r in iter_mp20(split) if r.formation_energy_per_atom is not None]
    structures = [r.structure for r in records]
    energies = _with_progress(structures, f"CHGNet energies, MP-20 {split}", predict_energies) if progress else predict_energies(structures)
    table = pd.DataFrame(
        {
            "material_id": [r.material_id for r in records],
            "formula": [s.composition.formula.replace(" ", "") for s in structures],
            "chgnet_energy_per_atom": energies,
            "dft_formation_energy_per_atom": [r.formation_energy_per_atom for r in records],
        }
    )
    table.to_csv(cache, index=False)
    return table


def _with_progress(structures, label, predict, chunk: int = 512) -> np.ndarray:
    from rich.progress import Progress

    parts = []
    with Progress() as bar:
        task = bar.add_task(label, total=len(structures))
        for start in range(0, len(structures), chunk):
            parts.append(predict(structures[start : start + chunk]))
            bar.advance(task, len(parts[-1]))
    return np.concatenate(parts) if parts else np.zeros(0)


def evaluate(split: str = "test", references: ElementalReferences | None = None) -> dict[str, float]:
    """MAE (eV/atom) of CHGNet-derived formation energies against DFT on an MP-20 split."""
    references = references or elemental_references()
    table = mp20_energies(split)
    predicted = [
        references.formation_energy_per_atom(Composition(f), e)
        for f, e in zip(table["formula"], table["chgnet_energy_per_atom"])
    ]
    covered = np.array([p is not None for p in predicted])
    error = np.array([p for p in predicted if p is not None]) - table["dft_formation_energy_per_atom"].to_numpy()[covered]
    return {
        "split": split,
        "structures_with_dft_value": int(len(table)),
        "covered_by_references": int(covered.sum()),
        "mae_eV_per_atom": float(np.abs(error).mean()),
        "median_ae_eV_per_atom": float(np.median(np.abs(error))),
        "rmse_eV_per_atom": float(np.sqrt((error**2).mean())),
    }


def fit(split: str = "train") -> ElementalReferences:
    """Fit on an MP-20 split and return the references with their metadata."""
    from tools.energy import CHGNET_VERSION

    started = time.time()
    table = mp20_energies(split)
    compositions = [Composition(f) for f in table["formula"]]
    energies, stats = fit_references(
        compositions, table["chgnet_energy_per_atom"].to_numpy(), table["dft_formation_energy_per_atom"].to_numpy()
    )
    metadata = {
        "model": f"CHGNet {CHGNET_VERSION} (pretrained, as shipped by the chgnet package)",
        "data": f"MP-20 {split} split, rows with a DFT formation energy (shared data mp20/{split}.csv.gz)",
        "method": "least squares of E_chgnet - E_f(MP) on atom fractions; one pass dropping residuals > trim",
        "command": "python -m tools.formation_energy fit",
        "date": date.today().isoformat(),
        "fit_seconds": round(time.time() - started, 1),
        **stats,
    }
    return ElementalReferences(energies, metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit or evaluate CHGNet elemental reference energies.")
    parser.add_argument("command", choices=["fit", "evaluate"])
    parser.add_argument("--split", default=None, help="MP-20 split (fit: train, evaluate: test)")
    args = parser.parse_args(argv)
    if args.command == "fit":
        references = fit(args.split or "train")
        test = evaluate("test", references)
        references.metadata["test_mae_eV_per_atom"] = round(test["mae_eV_per_atom"], 4)
        references.metadata["test_structures"] = test["covered_by_references"]
        references.save()
        print(json.dumps(references.metadata, indent=1))
        print(f"wrote {REFERENCES_PATH} ({len(references.energies)} elements)")
    else:
        print(json.dumps(evaluate(args.split or "test"), indent=1))


if __name__ == "__main__":
    main()
