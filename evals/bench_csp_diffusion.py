"""Benchmark: crystal structure prediction with the diffusion model on MP-20 test (``python -m evals.bench_csp_diffusion``).

Each test crystal's atoms are given (types and number, as in DiffCSP); a sampled structure
matches when pymatgen's ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)`` finds an RMS
distance to the true structure. Match rate follows DiffCSP's protocol: a pair counts only when
both structures are valid (SMACT composition validity with the ``smact14`` oxidation states,
as the legacy ``smact_validity`` of CDVAE/DiffCSP; all interatomic distances >= 0.5 Å and
volume >= 0.1 Å^3); the ungated match rate is reported too. RMSE is the mean RMS distance
(normalised by (V/n)^(1/3), pymatgen's convention) over matched pairs. Anchor: DiffCSP
51.5% / 0.063 on the complete split, one sample per formula.

Modes:
- ``--samples FILE.pt``: evaluate samples drawn on the GPU by ``generators.diffusion.sample_tensors``;
- otherwise sample here (CPU unless a GPU is present) with ``--weights`` for ``--limit`` crystals;
- ``--best-of K``: K samples per crystal, the one of lowest CHGNet energy per atom (among
  structurally valid samples) is evaluated; also reports the any-of-K match rate;
- ``--throughput``: structures/s for 20-atom cells (extrapolated from ``--throughput-steps``
  timed reverse steps to the full ``fast`` and ``ddpm`` step counts).
Writes the figures as JSON (``--json``, default ``runs/bench_csp_diffusion/<label>.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

MATCHER_TOLERANCES = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0}
DIFFCSP_MIN_DISTANCE = 0.5  # Å, DiffCSP/CDVAE structure_validity cutoff
DIFFCSP_MIN_VOLUME = 0.1  # Å^3
MIN_CELL_HEIGHT = 1.0  # Å; thinner cells are skipped for CHGNet (their neighbour lists explode memory)
CHGNET_BATCH = 8  # structures per CHGNet call in the selection


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals.bench_csp_diffusion", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=None, help="samples file from generators.diffusion.sample_tensors")
    parser.add_argument("--weights", type=Path, default=None, help="model.pt to sample with here (default: committed weights)")
    parser.add_argument("--data", type=Path, default=Path(".device_data"), help="tensor files (for sampling here)")
    parser.add_argument("--limit", type=int, default=None, help="first N test crystals only")
    parser.add_argument("--method", default="ddpm", choices=["ddpm", "fast"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--best-of", type=int, default=1, help="samples per crystal; >1 selects by CHGNet energy")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for StructureMatcher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--throughput", action="store_true", help="measure sampling throughput for 20-atom cells instead")
    parser.add_argument("--throughput-cells", type=int, default=16)
    parser.add_argument("--throughput-steps", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    return parser.parse_args(argv)


@lru_cache(maxsize=16384)
def composition_valid(formula_key: tuple[tuple[str, int], ...]) -> bool:
    """Legacy SMACT validity (CDVAE/DiffCSP: smact14 oxidation states, Pauling test, alloys valid).

    SMACT >= 3 fails the Pauling test when an element has no Pauling electronegativity (Pm in
    MP-20); under the SMACT 2 of CDVAE/DiffCSP that comparison raised a TypeError, which their
    metric counted as a pass, so such compositions are checked again with the old rule.
    """
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if smact_validity(Composition(dict(formula_key)), oxidation_states_set="smact14"):
            return True
    return _legacy_unknown_electronegativity_valid(formula_key)


def _legacy_unknown_electronegativity_valid(formula_key: tuple[tuple[str, int], ...]) -> bool:
    """SMACT 2's verdict for a composition with an element of unknown electronegativity (else False)."""
    import smact

    elements = [smact.Element(symbol) for symbol, _ in formula_key]
    electronegativities = [e.pauling_eneg for e in elements]
    if all(x is not None for x in electronegativities):
        return False  # SMACT >= 3 and SMACT 2 agree here
    divisor = math.gcd(*(count for _, count in formula_key))
    stoichiometry = [(count // divisor,) for _, count in formula_key]
    threshold = max(s[0] for s in stoichiometry)
    for states in itertools.product(*(e.oxidation_states_smact14 or [] for e in elements)):
        if smact.neutral_ratios(states, stoichs=stoichiometry, threshold=threshold) and _legacy_pauling_ok(
                states, electronegativities):
            return True
    return False


def _legacy_pauling_ok(states: tuple[int, ...], electronegativities: list[float | None]) -> bool:
    """SMACT 2's ``eneg_states_test``, pair by pair in order: the first comparison with an unknown
    electronegativity raised a TypeError, counted as a pass by the CDVAE/DiffCSP metric."""
    try:
        for (q1, x1), (q2, x2) in itertools.combinations(zip(states, electronegativities), 2):
            if (q1 > 0 and q2 < 0 and x1 >= x2) or (q1 < 0 and q2 > 0 and x1 <= x2):
                return False
    except TypeError:
        return True
    return True


def diffcsp_structure_valid(structure) -> bool:
    """DiffCSP's structure validity: distinct atoms >= 0.5 Å apart in the cell, volume >= 0.1 Å^3."""
    if not np.isfinite(structure.volume) or structure.volume < DIFFCSP_MIN_VOLUME:
        return False
    if len(structure) < 2:
        return True
    distances = structure.distance_matrix + np.eye(len(structure)) * (DIFFCSP_MIN_DISTANCE + 10.0)
    return bool(distances.min() >= DIFFCSP_MIN_DISTANCE)


def predicted_structure(frac_coords, atomic_numbers, lattice):
    """A pymatgen Structure from sampled rows, or None when the rows do not form a cell."""
    from generators.diffusion.crystal import rows_to_structure

    if not (np.all(np.isfinite(frac_coords)) and np.all(np.isfinite(lattice)) and np.all(np.asarray(lattice)[:3] > 0)):
        return None
    try:
        return rows_to_structure(frac_coords, atomic_numbers, lattice)
    except Exception:  # pymatgen rejects degenerate cells in several ways
        return None


def evaluate_structure(prediction, truth_cif: str) -> dict:
    """Validity and StructureMatcher RMS of one predicted ``Structure`` (or None) against the true CIF."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from tools.structure import structural_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth = Structure.from_str(truth_cif, fmt="cif")
        key = tuple(sorted(truth.composition.get_el_amt_dict().items()))
        comp_valid = composition_valid(tuple((el, int(round(n))) for el, n in key))
        result = {"constructed": prediction is not None, "comp_valid": comp_valid, "struct_valid": False,
                  "project_valid": False, "rms": None}
        if prediction is None:
            return result
        result["struct_valid"] = diffcsp_structure_valid(prediction)
        result["project_valid"] = structural_validity(prediction).valid
        try:
            rms = StructureMatcher(**MATCHER_TOLERANCES).get_rms_dist(prediction, truth)
        except Exception:  # the matcher fails on some degenerate cells: no match
            rms = None
        result["rms"] = None if rms is None else float(rms[0])
        return result


def evaluate_pair(job: tuple) -> dict:
    """:func:`evaluate_structure` of one (prediction rows, true CIF) pair (runs in a worker)."""
    frac_coords, atomic_numbers, lattice, cif = job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prediction = predicted_structure(frac_coords, atomic_numbers, lattice)
    return evaluate_structure(prediction, cif)


def truth_cifs(material_ids: list[str], split: str = "test") -> list[str]:
    """CIF strings of MP-20 ``split`` entries, in the order of ``material_ids``."""
    from generators.datasets import load_mp20

    table = load_mp20(split).set_index("material_id")["cif"]
    return [table[m] for m in material_ids]


def evaluate_pairs(jobs: list[tuple], workers: int) -> list[dict]:
    """:func:`evaluate_pair` over all jobs, in a process pool when ``workers`` > 1."""
    if workers <= 1:
        return [evaluate_pair(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(evaluate_pair, jobs, chunksize=16)


def summarise(results: list[dict]) -> dict:
    """Match rates (DiffCSP-gated and ungated), RMSE and validity shares of one sample per crystal."""
    count = len(results)
    gated = [r["rms"] for r in results if r["rms"] is not None and r["comp_valid"] and r["struct_valid"]]
    ungated = [r["rms"] for r in results if r["rms"] is not None]
    share = lambda key: sum(bool(r[key]) for r in results) / max(1, count)  # noqa: E731
    return {
        "crystals": count,
        "match_rate": len(gated) / max(1, count),
        "rmse": float(np.mean(gated)) if gated else None,
        "match_rate_ungated": len(ungated) / max(1, count),
        "rmse_ungated": float(np.mean(ungated)) if ungated else None,
        "constructed": share("constructed"),
        "struct_valid": share("struct_valid"),
        "project_struct_valid": share("project_valid"),
        "comp_valid": share("comp_valid"),
        "valid": sum(r["struct_valid"] and r["comp_valid"] for r in results) / max(1, count),
    }


def load_or_draw_samples(args: argparse.Namespace) -> dict:
    """The samples file's dict, or samples drawn here for ``--limit`` test crystals."""
    if args.samples:
        samples = torch.load(args.samples, map_location="cpu", weights_only=True)
        return limit_samples(samples, args.limit) if args.limit else samples
    from generators.diffusion.checkpoint import load_model
    from generators.diffusion.diffusion import SamplerSettings
    from generators.diffusion.sample_tensors import sample_split, take_rows
    from generators.diffusion.sampler import DEFAULT_WEIGHTS
    from generators.diffusion.tensor_files import load_split, pack_samples

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weights = args.weights or DEFAULT_WEIGHTS
    model = load_model(weights, device)
    split = take_rows(load_split(args.data, "test"), args.limit)
    settings = SamplerSettings.for_method(args.method, model.schedule.config.timesteps, args.steps)
    start = time.perf_counter()
    generator = torch.Generator(device).manual_seed(args.seed)
    coords, lattices = sample_split(model, split, args.best_of, settings, 64 if device.type == "cpu" else 4096, generator)
    seconds = time.perf_counter() - start
    info = {"method": args.method, "steps": settings.steps, "weights": str(weights), "device": str(device),
            "seconds": round(seconds, 1), "structures_per_second": round(args.best_of * len(split["material_ids"]) / seconds, 3)}
    return pack_samples(split, coords, lattices, info)


def limit_samples(samples: dict, limit: int) -> dict:
    """The first ``limit`` crystals of a samples dict."""
    sizes = samples["n_atoms"].long()
    atoms = int(sizes[:limit].sum())
    return {**samples, "material_ids": samples["material_ids"][:limit], "n_atoms": samples["n_atoms"][:limit],
            "atomic_numbers": samples["atomic_numbers"][:atoms], "frac_coords": samples["frac_coords"][:, :atoms],
            "lattice": samples["lattice"][:, :limit]}


def pair_jobs(unpacked_sample: list, cifs: list[str]) -> list[tuple]:
    return [(c.double().numpy(), z.numpy(), l.double().numpy(), cif) for (c, z, l), cif in zip(unpacked_sample, cifs)]


def min_cell_height(structure) -> float:
    """Smallest distance between opposite faces of the cell, Å (volume / largest face area)."""
    a, b, c = structure.lattice.matrix
    areas = [np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)), np.linalg.norm(np.cross(a, b))]
    return float(abs(structure.volume) / max(areas))


