"""Per-element atomic volumes for Crystal-GFN's volume prior, fitted on the proxy's training rows.

The cell volume of a crystal is modelled as ``sum_i n_i v_i`` (n_i atoms of element i, v_i its
volume in the solid); the v_i are a non-negative least-squares fit on the volume per atom of the
same rows the proxies train on (MP-20 train + MP2018 rows in no MP-20 split, validation part by
MP-id hash excluded). The ratio of the actual to the predicted volume over those rows gives the
range that :class:`generators.gfn.env.LatticeEnv` samples the volume per atom in (its 1st-99th
percentile). Volumes and counts are read from the CIF text (``_cell_volume``,
``_chemical_formula_sum``): seconds, no structure parsing.

Rebuild: ``python -m generators.gfn.volumes`` -> ``generators/weights/gfn/atomic_volumes.json``.
"""

from __future__ import annotations

import argparse
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

VOLUMES_FILE = Path(__file__).resolve().parents[1] / "weights" / "gfn" / "atomic_volumes.json"
_VOLUME = re.compile(r"_cell_volume\s+([0-9.]+)")
_FORMULA = re.compile(r"_chemical_formula_sum\s+'?([^'\n]+)'?")
_TERM = re.compile(r"([A-Z][a-z]?)([0-9.]*)")


def _parse(cif: str) -> tuple[float, dict[str, float]] | None:
    v, f = _VOLUME.search(cif), _FORMULA.search(cif)
    if not v or not f:
        return None
    counts = {el: float(n) if n else 1.0 for el, n in _TERM.findall(f.group(1))}
    return float(v.group(1)), counts


def fit(percentiles: tuple[float, float] = (1.0, 99.0)) -> dict:
    from scipy.optimize import nnls

    from generators.datasets import MP20_FILES, MP2018_FILE, read_table
    from generators.gfn.data import MAX_PRIMITIVE_SITES, _is_validation

    mp20 = read_table(MP20_FILES["train"])
    mp18 = read_table(MP2018_FILE)
    mp18 = mp18[mp18["mp20_split"].isna() & (mp18["n_sites"] <= MAX_PRIMITIVE_SITES)]
    mp18 = mp18[~mp18["material_id"].isin(set(mp20["material_id"]))]
    rows = [(m, c) for m, c in zip(mp20["material_id"], mp20["cif"])] + \
           [(m, c) for m, c in zip(mp18["material_id"], mp18["cif"])]
    parsed = [(m, _parse(c)) for m, c in rows if not _is_validation(m)]
    parsed = [p for _, p in parsed if p is not None]
    elements = sorted({el for _, counts in parsed for el in counts})
    col = {el: j for j, el in enumerate(elements)}
    a = np.zeros((len(parsed), len(elements)))
    y = np.zeros(len(parsed))
    for i, (vol, counts) in enumerate(parsed):
        n = sum(counts.values())
        for el, c in counts.items():
            a[i, col[el]] = c / n
        y[i] = vol / n
    # relative error: weight rows by 1 / volume per atom
    w = 1.0 / y
    v, _ = nnls(a * w[:, None], y * w)
    ratio = y / np.maximum(a @ v, 1e-6)
    lo, hi = np.percentile(ratio, percentiles)
    return {
        "volumes": {el: round(float(x), 3) for el, x in zip(elements, v)},
        "ratio_range": [round(float(lo), 3), round(float(hi), 3)],
        "ratio_percentiles": list(percentiles),
        "median_abs_log_ratio": round(float(np.median(np.abs(np.log(ratio)))), 4),
        "rows": len(parsed),
        "source": "MP-20 train + MP2018 rows in no MP-20 split, hash-validation rows excluded",
    }


@lru_cache(maxsize=1)
def load() -> dict:
    return json.loads(VOLUMES_FILE.read_text())


def atomic_volume(symbol: str) -> float:
    """Fitted volume (A^3) of one atom of ``symbol`` in a solid (KeyError if never seen)."""
    return float(load()["volumes"][symbol])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(VOLUMES_FILE))
    a = p.parse_args()
    result = fit()
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "volumes"}))
    print("saved", a.out)


if __name__ == "__main__":
    main()
