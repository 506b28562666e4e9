"""Crystal-GFN benchmark: every acceptance figure, trained vs untrained in every table.

    python evals/bench_gfn.py -n 10000 [--weights generators/weights/gfn/sampler_formation_energy.pt]

1. Proxies: held-out MAE recorded at training (hash-split validation rows) and recomputed here on
   MP-20 *test* rows (never used for training; ``--proxy-rows``), against predicting the median.
2. Formation-energy sampler, N samples of the trained and the untrained policy (and uniform valid
   actions): median proxy E_f (vs the training data's median), share with E_f < -2 eV/atom, Wyckoff
   compatibility (pyxtal's own ``Group.check_compatible``), lattice validity (lattice-system
   equalities, ranges, positive volume), SMACT validity (with and without the Pauling test),
   distinct space groups / elements, volume per atom in the data's range, sampling time.
3. The paper's four sampling-time restrictions (trained without them), N/10 samples each, with
   the share of samples that respect the restriction.
4. Band-gap (1.34 eV) and density samplers against the untrained policy.
5. pyxtal placement success on a few samples.
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

    from generators.gfn.volumes import load as load_volumes

    e = proxy.predict(crystals)
    table = load_volumes()
    lo, hi = table["ratio_range"]
    vbar = np.array([sum(table["volumes"][el] * k for el, k in c.composition.items()) / c.n_atoms for c in crystals])
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
        # volume per atom within the 1-99% range of (actual / composition-predicted) in the data
        "volume_in_composition_range_pct": round(100 * float(np.mean((vpa >= 0.999 * lo * vbar) & (vpa <= 1.001 * hi * vbar))), 1),
        "sampling_seconds": round(seconds, 2),
    }


def min_distance(structure) -> float:
    d = structure.distance_matrix
    return float(d[np.triu_indices(len(structure), 1)].min()) if len(structure) > 1 else 9.0


def proxy_mae(rows: int) -> dict:
    """MAE of both proxies on the first ``rows`` MP-20 test rows with both properties (structures
    never seen in training: the proxies train on MP-20 train + MP2018 rows in no MP-20 split)."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from generators.datasets import load_mp20
    from generators.gfn.env import Crystal
    from generators.gfn.proxy import Proxy

    table = load_mp20("test").dropna(subset=["formation_energy_per_atom", "band_gap"]).iloc[:rows]
    crystals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in table["cif"]:
            sga = SpacegroupAnalyzer(Structure.from_str(cif, fmt="cif"), symprec=0.1)
            conv = sga.get_conventional_standard_structure()
            lat = conv.lattice
            crystals.append(Crystal(sga.get_space_group_number(), {el.symbol: int(round(n)) for el, n in conv.composition.items()},
                                    (lat.a, lat.b, lat.c, lat.alpha, lat.beta, lat.gamma)))
    out = {}
    for target, column in (("formation_energy", "formation_energy_per_atom"), ("band_gap", "band_gap")):
        proxy = Proxy.load(target)
        truth = table[column].to_numpy()
        pred = proxy.predict(crystals)
        out[target] = {
            "heldout_val_mae_recorded": round(float(proxy.meta["val_mae"]), 4),
            "heldout_val_rows": proxy.meta.get("n_val"),
            "predict_median_mae_recorded": round(float(proxy.meta["val_mae_predict_train_median"]), 4),
            "mp20_test_rows": len(crystals),
            "mp20_test_mae": round(float(np.abs(pred - truth).mean()), 4),
            "mp20_test_predict_median_mae": round(float(np.abs(np.median(truth) - truth).mean()), 4),
        }
    out["band_gap"]["paper_mae"] = 0.32
    return out