def chgnet_choice(unpacked: list[list], results: list[list[dict]]) -> list[int]:
    """Per crystal, the sample index of lowest CHGNet energy per atom among structurally valid samples (0 if none).

    Candidates must pass the project's structural validity (``tools.structure``: shortest
    distance, periodic images included, > 0.5 Å and a plausible volume per atom); cells with a
    sub-ångström axis pass DiffCSP's looser check but would flood CHGNet's neighbour lists,
    so cells thinner than :data:`MIN_CELL_HEIGHT` are skipped too.
    """
    from tools.energy import predict

    candidates, owners = [], []
    for m in range(len(unpacked[0])):
        for k in range(len(unpacked)):
            if results[k][m]["project_valid"]:
                coords, numbers, lattice = unpacked[k][m]
                structure = predicted_structure(coords.double().numpy(), numbers.numpy(), lattice.double().numpy())
                if structure is not None and min_cell_height(structure) >= MIN_CELL_HEIGHT:
                    candidates.append(structure)
                    owners.append((m, k))
    energies = predict(candidates, batch_size=CHGNET_BATCH)
    best: dict[int, tuple[float, int]] = {}
    for (m, k), outcome in zip(owners, energies):
        if isinstance(outcome, Exception):
            continue
        if m not in best or outcome.energy_per_atom < best[m][0]:
            best[m] = (outcome.energy_per_atom, k)
    return [best[m][1] if m in best else 0 for m in range(len(unpacked[0]))]


