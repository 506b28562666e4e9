"""Crystal-GFN benchmark: trained vs untrained sampler on the formation-energy proxy.

    python evals/bench_gfn.py -n 1000 [--weights generators/weights/gfn/sampler_formation_energy.pt]

For N samples of each model: median proxy E_f (vs the proxy's training-data median), share with
E_f < -2 eV/atom, Wyckoff compatibility (pyxtal's own ``Group.check_compatible``), lattice validity
(lattice-system equalities, ranges, positive volume), SMACT validity (with and without the Pauling
test), distinct space groups / elements, sampling time; then the paper's four sampling-time
restrictions on the trained model, and pyxtal placement success on a few samples.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch


def evaluate(sampler, proxy, crystals, seconds: float) -> dict:
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    from generators.gfn import spacegroups as sgs
    from generators.gfn.env import cell_volume, lattice_valid

    e = proxy.predict(crystals)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smact = [smact_validity(Composition(c.composition)) for c in crystals]
        smact_np = [smact_validity(Composition(c.composition), use_pauling_test=False) for c in crystals]
    wyck = [sgs.pyxtal_group(c.space_group).check_compatible(list(c.composition.values()))[0] for c in crystals]
    lat = [lattice_valid(c.space_group, c.lattice, sampler.env.config) for c in crystals]
    vpa = np.array([cell_volume(c.lattice) / c.n_atoms for c in crystals])
    return {
        "n": len(crystals),
        "median_e_form": round(float(np.median(e)), 3),
        "frac_e_form_below_-2": round(float(np.mean(e < -2)), 3),
        "wyckoff_compatible_pct": round(100 * float(np.mean(wyck)), 1),
        "lattice_valid_pct": round(100 * float(np.mean(lat)), 1),
        "smact_valid_pct": round(100 * float(np.mean(smact)), 1),
        "charge_neutral_pct_no_pauling": round(100 * float(np.mean(smact_np)), 1),
        "distinct_space_groups": len({c.space_group for c in crystals}),
        "distinct_elements": len({el for c in crystals for el in c.composition}),
        "mean_atoms": round(float(np.mean([c.n_atoms for c in crystals])), 1),
        "median_volume_per_atom": round(float(np.median(vpa)), 2),
        # 1st-99th percentile of the proxy data's volume per atom (8.7-47.3 A^3; median 16.2)
        "volume_per_atom_in_data_range_pct": round(100 * float(np.mean((vpa >= 8.7) & (vpa <= 47.3))), 1),
        "sampling_seconds": round(seconds, 2),
    }


def min_distance(structure) -> float:
    d = structure.distance_matrix
    return float(d[np.triu_indices(len(structure), 1)].min()) if len(structure) > 1 else 9.0


def main() -> None:
    from generators.gfn.gfn import GFNSampler
    from generators.gfn.proxy import Proxy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--weights", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--place", type=int, default=20, help="samples to place with pyxtal (5 s limit each)")
    a = p.parse_args()
    torch.set_num_threads(1)
    proxy = Proxy.load("formation_energy")
    trained = GFNSampler.load(a.weights)
    untrained = GFNSampler.untrained(trained.env.config, seed=a.seed)
    trained.env.usable_groups(trained._restrictions(None, None, None, None, None))  # warm the masks' caches
    report = {"training_data_median_e_form": round(proxy.meta["train_median"], 3), "models": {}}
    for name, s in (("untrained", untrained), ("trained", trained)):
        t = time.time()
        cs = s.sample_crystals(a.n, seed=a.seed)
        report["models"][name] = evaluate(s, proxy, cs, time.time() - t)
        print(name, json.dumps(report["models"][name]), flush=True)
    t = time.time()
    rnd = trained.env.sample_random(a.n, np.random.default_rng(a.seed))
    report["models"]["uniform_valid_actions"] = evaluate(trained, proxy, rnd, time.time() - t)
    print("uniform_valid_actions", json.dumps(report["models"]["uniform_valid_actions"]), flush=True)
    restrictions = {
        "A_Fe-O_max10": dict(elements=["Fe", "O"], max_atoms_per_element=10),
        "B_Li-Mn-O": dict(elements=["Li", "Mn", "O"]),
        "C_cubic": dict(space_groups=[g for g in trained.env.config.space_groups if g >= 195]),
        "D_lengths10-20_angles75-135": dict(lattice_ranges={"lengths": (10, 20), "angles": (75, 135)}),
    }
    report["restricted"] = {}
    n_r = max(50, a.n // 5)
    for name, kw in restrictions.items():
        for model_name, s in (("untrained", untrained), ("trained", trained)):
            t = time.time()
            cs = s.sample_crystals(n_r, seed=a.seed, **kw)
            r = evaluate(s, proxy, cs, time.time() - t)
            report["restricted"][f"{name}/{model_name}"] = r
            print(f"{name}/{model_name}", json.dumps(r), flush=True)
    from generators.gfn.gfn import place_atoms

    report["placement"] = {}
    for name, s in (("untrained", untrained), ("trained", trained)):
        t = time.time()
        cs = s.sample_crystals(a.place, seed=a.seed)
        placed = [place_atoms(c, seed=a.seed, timeout_s=5.0) for c in cs]
        ok = [p for p in placed if p is not None]
        report["placement"][name] = {
            "placed_pct": round(100 * len(ok) / max(1, len(cs)), 1), "n": len(cs), "seconds": round(time.time() - t, 1),
            "min_distance_gt_0.5_pct": round(100 * float(np.mean([min_distance(p) > 0.5 for p in ok])) if ok else 0.0, 1),
            "formulas": [p.composition.reduced_formula for p in ok][:10]}
        print("placement", name, json.dumps(report["placement"][name]), flush=True)
    print("placement", json.dumps(report["placement"]))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