def respects(crystal, restriction: dict) -> bool:
    from generators.gfn.env import FREE_PARAMETERS
    from generators.gfn import spacegroups as sgs

    if "elements" in restriction and not set(crystal.composition) <= set(restriction["elements"]):
        return False
    if "max_atoms_per_element" in restriction and max(crystal.composition.values()) > restriction["max_atoms_per_element"]:
        return False
    if "space_groups" in restriction and crystal.space_group not in restriction["space_groups"]:
        return False
    if "lattice_ranges" in restriction:
        (llo, lhi), (alo, ahi) = restriction["lattice_ranges"]["lengths"], restriction["lattice_ranges"]["angles"]
        free = [crystal.lattice[i] for i in FREE_PARAMETERS[sgs.lattice_system(crystal.space_group)] if i >= 3]
        return all(llo - 1e-6 <= x <= lhi + 1e-6 for x in crystal.lattice[:3]) and all(alo - 1e-6 <= x <= ahi + 1e-6 for x in free)
    return True


def data_density_median() -> float:
    """Median density (g/cm^3) of the proxies' training rows, from the CIF text."""
    from pymatgen.core import Element

    from generators.datasets import MP20_FILES, read_table
    from generators.gfn.volumes import _parse

    dens = []
    for cif in read_table(MP20_FILES["train"])["cif"]:
        parsed = _parse(cif)
        if parsed:
            vol, counts = parsed
            dens.append(sum(float(Element(el).atomic_mass) * n for el, n in counts.items()) * 1.66053906660 / vol)
    return float(np.median(dens))


def property_samplers(n: int, seed: int) -> dict:
    """Band-gap (target from the checkpoint) and density samplers vs the untrained policy."""
    from generators.gfn.gfn import WEIGHTS_DIR, GFNSampler
    from generators.gfn.proxy import Proxy
    from generators.gfn.rewards import AMU_PER_A3_TO_G_PER_CM3
    from generators.gfn.env import cell_volume

    from pymatgen.core import Element

    gap_proxy = Proxy.load("band_gap")

    def density(c) -> float:
        volume = cell_volume(c.lattice)
        mass = sum(float(Element(el).atomic_mass) * k for el, k in c.composition.items())
        return mass * AMU_PER_A3_TO_G_PER_CM3 / volume if volume > 0 else float("nan")

    out = {}
    bg = GFNSampler.load(WEIGHTS_DIR / "sampler_band_gap.pt")
    target = bg.meta["reward_params"]["target"]
    untrained = GFNSampler.untrained(bg.env.config, seed=seed)
    out["band_gap"] = {"target": target, "data_median_gap": round(float(gap_proxy.meta.get("train_median", float("nan"))), 3)}
    for name, s in (("untrained", untrained), ("trained", bg)):
        t = time.time()
        cs = s.sample_crystals(n, seed=seed)
        g = np.clip(gap_proxy.predict(cs), 0, None)
        out["band_gap"][name] = {"median_proxy_gap": round(float(np.median(g)), 3),
                                 "median_abs_miss": round(float(np.median(np.abs(g - target))), 3),
                                 "within_0.25_eV_pct": round(100 * float(np.mean(np.abs(g - target) <= 0.25)), 1),
                                 "within_0.5_eV_pct": round(100 * float(np.mean(np.abs(g - target) <= 0.5)), 1),
                                 "sampling_seconds": round(time.time() - t, 2)}
    rho = GFNSampler.load(WEIGHTS_DIR / "sampler_density.pt")
    out["density"] = {"data_median_density": round(data_density_median(), 3)}
    for name, s in (("untrained", GFNSampler.untrained(rho.env.config, seed=seed)), ("trained", rho)):
        t = time.time()
        d = np.array([density(c) for c in s.sample_crystals(n, seed=seed)])
        out["density"][name] = {"median_density": round(float(np.nanmedian(d)), 3), "p90_density": round(float(np.nanpercentile(d, 90)), 3),
                                "degenerate_cells_pct": round(100 * float(np.mean(np.isnan(d))), 2),
                                "sampling_seconds": round(time.time() - t, 2)}
    return out


def _table(title: str, columns: list[str], rows: dict[str, dict]) -> None:
    names = list(rows)
    print(f"\n{title}")
    print(" | ".join([f"{'figure':34s}"] + [f"{n:>22s}" for n in names]))
    for key in columns:
        print(" | ".join([f"{key:34s}"] + [f"{str(rows[n].get(key, '-')):>22s}" for n in names]))