def any_of_k(results: list[list[dict]]) -> dict:
    """DiffCSP's multi-sample metric: a crystal matches when any valid sample matches; RMSE of the best."""
    matched = []
    for m in range(len(results[0])):
        rms = [r[m]["rms"] for r in results if r[m]["rms"] is not None and r[m]["comp_valid"] and r[m]["struct_valid"]]
        if rms:
            matched.append(min(rms))
    count = len(results[0])
    return {"match_rate_any": len(matched) / max(1, count), "rmse_any": float(np.mean(matched)) if matched else None}


def run_benchmark(args: argparse.Namespace) -> dict:
    from generators.diffusion.tensor_files import unpack_samples

    samples = load_or_draw_samples(args)
    unpacked = unpack_samples(samples)
    cifs = truth_cifs(samples["material_ids"])
    start = time.perf_counter()
    results = [evaluate_pairs(pair_jobs(sample, cifs), args.workers) for sample in unpacked]
    figures = {"samples_info": samples.get("info", {}), "samples_per_crystal": len(unpacked), **summarise(results[0])}
    if len(unpacked) > 1:
        choice = chgnet_choice(unpacked, results)
        figures["best_of_chgnet"] = summarise([results[k][m] for m, k in enumerate(choice)])
        figures["best_of_chgnet"].update(any_of_k(results))
    figures["evaluation_seconds"] = round(time.perf_counter() - start, 1)
    return figures


