"""Proxy training data for Crystal-GFN: (conventional-cell composition, space group, lattice) -> E_f, band gap.

Rows come from the shared MP data (``generators.datasets``): the MP-20 train split and the 2018 MP
snapshot rows that are in no MP-20 split (rows whose ``mp20_split`` is ``val``/``test`` are never
used). Each CIF is parsed once with pymatgen; ``SpacegroupAnalyzer(symprec=0.1)`` gives the space
group and the conventional standard cell, whose lattice parameters and atom counts are what the
GFlowNet samples (Wyckoff multiplicities refer to the conventional cell). The result is cached as one
compact tensor file under ``memory.paths.user_cache_dir()/gfn`` (recomputable, never committed).

Rebuild: ``python -m generators.gfn.data --rebuild``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

MAX_Z = 94
CACHE_NAME = "mp_proxy_data_v1.pt"
MAX_PRIMITIVE_SITES = 60


def cache_path() -> Path:
    from memory.paths import user_cache_dir

    path = user_cache_dir() / "gfn"
    path.mkdir(parents=True, exist_ok=True)
    return path / CACHE_NAME


def _is_validation(material_id: str, fraction: float = 0.1) -> bool:
    """Deterministic held-out part (hash of the MP id), the same on every machine."""
    h = int(hashlib.sha1(material_id.encode()).hexdigest()[:8], 16)
    return (h % 1000) < fraction * 1000


def _process(cif: str):
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
        sga = SpacegroupAnalyzer(structure, symprec=0.1)
        sg = sga.get_space_group_number()
        conv = sga.get_conventional_standard_structure()
    lat = conv.lattice
    counts = np.zeros(MAX_Z, dtype=np.int16)
    for el, amt in conv.composition.items():
        z = el.Z
        if z > MAX_Z:
            return None
        counts[z - 1] = int(round(amt))
    return sg, [lat.a, lat.b, lat.c, lat.alpha, lat.beta, lat.gamma], counts


def build(limit: int | None = None, log_every: int = 2000, out: Path | None = None) -> dict:
    from generators.datasets import MP20_FILES, MP2018_FILE, read_table

    mp20 = read_table(MP20_FILES["train"])
    mp18 = read_table(MP2018_FILE)
    mp18 = mp18[mp18["mp20_split"].isna() & (mp18["n_sites"] <= MAX_PRIMITIVE_SITES)]
    mp18 = mp18[~mp18["material_id"].isin(set(mp20["material_id"]))]
    rows = [(r.material_id, r.cif, r.formation_energy_per_atom, r.band_gap, r.spacegroup_number, 0)
            for r in mp20.itertuples()]
    rows += [(r.material_id, r.cif, r.formation_energy_per_atom, r.band_gap, float("nan"), 1)
             for r in mp18.itertuples()]
    if limit:
        rows = rows[:limit]
    ids, sgs, lats, comps, fe, bg, source, given_sg = [], [], [], [], [], [], [], []
    t0 = time.time()
    for i, (mid, cif, e, g, sg_given, src) in enumerate(rows):
        try:
            res = _process(cif)
        except Exception:  # noqa: BLE001 - an unparsable CIF is skipped, counted below
            res = None
        if res is not None:
            sg, lat, counts = res
            ids.append(mid)
            sgs.append(sg)
            lats.append(lat)
            comps.append(counts)
            fe.append(float("nan") if e is None else float(e))
            bg.append(float("nan") if g is None else float(g))
            source.append(src)
            given_sg.append(-1 if sg_given is None or (isinstance(sg_given, float) and math.isnan(sg_given))
                            else int(sg_given))
        if log_every and (i + 1) % log_every == 0:
            print(f"  {i + 1}/{len(rows)} rows, {time.time() - t0:.0f}s", flush=True)
    data = {
        "material_id": ids,
        "space_group": torch.tensor(sgs, dtype=torch.int16),
        "given_space_group": torch.tensor(given_sg, dtype=torch.int16),
        "lattice": torch.tensor(lats, dtype=torch.float32),
        "counts": torch.from_numpy(np.stack(comps)) if comps else torch.zeros(0, MAX_Z, dtype=torch.int16),
        "formation_energy": torch.tensor(fe, dtype=torch.float32),
        "band_gap": torch.tensor(bg, dtype=torch.float32),
        "source": torch.tensor(source, dtype=torch.int8),  # 0 MP-20 train, 1 MP2018 not in MP-20
        "is_val": torch.tensor([_is_validation(m) for m in ids], dtype=torch.bool),
        "meta": {"symprec": 0.1, "rows_read": len(rows), "rows_kept": len(ids), "seconds": time.time() - t0},
    }
    if out is not None:
        torch.save(data, out)
    return data


def load(rebuild: bool = False) -> dict:
    """The cached proxy data set (built on first use: about 15 minutes on one CPU core)."""
    path = cache_path()
    if rebuild or not path.is_file():
        tmp = path.with_suffix(".tmp")
        build(out=tmp)
        tmp.replace(path)
    return torch.load(path, weights_only=True)  # a user-cache file: tensors and plain data only, never code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    data = load(rebuild=args.rebuild)
    print(cache_path(), data["meta"], "val rows:", int(data["is_val"].sum()))


if __name__ == "__main__":
    main()