FIGURES = ["n", "median_e_form", "frac_e_form_below_-2", "wyckoff_compatible_pct", "lattice_valid_pct", "smact_valid_pct",
           "charge_neutral_pct_no_pauling", "distinct_space_groups", "distinct_elements", "mean_atoms",
           "median_volume_per_atom", "volume_per_atom_in_data_range_pct", "volume_in_composition_range_pct",
           "sampling_seconds", "sampling_cpu_seconds"]


def main() -> None:
    from generators.gfn.gfn import GFNSampler, place_atoms
    from generators.gfn.proxy import Proxy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--weights", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--place", type=int, default=20, help="samples to place with pyxtal (5 s limit each)")
    p.add_argument("--proxy-rows", type=int, default=1000, help="MP-20 test rows for the proxies' MAE (0: skip)")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    a = p.parse_args()
    torch.set_num_threads(1)
    report = {}
    if a.proxy_rows:
        report["proxies"] = proxy_mae(a.proxy_rows)
        print("proxies", json.dumps(report["proxies"]), flush=True)
    proxy = Proxy.load("formation_energy")
    trained = GFNSampler.load(a.weights)
    untrained = GFNSampler.untrained(trained.env.config, seed=a.seed)
    trained.env.usable_groups(trained._restrictions(None, None, None, None, None))  # warm the masks' caches
    report.update({"training_data_median_e_form": round(proxy.meta["train_median"], 3), "models": {}})
    for name, s in (("untrained", untrained), ("trained", trained)):
        t, cpu = time.time(), time.process_time()
        cs = s.sample_crystals(a.n, seed=a.seed)
        report["models"][name] = evaluate(s, proxy, cs, time.time() - t)
        report["models"][name]["sampling_cpu_seconds"] = round(time.process_time() - cpu, 2)  # shared machine: CPU time too
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
    n_r = max(50, a.n // 10)
    for name, kw in restrictions.items():
        for model_name, s in (("untrained", untrained), ("trained", trained)):
            t = time.time()
            cs = s.sample_crystals(n_r, seed=a.seed, **kw)
            r = evaluate(s, proxy, cs, time.time() - t)
            r["respects_restriction_pct"] = round(100 * float(np.mean([respects(c, kw) for c in cs])), 1)
            report["restricted"][f"{name}/{model_name}"] = r
            print(f"{name}/{model_name}", json.dumps(r), flush=True)
    report["property_samplers"] = property_samplers(max(200, a.n // 10), a.seed)
    print("property_samplers", json.dumps(report["property_samplers"]), flush=True)
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

    # the tables
    if "proxies" in report:
        _table("Proxy MAE (held-out)", ["heldout_val_mae_recorded", "predict_median_mae_recorded", "mp20_test_rows",
                                        "mp20_test_mae", "mp20_test_predict_median_mae"], report["proxies"])
    print(f"\nTraining data median E_f: {report['training_data_median_e_form']} eV/atom")
    _table(f"Formation-energy sampler, {a.n} samples", FIGURES, report["models"])
    for name in restrictions:
        _table(f"Restriction {name}, {n_r} samples", ["respects_restriction_pct"] + FIGURES,
               {m: report["restricted"][f"{name}/{m}"] for m in ("untrained", "trained")})
    ps = report["property_samplers"]
    _table(f"Band-gap sampler (target {ps['band_gap']['target']} eV; data median {ps['band_gap']['data_median_gap']} eV)",
           ["median_proxy_gap", "median_abs_miss", "within_0.25_eV_pct", "within_0.5_eV_pct", "sampling_seconds"],
           {m: ps["band_gap"][m] for m in ("untrained", "trained")})
    _table(f"Density sampler (data median {ps['density']['data_median_density']} g/cm3)",
           ["median_density", "p90_density", "degenerate_cells_pct", "sampling_seconds"],
           {m: ps["density"][m] for m in ("untrained", "trained")})
    _table("pyxtal placement", ["n", "placed_pct", "min_distance_gt_0.5_pct", "seconds"], report["placement"])
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
