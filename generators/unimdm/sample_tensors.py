"""Sample crystals for a whole symmetry file in big batches, pure torch (for the GPU machine).

``python -m generators.unimdm.sample_tensors --weights DIR/model.pt --data .device_data_unimdm
--inputs test --samples 1 --out FILE.pt [--band-gap 1.5] [--guidance 1.0] [--lattice-weights EARLY/model.pt]``

``--lattice-weights``: the lattice is denoised by that model's network, the coordinates by
``--weights``' (:class:`generators.unimdm.checkpoint.SplitDenoiser`; both trained on the same data).
``--guide-weights EARLY/model.pt --autoguidance W``: autoguidance, ``(1 + W) main - W guide`` at
every network call, the guide a weaker checkpoint of the same data
(:class:`generators.unimdm.checkpoint.AutoGuidedDenoiser`; two network calls per step).

``--inputs`` names a symmetry file of ``--data`` (``test``: MP-20 test with its true space group
and Wyckoff assignment; ``test_pred``: the symmetry predictor's top-5 candidates per test
crystal; ``control``: the property-control inputs), all in the format of
:mod:`generators.unimdm.tensor_files`. Each row's own band gap / formation energy conditions
the sample unless ``--band-gap`` / ``--formation-energy`` override them (``nan``:
unconditional). Crystals are sorted by size and batched by an atom budget. The output is a
samples file of :mod:`generators.diffusion.tensor_files` (``pack_samples``; one row per input
row, conventional cells) with ``space_group`` and ``candidate`` added; evaluate it on the CPU
with ``python -m evals.bench_csp_unimdm --samples FILE.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from generators.diffusion.diffusion import SamplerSettings
from generators.diffusion.tensor_files import pack_samples
from generators.unimdm.checkpoint import UniMDMModel, atomic_save, load_model, with_guide, with_lattice_from
from generators.unimdm.diffusion import CudaGraphRecorder, sample
from generators.unimdm.network import PROPERTIES
from generators.unimdm.tensor_files import SplitIndex, collate, load_split, take_rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.sample_tensors", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--lattice-weights", type=Path, default=None,
                        help="model.pt whose network denoises the lattice (--weights' network the coordinates)")
    parser.add_argument("--guide-weights", type=Path, default=None,
                        help="model.pt of a weaker checkpoint (same data) that guides --weights' network (autoguidance)")
    parser.add_argument("--autoguidance", type=non_negative, default=None,
                        help="autoguidance weight W: (1 + W) main - W guide (default 1 with --guide-weights)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--inputs", default="test", help="symmetry file name in --data (test, test_pred, control)")
    parser.add_argument("--samples", type=int, default=1, help="structures per input row")
    parser.add_argument("--method", default="ddpm", choices=["ddpm", "fast"])
    parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: 1000 ddpm, 100 fast)")
    parser.add_argument("--band-gap", type=float, default=None, help="override every row's band gap (eV; nan = unconditional)")
    parser.add_argument("--formation-energy", type=float, default=None, help="override every row's formation energy (eV/atom)")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight")
    parser.add_argument("--corrector-step-lr", type=non_negative, default=None,
                        help="Langevin corrector step size at sigma_begin (default: the model's, 1e-5; 0: no corrector)")
    parser.add_argument("--lattice-eta", type=unit_interval, default=None,
                        help="lattice reverse-step noise, 0 (deterministic DDIM) to 1 (ancestral; the ddpm default)")
    parser.add_argument("--coordinate-temperature", type=unit_interval, default=None,
                        help="scale of the coordinates' fresh noise in each reverse step, 0..1 (default 1)")
    parser.add_argument("--start-level", type=int, default=None,
                        help="start from the inputs' own representatives and lattice (prototype templates: "
                             "`generators.unimdm.templates --symmetry-out`) noised to this level, 1..1000 (default: pure noise)")
    parser.add_argument("--atom-budget", type=int, default=None, help="padded atoms per network call (default 262144 CUDA, 4096 CPU)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--candidates", default=None, help="only rows of these candidate ranks, e.g. 0 or 1,2,3,4 (predicted inputs)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each chunk's reverse steps from one recorded CUDA graph (CUDA only; eager on failure)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.autoguidance is not None and args.guide_weights is None:
        parser.error("--autoguidance needs --guide-weights (the weaker model that guides)")
    if args.autoguidance is not None and not math.isfinite(args.autoguidance):
        parser.error(f"--autoguidance must be finite, got {args.autoguidance}")
    if args.start_level is not None and not 1 <= args.start_level <= 1000:
        parser.error(f"--start-level must be in 1..1000 (the diffusion's levels), got {args.start_level}")
    return args


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in 0..1, got {text}")
    return value


def override_properties(split: dict, band_gap: float | None, formation_energy: float | None) -> dict:
    rows = len(split["material_ids"])
    split = dict(split)
    if band_gap is not None:
        split["band_gap"] = torch.full((rows,), float(band_gap))
    if formation_energy is not None:
        split["formation_energy"] = torch.full((rows,), float(formation_energy))
    return split


SMALL_CHUNK_ATOMS = 4096  # padded atoms below which a chunk always grows: padding costs little there


def chunk_sizes(sizes: list[int], atom_budget: int, max_waste: float = 2.0) -> list[int]:
    """Split ascending atom counts into consecutive network calls: each pads to its largest crystal,
    holds at most ``atom_budget`` padded atoms, and (above :data:`SMALL_CHUNK_ATOMS`) at most
    ``max_waste`` times the attention pairs its crystals need (count x width^2 against the sum of
    n^2). Without the pair cap a large split became one call padded to its largest crystal
    (every 4-atom cell at 80 atoms: ~40x the pair work)."""
    chunks, position = [], 0
    while position < len(sizes):
        count, pairs = 1, sizes[position] ** 2
        while position + count < len(sizes):
            width = sizes[position + count]
            padded_atoms = (count + 1) * width
            if padded_atoms > atom_budget:
                break
            if padded_atoms > SMALL_CHUNK_ATOMS and (count + 1) * width**2 > max_waste * (pairs + width**2):
                break
            pairs += width**2
            count += 1
        chunks.append(count)
        position += count
    return chunks


def sample_rows(model: UniMDMModel, split: dict, samples: int, settings: SamplerSettings, atom_budget: int,
                generator: torch.Generator, guidance: float = 0.0, log: bool = True, recorder=None,
                start_level: int | None = None):
    """``coords[k][m]`` [n_m, 3], lattices [K, M, 6] for every row m and sample k (conventional cells).
    ``recorder`` (a :class:`CudaGraphRecorder`): each chunk's reverse steps replayed from a CUDA graph."""
    index = SplitIndex(split)
    n_atoms = split["n_atoms"].long()
    rows = len(index)
    jobs = sorted((int(n_atoms[m]), k, m) for k in range(samples) for m in range(rows))
    coords = [[None] * rows for _ in range(samples)]
    lattices = torch.zeros(samples, rows, 6)
    start_time = time.perf_counter()
    position = 0
    for count in chunk_sizes([n for n, _, _ in jobs], atom_budget):
        chunk = jobs[position : position + count]
        width = chunk[-1][0]
        position += count
        batch = collate(index, [m for _, _, m in chunk]).to(model.device)
        _, atom_coords, lattice = sample(model.network, batch, model.schedule, model.normaliser, model.tables, settings,
                                         guidance=guidance, generator=generator, recorder=recorder, start_level=start_level)
        atom_coords, lattice = atom_coords.cpu(), lattice.cpu()
        for i, (n, k, m) in enumerate(chunk):
            coords[k][m] = atom_coords[i, :n]
            lattices[k, m] = lattice[i]
        if log:
            print(json.dumps({"sampled": position, "of": len(jobs), "atoms": width,
                              "seconds": round(time.perf_counter() - start_time, 1)}), flush=True)
    return coords, lattices


