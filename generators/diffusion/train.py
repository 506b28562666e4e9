"""Train the crystal diffusion model for a wall-clock budget (imports torch, numpy and stdlib only).

``python -m generators.diffusion.train --data .device_data --out DIR --minutes M [--batch 512]
[--train-sets train,extra] [--resume DIR/checkpoint.pt] [--stop-after MIN] [--compile]``

The learning rate warms up linearly, then follows a cosine over the budget of ``--minutes``
of training wall time (counted across resumed invocations); ``--stop-after`` ends one
invocation early (e.g. to fit a 10-minute command limit) with the schedule left where it is,
to be continued by ``--resume DIR/checkpoint.pt``. bf16 autocast on CUDA; the whole training
set sits on the device. Writes, as it goes:

- ``DIR/train_log.jsonl``: one JSON object per line (step, seconds, lr, loss and its parts,
  val_loss on a fixed validation subset with fixed noise, throughput)
- ``DIR/model.pt``: EMA weights (float16) + configs + training record, for sampling
- ``DIR/checkpoint.pt``: full training state for ``--resume``

Both files are replaced atomically, so a process killed at any moment leaves usable files.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generators.diffusion.checkpoint import MODEL_FORMAT, atomic_save, model_payload
from generators.diffusion.diffusion import CrystalBatch, DiffusionConfig, NoiseSchedule, training_losses
from generators.diffusion.network import NETWORK_PRESETS, CrystalDenoiser, NetworkConfig, network_config
from generators.diffusion.representation import MAX_ATOMS, LatticeNormaliser
from generators.diffusion.tensor_files import as_batch, concatenate, load_split


@dataclass
class Progress:
    """Counters that survive a resume: optimizer steps, crystals seen, training wall seconds."""

    step: int = 0
    samples: int = 0
    seconds: float = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.diffusion.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the tensor files (generators.diffusion.data build)")
    parser.add_argument("--out", type=Path, required=True, help="folder for train_log.jsonl, model.pt, checkpoint.pt")
    parser.add_argument("--minutes", type=float, required=True, help="training wall-time budget of the whole run (min)")
    parser.add_argument("--stop-after", type=float, default=None, help="end this invocation this many minutes after it started")
    parser.add_argument("--batch", type=int, default=512, help="crystals per step")
    parser.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (AdamW)")
    parser.add_argument("--final-lr-fraction", type=float, default=0.05, help="lr at the end of the cosine, as a fraction of --lr")
    parser.add_argument("--warmup-fraction", type=float, default=0.03, help="share of the budget for the linear warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay per step")
    parser.add_argument("--preset", default="base", choices=sorted(NETWORK_PRESETS), help="network size")
    parser.add_argument("--train-sets", default="train", help="comma-separated splits to train on (train, extra)")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training crystals only (smoke tests)")
    parser.add_argument("--val-size", type=int, default=2048, help="validation crystals for val_loss (fixed subset)")
    parser.add_argument("--log-seconds", type=float, default=20.0, help="seconds between log lines")
    parser.add_argument("--val-seconds", type=float, default=90.0, help="seconds between validation losses")
    parser.add_argument("--save-seconds", type=float, default=120.0, help="seconds between saves of model.pt and checkpoint.pt")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint.pt to continue, or model.pt to start from its weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step (falls back to eager on failure)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def choose_device(name: str) -> torch.device:
    """The training device: CUDA when present for ``auto``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate(progress: float, peak: float, warmup_fraction: float, final_fraction: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_fraction`` of the budget, then a cosine to ``final_fraction * peak``."""
    if progress < warmup_fraction:
        return peak * max(progress / warmup_fraction, 0.01)
    remaining = min(1.0, (progress - warmup_fraction) / max(1e-9, 1.0 - warmup_fraction))
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * remaining)))


def load_training_sets(data_dir: Path, sets: list[str]) -> dict:
    """The named splits merged into one dict of tensors (validation and test splits refused)."""
    refused = [s for s in sets if s in ("val", "test")]
    if refused:
        raise ValueError(f"refusing to train on {', '.join(refused)}: MP-20 val/test are held out")
    return concatenate([load_split(data_dir, s) for s in sets])


def formula_unit_prior(atomic_numbers: torch.Tensor, n_atoms: torch.Tensor) -> list[list[int]]:
    """Counts [k][z] of training crystals whose reduced formula has k atoms and whose cell holds z formula units.

    The sampler draws the number of formula units of a formula from this table when the
    caller gives none.
    """
    table = np.zeros((MAX_ATOMS + 1, MAX_ATOMS + 1), dtype=np.int64)
    for row, count in zip(atomic_numbers.numpy(), n_atoms.numpy()):
        _, element_counts = np.unique(row[:count], return_counts=True)
        units = int(np.gcd.reduce(element_counts))
        table[count // units, units] += 1
    return table.tolist()


def validation_batch(data_dir: Path, size: int, device: torch.device) -> CrystalBatch:
    """A fixed subset of MP-20 val (the same rows in every run and after every resume)."""
    split = load_split(data_dir, "val")
    rows = len(split["material_ids"])
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))[: min(size, rows)]
    return as_batch(split, device, order)


def subset(batch: CrystalBatch, index: torch.Tensor) -> CrystalBatch:
    return CrystalBatch(batch.frac_coords[index], batch.atomic_numbers[index], batch.lattice[index], batch.n_atoms[index])


@torch.no_grad()
def validation_loss(model, batch: CrystalBatch, schedule, normaliser, batch_size: int) -> dict[str, float]:
    """Losses on ``batch`` with fixed timesteps and noise (a seeded generator), no augmentation."""
    generator = torch.Generator(device=batch.frac_coords.device).manual_seed(1234)
    totals = {"loss": 0.0, "coords": 0.0, "lattice": 0.0}
    size = batch.frac_coords.shape[0]
    for start in range(0, size, batch_size):
        index = torch.arange(start, min(size, start + batch_size), device=batch.frac_coords.device)
        losses = training_losses(model, subset(batch, index), schedule, normaliser, generator, augment_data=False)
        for key in totals:
            totals[key] += float(losses[key]) * len(index) / size
    return totals


class EpochSampler:
    """Row indices of successive batches, a fresh random permutation of the rows each epoch."""

    def __init__(self, rows: int, batch_size: int, device: torch.device):
        self.rows, self.batch_size, self.device = rows, min(batch_size, rows), device
        self.order = torch.randperm(rows, device=device)
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.rows:
            self.order = torch.randperm(self.rows, device=self.device)
            self.position = 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return index


def update_ema(ema_parameters: list[torch.Tensor], parameters: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * parameter``, for all tensors at once."""
    torch._foreach_lerp_(ema_parameters, parameters, 1.0 - decay)


class Run:
    """One training invocation: model, EMA copy, optimizer, data, counters and output files."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = choose_device(args.device)
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "train_log.jsonl"
        self.train_sets = [s for s in args.train_sets.split(",") if s]
        train_split = load_training_sets(args.data, self.train_sets)
        if args.train_limit:
            train_split = {key: value[: args.train_limit] for key, value in train_split.items()}
        self.train_rows = len(train_split["material_ids"])
        self.formula_units = formula_unit_prior(train_split["atomic_numbers"], train_split["n_atoms"].long())
        self.train_data = as_batch(train_split, self.device)
        self.val_data = validation_batch(args.data, args.val_size, self.device)
        self.progress = Progress()
        resumed = torch.load(args.resume, map_location="cpu", weights_only=True) if args.resume else None
        self._build_model(resumed, train_split)
        self._restore(resumed)
        self.training_model = self._maybe_compile()

    def _build_model(self, resumed: dict | None, train_split: dict) -> None:
        if resumed is not None:
            if resumed.get("format") != MODEL_FORMAT:
                raise ValueError(f"{self.args.resume} is not a genms diffusion model or checkpoint")
            self.network_config = NetworkConfig.from_dict(resumed["network"])
            self.diffusion_config = DiffusionConfig.from_dict(resumed["diffusion"])
            self.normaliser = LatticeNormaliser(**resumed["lattice_normaliser"])
        else:
            self.network_config = network_config(self.args.preset)
            self.diffusion_config = DiffusionConfig()
            self.normaliser = LatticeNormaliser.fit(train_split["lattice"], train_split["n_atoms"].long())
        self.schedule = NoiseSchedule(self.diffusion_config, self.device)
        self.model = CrystalDenoiser(self.network_config).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.args.lr, weight_decay=self.args.weight_decay, betas=(0.9, 0.99), fused=fused
        )

    def _restore(self, resumed: dict | None) -> None:
        if resumed is None:
            return
        ema_state = {name: tensor.float() for name, tensor in resumed["state_dict"].items()}
        self.ema.load_state_dict(ema_state)
        self.model.load_state_dict(resumed.get("raw_state_dict", ema_state))
        if "optimizer" in resumed:  # a full checkpoint: continue the same run
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.progress = Progress(**resumed["progress"])

    def _maybe_compile(self):
        if not self.args.compile:
            return self.model
        try:
            compiled = torch.compile(self.model)
            index = torch.arange(min(self.args.batch, self.train_rows), device=self.device)
            training_losses(compiled, subset(self.train_data, index), self.schedule, self.normaliser)["loss"].backward()
            self.optimizer.zero_grad(set_to_none=True)
            return compiled
        except Exception as exc:  # any compiler failure: train eagerly rather than not at all
            self.log({"event": "compile_failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
            return self.model

    def log(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        with self.log_path.open("a") as handle:
            handle.write(line + "\n")

    def training_record(self, last: dict) -> dict:
        """What the model card needs: data, command, steps, epochs, wall time, last losses."""
        return {
            "train_sets": self.train_sets,
            "train_rows": self.train_rows,
            "command": "python -m generators.diffusion.train " + " ".join(sys.argv[1:]),
            "steps": self.progress.step,
            "epochs": round(self.progress.samples / max(1, self.train_rows), 2),
            "train_seconds": round(self.progress.seconds, 1),
            "batch": self.args.batch,
            "peak_lr": self.args.lr,
            "ema_decay": self.args.ema,
            "parameters": self.model.parameter_count(),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            **{k: last[k] for k in ("loss", "val_loss", "val_coords", "val_lattice") if k in last},
            "formula_units_prior": self.formula_units,
        }

    def save(self, last: dict) -> None:
        record = self.training_record(last)
        payload = model_payload(self.ema.state_dict(), self.network_config, self.diffusion_config, self.normaliser, record)
        atomic_save(payload, self.out / "model.pt")
        full = model_payload(
            self.ema.state_dict(), self.network_config, self.diffusion_config, self.normaliser, record, torch.float32
        )
        full.update(
            raw_state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(),
            progress=vars(self.progress),
        )
        atomic_save(full, self.out / "checkpoint.pt")

    def validate(self) -> dict[str, float]:
        losses = validation_loss(self.ema, self.val_data, self.schedule, self.normaliser, self.args.batch)
        return {"val_loss": losses["loss"], "val_coords": losses["coords"], "val_lattice": losses["lattice"]}

    def step(self, sampler: EpochSampler, lr: float) -> torch.Tensor:
        """One optimizer step; returns the detached [loss, coords, lattice] of the batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = subset(self.train_data, sampler.next())
        losses = training_losses(self.training_model, batch, self.schedule, self.normaliser)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        self.optimizer.step()
        decay = min(self.args.ema, (1 + self.progress.step) / (10 + self.progress.step))
        update_ema(list(self.ema.parameters()), list(self.model.parameters()), decay)
        return torch.stack([losses["loss"], losses["coords"], losses["lattice"]]).detach()


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived: save and leave."""


def _request_stop(signum, frame):
    raise StopRequested(signal.Signals(signum).name)


def train(args: argparse.Namespace) -> dict:
    """Run the training loop until the budget (or ``--stop-after``) is spent; returns the last log record.

    The budget (``--minutes``) counts training-loop wall time only, summed over resumed
    invocations; ``--stop-after`` counts this process's wall time from its start, data
    loading and compilation included, so an invocation fits a fixed command limit.
    """
    process_start = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = Run(args)
    torch.manual_seed(args.seed + run.progress.step)  # a resumed run draws fresh batches and noise
    total_seconds = args.minutes * 60.0
    stop_seconds = args.stop_after * 60.0 if args.stop_after else float("inf")
    sampler = EpochSampler(run.train_rows, args.batch, run.device)
    run.log({"event": "start", "device": str(run.device), "parameters": run.model.parameter_count(), "train_rows": run.train_rows,
             "resumed_at_step": run.progress.step, "resumed_seconds": round(run.progress.seconds, 1),
             "compiled": run.training_model is not run.model, "batch": args.batch, "train_sets": run.train_sets})
    previous_handlers = {s: signal.signal(s, _request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    invocation_start = time.perf_counter()
    base_seconds = run.progress.seconds
    last_log = last_val = last_save = invocation_start
    running, running_steps, log_start_step, log_start_time = None, 0, run.progress.step, invocation_start
    last = {"step": run.progress.step}
    stop_reason = "budget"
    try:
        while True:
            now = time.perf_counter()
            run.progress.seconds = base_seconds + (now - invocation_start)
            if run.progress.seconds >= total_seconds:
                break
            if now - process_start >= stop_seconds:
                stop_reason = "stop_after"
                break
            lr = learning_rate(run.progress.seconds / total_seconds, args.lr, args.warmup_fraction, args.final_lr_fraction)
            values = run.step(sampler, lr)
            running = values if running is None else running + values
            running_steps += 1
            run.progress.step += 1
            run.progress.samples += sampler.batch_size
            if now - last_log >= args.log_seconds:
                mean = (running / running_steps).tolist()
                if not all(math.isfinite(v) for v in mean):
                    raise FloatingPointError(f"training loss became non-finite at step {run.progress.step}: {mean}")
                elapsed = now - log_start_time
                last = {
                    "step": run.progress.step, "seconds": round(run.progress.seconds, 1), "lr": lr,
                    "loss": mean[0], "coords": mean[1], "lattice": mean[2],
                    "steps_per_s": round((run.progress.step - log_start_step) / max(elapsed, 1e-9), 2),
                    "epochs": round(run.progress.samples / run.train_rows, 2),
                }
                if now - last_val >= args.val_seconds:
                    last.update(run.validate())
                    last_val = time.perf_counter()
                run.log(last)
                running, running_steps, last_log = None, 0, time.perf_counter()
                log_start_step, log_start_time = run.progress.step, last_log
            if now - last_save >= args.save_seconds:
                run.save(last)
                last_save = time.perf_counter()
    except StopRequested as stop:
        stop_reason = f"signal {stop}"
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    last = {**last, "step": run.progress.step, "seconds": round(run.progress.seconds, 1), **run.validate()}
    run.save(last)
    run.log({"event": "end", "reason": stop_reason, **last, "finished": run.progress.seconds >= total_seconds})
    return last


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
