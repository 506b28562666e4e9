"""Energy above the convex hull against the Materials Project reference data.

The reference is every MP entry of the shared data with a DFT formation energy (MP-20 all
splits and the 2018 snapshot, one per MP id), on the formation-energy scale with the
elements at 0 eV/atom. Hulls are built per chemical system with pymatgen's ``PhaseDiagram``
from the entries whose elements are a subset of the query's, and cached. Energies in eV/atom.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element


@lru_cache(maxsize=1)
def reference_table() -> pd.DataFrame:
    """MP formation energies (formula, formation_energy_per_atom), one row per MP id.

    Built from the shared data on first use (a few seconds) and cached in the user cache dir.
    """
    from generators.datasets import MP20_FILES, MP20_SPLITS, MP2018_FILE, data_file, iter_mp20, iter_mp2018
    from memory.paths import user_cache_dir

    # The cache name carries the source files' sizes and times, so changed data rebuilds it.
    stamp = hashlib.sha1(
        "".join(f"{(f := data_file(name)).stat().st_size}:{f.stat().st_mtime_ns};" for name in (*MP20_FILES.values(), MP2018_FILE)).encode()
    ).hexdigest()[:12]
    cache = user_cache_dir() / f"hull_reference_entries_{stamp}.csv.gz"
    if cache.is_file():
        return pd.read_csv(cache)
    rows: dict[str, tuple[str, float]] = {}
    records = itertools.chain(*(iter_mp20(split) for split in MP20_SPLITS), iter_mp2018())
    for record in records:
        if record.material_id not in rows and record.formula and record.formation_energy_per_atom is not None:
            rows[record.material_id] = (record.formula, record.formation_energy_per_atom)
    table = pd.DataFrame(
        [(mp_id, formula, energy) for mp_id, (formula, energy) in rows.items()],
        columns=["material_id", "formula", "formation_energy_per_atom"],
    )
    table.to_csv(cache, index=False)
    return table


@lru_cache(maxsize=1)
def _entries_by_system() -> dict[frozenset[str], list[PDEntry]]:
    systems: dict[frozenset[str], list[PDEntry]] = {}
    for mp_id, formula, energy in reference_table().itertuples(index=False):
        composition = Composition(formula)
        entry = PDEntry(composition, energy * composition.num_atoms, name=formula, attribute=mp_id)
        systems.setdefault(frozenset(el.symbol for el in composition.elements), []).append(entry)
    return systems


def known_elements() -> frozenset[str]:
    """Elements that occur in at least one reference entry."""
    return frozenset().union(*_entries_by_system())


@lru_cache(maxsize=256)
def phase_diagram(elements: frozenset[str]) -> PhaseDiagram:
    """Reference phase diagram of a chemical system (elements at 0 eV/atom)."""
    systems = _entries_by_system()
    entries = [PDEntry(Composition(el), 0.0, name=el) for el in sorted(elements)]
    for size in range(1, len(elements) + 1):
        for subset in itertools.combinations(sorted(elements), size):
            entries.extend(systems.get(frozenset(subset), []))
    return PhaseDiagram(entries, elements=[Element(el) for el in sorted(elements)])


@dataclass(frozen=True)
class HullResult:
    """Energy above hull (eV/atom) and the stable phases the composition decomposes into.

    ``e_above_hull`` is ``None`` and ``unknown_elements`` lists the culprits when the
    reference data has no entry with some element. Negative values (below the reference hull)
    are kept: a prediction that beats every known phase.
    """

    e_above_hull: float | None
    decomposition: dict[str, float]
    unknown_elements: list[str]
    reference_entries: int


def energy_above_hull(composition: Composition, formation_energy_per_atom: float) -> HullResult:
    """Energy above the MP reference hull of a composition with a given E_f (eV/atom)."""
    elements = frozenset(el.symbol for el in composition.elements)
    unknown = sorted(elements - known_elements())
    if unknown:
        return HullResult(None, {}, unknown, 0)
    diagram = phase_diagram(elements)
    entry = PDEntry(composition, formation_energy_per_atom * composition.num_atoms)
    decomposition, e_above = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
    phases = {d.name: round(float(f), 4) for d, f in sorted(decomposition.items(), key=lambda kv: -kv[1])}
    return HullResult(float(e_above), phases, [], len(diagram.all_entries) - len(elements))