def atom_numbers(split: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded atomic numbers [M, N] and mask (each orbit's element repeated by its multiplicity)."""
    per_atom = torch.repeat_interleave(split["orbit_z"].long(), split["orbit_multiplicity"].long())
    n_atoms = split["n_atoms"].long()
    width = max(1, int(n_atoms.max())) if len(n_atoms) else 1
    mask = torch.arange(width)[None, :] < n_atoms[:, None]
    numbers = torch.zeros(len(n_atoms), width, dtype=torch.uint8)
    numbers[mask] = per_atom.to(torch.uint8)
    return numbers, mask


def pack(split: dict, coords, lattices, info: dict) -> dict:
    numbers, mask = atom_numbers(split)
    packed = pack_samples({"material_ids": split["material_ids"], "n_atoms": split["n_atoms"], "mask": mask,
                           "atomic_numbers": numbers}, coords, lattices, info)
    packed["space_group"] = split["space_group"].to(torch.int16)
    packed["candidate"] = split.get("candidate", torch.zeros(len(split["material_ids"]), dtype=torch.int16))
    for name in PROPERTIES:
        packed[f"target_{name}"] = split[name].float()
    return packed


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model = load_model(args.weights, device)
    if args.lattice_weights:
        model = with_lattice_from(model, load_model(args.lattice_weights, device))
    autoguidance = None
    if args.guide_weights:
        autoguidance = 1.0 if args.autoguidance is None else args.autoguidance
        model = with_guide(model, load_model(args.guide_weights, device), autoguidance)
    split = load_split(args.data, args.inputs)
    if args.candidates is not None and "candidate" in split:
        ranks = {int(r) for r in args.candidates.split(",")}
        split = take_rows(split, [i for i, r in enumerate(split["candidate"].tolist()) if r in ranks])
    if args.limit:
        split = take_rows(split, list(range(min(args.limit, len(split["material_ids"])))))
    if args.start_level is not None and "template_sources" not in split:
        # a split of real crystals holds their true structures: starting from them would score the answer
        raise SystemExit(f"--start-level needs start structures (`generators.unimdm.templates --symmetry-out`); "
                         f"{args.inputs} holds the crystals' own structures")
    split = override_properties(split, args.band_gap, args.formation_energy)
    settings = SamplerSettings.for_method(args.method, model.schedule.config.timesteps, args.steps)
    if args.corrector_step_lr is not None:
        settings.corrector_step_lr = args.corrector_step_lr
        settings.corrector = args.corrector_step_lr > 0
    if args.lattice_eta is not None:
        settings.lattice_eta = args.lattice_eta
    if args.coordinate_temperature is not None:
        settings.coordinate_temperature = args.coordinate_temperature
    generator = torch.Generator(device).manual_seed(args.seed)
    budget = args.atom_budget or (262144 if device.type == "cuda" else 4096)
    start = time.perf_counter()
    # CUDA graphs on CUDA only; on the CPU the flag is recorded and every chunk sampled eagerly
    recorder = CudaGraphRecorder(generator) if args.cuda_graphs and device.type == "cuda" else None
    coords, lattices = sample_rows(model, split, args.samples, settings, budget, generator, args.guidance,
                                   recorder=recorder, start_level=args.start_level)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    total = args.samples * len(split["material_ids"])
    info = {"inputs": args.inputs, "candidates": args.candidates, "samples": args.samples, "method": args.method, "steps": settings.steps,
            "guidance": args.guidance,
            "corrector_step_lr": settings.corrector_step_lr if settings.corrector_step_lr is not None else model.schedule.config.corrector_step_lr,
            "corrector": settings.corrector, "lattice_eta": settings.lattice_eta,
            "coordinate_temperature": settings.coordinate_temperature, "band_gap": args.band_gap, "formation_energy": args.formation_energy,
            "weights": str(args.weights), "lattice_weights": args.lattice_weights and str(args.lattice_weights),
            "guide_weights": args.guide_weights and str(args.guide_weights), "autoguidance": autoguidance, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "seed": args.seed, "cuda_graphs": args.cuda_graphs, "start_level": args.start_level,
            "graph_chunks": recorder.recorded if recorder else 0, "graph_fallbacks": recorder.failed if recorder else 0,
            "seconds": round(seconds, 2), "structures_per_second": round(total / max(seconds, 1e-9), 2)}
    info = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in info.items()}
    atomic_save(pack(split, coords, lattices, info), args.out)
    print(json.dumps({"event": "done", "out": str(args.out), **info}), flush=True)


if __name__ == "__main__":
    main()
