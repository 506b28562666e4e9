"""Where one Uni-MDM training step spends its time (torch only; runs on the GPU machine).

``python -m evals.profile_unimdm_step --data .device_data_unimdm [--preset base] [--batch 2048]
[--steps 20] [--profile-steps 5] [--cuda-graphs] [--json OUT]``

Runs the optimizer steps of :mod:`generators.unimdm.train` (same batches, losses, AdamW, EMA)
after ``--warmup`` steps and prints: wall seconds per step (synchronised), then from one
``torch.profiler`` pass, the kernels launched per step, the device time they take per step
(kernel durations summed) and the top operators by device time and by call count. Device time
near the wall time: the step is bound by the GPU's own work (fuse kernels, cut their number);
far below it: bound by the CPU that launches them (CUDA graphs, fewer Python-level ops). Why: the
step costs the same from batch 256 to 2048 (model card, seventh run), so the batch does not set
the pace and the next speed-up depends on which of the two it is.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from generators.training import prepare_torch
from generators.unimdm import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals.profile_unimdm_step", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="symmetry tensor files (generators.unimdm.data)")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (allocator, cuDNN/cuBLAS choices)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--profile-steps", type=int, default=5, help="steps under torch.profiler")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-sets", default="train")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="steps replayed as CUDA graphs (train.py --cuda-graphs); warm up long enough to record every width")
    parser.add_argument("--rows", type=int, default=20, help="operators listed in each top table")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "profile_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def kernel_figures(profiler: torch.profiler.profile, steps: int) -> dict:
    """Kernels (and device copies/sets) per step and their summed device time per step (seconds)."""
    device_events = [e for e in profiler.events() if e.device_type != torch.autograd.DeviceType.CPU]
    busy_us = sum(e.time_range.elapsed_us() for e in device_events)
    return {"kernels_per_step": len(device_events) / steps, "device_seconds_per_step": busy_us / 1e6 / steps}


def top_operators(profiler: torch.profiler.profile, steps: int, rows: int) -> dict:
    """The operators that take the most device (or CPU) time, and the most called, per step."""
    averages = list(profiler.key_averages())
    on_device = any(a.self_device_time_total > 0 for a in averages)
    time_of = (lambda a: a.self_device_time_total) if on_device else (lambda a: a.self_cpu_time_total)
    row = lambda a: {"name": a.key, "calls_per_step": a.count / steps, "ms_per_step": time_of(a) / 1e3 / steps}  # noqa: E731
    return {
        "clock": "device" if on_device else "cpu",
        "by_time": [row(a) for a in sorted(averages, key=time_of, reverse=True)[:rows]],
        "by_calls": [row(a) for a in sorted(averages, key=lambda a: a.count, reverse=True)[:rows]],
    }


def profile(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        train_args = train.parse_args(["--data", str(args.data), "--out", out, "--minutes", "1", "--batch", str(args.batch),
                                       "--preset", args.preset, "--train-sets", args.train_sets, "--val-size", "8",
                                       *(["--threads", str(args.threads)] if args.threads else []),
                                       *(["--cuda-graphs"] if args.cuda_graphs else [])])
        prepare_torch(train_args)
        run = train.DiTRun(train_args)
        batches = train.BucketSampler(run.train_data.n_atoms, args.batch, torch.Generator().manual_seed(0))
        cuda = run.device.type == "cuda"
        synchronize = torch.cuda.synchronize if cuda else (lambda: None)

        def steps(count: int) -> None:
            for _ in range(count):
                run.step(batches.next(), train_args.lr)
            synchronize()

        steps(args.warmup)
        start = time.perf_counter()
        steps(args.steps)
        wall = (time.perf_counter() - start) / args.steps
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as profiler:
            steps(args.profile_steps)
        figures = {
            "device": torch.cuda.get_device_name(run.device) if cuda else "cpu", "preset": args.preset, "batch": args.batch,
            "parameters": run.model.parameter_count(), "wall_seconds_per_step": wall,
            "cuda_graphs": run.graphed is not None, "graphs_recorded": len(run.graphed.graphs) if run.graphed else 0, "steps_per_second": 1.0 / wall,
            "crystals_per_second": args.batch / wall, **kernel_figures(profiler, args.profile_steps),
            **top_operators(profiler, args.profile_steps, args.rows),
        }
        if cuda:
            figures["max_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 1e9
    return figures


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    figures = profile(args)
    summary = {k: v for k, v in figures.items() if k not in ("by_time", "by_calls")}
    print(json.dumps(summary, indent=1))
    for table in ("by_time", "by_calls"):
        print(f"top operators {table.replace('_', ' ')} ({figures['clock']} time, per step):")
        for row in figures[table]:
            print(f"  {row['ms_per_step']:9.3f} ms  {row['calls_per_step']:8.1f} calls  {row['name'][:90]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
