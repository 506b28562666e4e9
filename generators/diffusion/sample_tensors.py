"""Sample structures for a whole split in big batches, pure torch (for the GPU machine).

``python -m generators.diffusion.sample_tensors --weights DIR/model.pt --data .device_data
--split test --samples 1 --method ddpm --out FILE.pt``

For every crystal of the split, ``--samples`` structures are drawn with its atoms given (the
atom types and their number, as in DiffCSP's CSP task). Crystals are sorted by size so each
batch is padded only to its largest cell. The output (see
:func:`generators.diffusion.tensor_files.pack_samples`) is evaluated on the CPU machine by
``python -m evals.bench_csp_diffusion --samples FILE.pt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from generators.diffusion.checkpoint import DiffusionModel, atomic_save, load_model
from generators.diffusion.diffusion import SamplerSettings, sample
from generators.diffusion.tensor_files import load_split, pack_samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.diffusion.sample_tensors", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="model.pt (or checkpoint.pt)")
    parser.add_argument("--data", type=Path, required=True, help="folder of the tensor files")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--samples", type=int, default=1, help="structures per crystal")
    parser.add_argument("--method", default="ddpm", choices=["ddpm", "fast"])
    parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: 1000 ddpm, 100 fast)")
    parser.add_argument("--out", type=Path, required=True, help="output .pt file")
    parser.add_argument("--batch", type=int, default=None, help="crystals per network call (default 4096 on CUDA, 64 on CPU)")
    parser.add_argument("--limit", type=int, default=None, help="first N crystals of the split only")
    parser.add_argument("--n-atoms", type=int, default=None, help="only crystals of exactly this many atoms (throughput runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def take_rows(split: dict, limit: int | None, n_atoms: int | None = None) -> dict:
    """The crystals of a split dict with ``n_atoms`` atoms (all sizes when None), the first ``limit`` of them."""
    rows = list(range(len(split["material_ids"])))
    if n_atoms is not None:
        rows = [i for i in rows if int(split["n_atoms"][i]) == n_atoms]
    rows = rows[:limit] if limit else rows
    index = torch.tensor(rows, dtype=torch.long)
    return {key: value[index] if isinstance(value, torch.Tensor) else [value[i] for i in rows] for key, value in split.items()}


def sample_split(
    model: DiffusionModel,
    split: dict,
    samples: int,
    settings: SamplerSettings,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """``coords[k][m]`` [n_m, 3] and lattices [K, M, 6] for every crystal m and sample k."""
    device = model.device
    n_atoms = split["n_atoms"].long()
    numbers = split["atomic_numbers"].long()
    jobs = sorted(((int(n_atoms[m]), k, m) for k in range(samples) for m in range(len(n_atoms))))
    coords: list[list[torch.Tensor | None]] = [[None] * len(n_atoms) for _ in range(samples)]
    lattices = torch.zeros(samples, len(n_atoms), 6)
    start_time = time.perf_counter()
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        width = max(n for n, _, _ in chunk)
        rows = torch.tensor([m for _, _, m in chunk])
        sampled_coords, sampled_lattices = sample(
            model.network, model.schedule, model.normaliser,
            numbers[rows, :width].to(device), n_atoms[rows].to(device), settings, generator,
        )
        sampled_coords, sampled_lattices = sampled_coords.cpu(), sampled_lattices.cpu()
        for i, (n, k, m) in enumerate(chunk):
            coords[k][m] = sampled_coords[i, :n]
            lattices[k, m] = sampled_lattices[i]
        done = min(start + batch_size, len(jobs))
        print(json.dumps({"sampled": done, "of": len(jobs), "seconds": round(time.perf_counter() - start_time, 1)}), flush=True)
    return coords, lattices


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model = load_model(args.weights, device)
    split = take_rows(load_split(args.data, args.split), args.limit, args.n_atoms)
    settings = SamplerSettings.for_method(args.method, model.schedule.config.timesteps, args.steps)
    generator = torch.Generator(device).manual_seed(args.seed)
    batch_size = args.batch or (4096 if device.type == "cuda" else 64)
    start = time.perf_counter()
    coords, lattices = sample_split(model, split, args.samples, settings, batch_size, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    total = args.samples * len(split["material_ids"])
    info = {
        "split": args.split, "samples": args.samples, "method": args.method, "steps": settings.steps,
        "lattice_eta": settings.lattice_eta, "corrector": settings.corrector, "weights": str(args.weights),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seed": args.seed, "seconds": round(seconds, 2), "structures_per_second": round(total / seconds, 2),
    }
    atomic_save(pack_samples(split, coords, lattices, info), args.out)
    print(json.dumps({"event": "done", "out": str(args.out), **info}), flush=True)


if __name__ == "__main__":
    main()