def throughput(args: argparse.Namespace) -> dict:
    """Structures/s for 20-atom cells, from timed reverse steps scaled to each method's step count."""
    from generators.diffusion.diffusion import SamplerSettings
    from generators.diffusion.sampler import DiffusionSampler

    sampler = DiffusionSampler.load(args.weights)
    cells = twenty_atom_cells(args.throughput_cells)
    timed = SamplerSettings(steps=args.throughput_steps, lattice_eta=0.0, corrector=True)
    sampler.sample_cells(cells[:2], SamplerSettings(steps=2), seed=0)  # load and warm up
    start = time.perf_counter()
    sampler.sample_cells(cells, timed, seed=0, batch_size=len(cells))
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / args.throughput_steps
    timesteps = sampler.model.schedule.config.timesteps
    figures = {"device": str(sampler.device), "threads": torch.get_num_threads(), "cells": len(cells), "atoms_per_cell": 20,
               "seconds_per_step": per_step}
    for method in ("fast", "ddpm"):
        steps = SamplerSettings.for_method(method, timesteps).steps
        figures[f"{method}_steps"] = steps
        figures[f"{method}_structures_per_second"] = len(cells) / (per_step * steps)
    return figures


def twenty_atom_cells(count: int) -> list[list[int]]:
    """Atomic numbers of the first ``count`` 20-atom cells of MP-20 test."""
    from pymatgen.core import Composition

    from generators.datasets import load_mp20

    table = load_mp20("test")
    rows = table[table["n_sites"] == 20].head(count)
    cells = []
    for formula, sites in zip(rows["pretty_formula"], rows["n_sites"]):
        composition = Composition(formula)
        units = int(sites) // int(composition.num_atoms)
        cells.append(sorted(el.Z for el, n in composition.items() for _ in range(int(n) * units)))
    return cells


def print_table(figures: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                table.add_row(f"{key}.{inner}", _format(inner_value))
        else:
            table.add_row(key, _format(value))
    Console().print(table)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.throughput:
        figures, label = throughput(args), "throughput"
    else:
        figures = run_benchmark(args)
        label = (args.samples.stem if args.samples else f"cpu_{args.method}") + (f"_best{args.best_of}" if args.best_of > 1 else "")
    print_table(figures, f"Diffusion CSP on MP-20 test ({label})")
    out = args.json or Path("runs") / "bench_csp_diffusion" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
