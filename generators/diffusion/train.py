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
The loop itself (schedule, EMA, saving, signals) is :mod:`generators.training`'s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from generators.diffusion.checkpoint import MODEL_FORMAT, model_payload
from generators.diffusion.diffusion import CrystalBatch, DiffusionConfig, NoiseSchedule, training_losses
from generators.diffusion.network import NETWORK_PRESETS, CrystalDenoiser, NetworkConfig, network_config
from generators.diffusion.representation import MAX_ATOMS, LatticeNormaliser
from generators.diffusion.tensor_files import as_batch, concatenate, load_split
from generators.training import TrainingRun, add_training_arguments, prepare_torch, train_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.diffusion.train", description=__doc__.splitlines()[0])
    add_training_arguments(parser, lr=6e-4, batch=512)
    parser.add_argument("--preset", default="base", choices=sorted(NETWORK_PRESETS), help="network size")
    parser.add_argument("--train-sets", default="train", help="comma-separated splits to train on (train, extra)")
    return parser.parse_args(argv)


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


class DiffusionRun(TrainingRun):
    """The diffusion model's data (resident on the device), network, lattice normaliser and model file."""

    module = "generators.diffusion.train"
    model_format = MODEL_FORMAT

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.train_sets = [s for s in args.train_sets.split(",") if s]
        train_split = load_training_sets(args.data, self.train_sets)
        if args.train_limit:
            train_split = {key: value[: args.train_limit] for key, value in train_split.items()}
        self.train_rows = len(train_split["material_ids"])
        self.formula_units = formula_unit_prior(train_split["atomic_numbers"], train_split["n_atoms"].long())
        self.train_data = as_batch(train_split, self.device)
        self.val_data = validation_batch(args.data, args.val_size, self.device)
        resumed = self.load_resumed()
        if resumed is not None:
            self.network_config = NetworkConfig.from_dict(resumed["network"])
            self.diffusion_config = DiffusionConfig.from_dict(resumed["diffusion"])
            self.normaliser = LatticeNormaliser(**resumed["lattice_normaliser"])
        else:
            self.network_config = network_config(args.preset)
            self.diffusion_config = DiffusionConfig()
            self.normaliser = LatticeNormaliser.fit(train_split["lattice"], train_split["n_atoms"].long())
        self.schedule = NoiseSchedule(self.diffusion_config, self.device)
        self.setup(CrystalDenoiser(self.network_config), resumed)

    def losses(self, model, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return training_losses(model, subset(self.train_data, index), self.schedule, self.normaliser)

    def validate(self) -> dict[str, float]:
        losses = validation_loss(self.ema, self.val_data, self.schedule, self.normaliser, self.args.batch)
        return {"val_loss": losses["loss"], "val_coords": losses["coords"], "val_lattice": losses["lattice"]}

    def start_record(self) -> dict:
        return {**super().start_record(), "train_sets": self.train_sets}

    def training_record(self, last: dict) -> dict:
        return {"train_sets": self.train_sets, **super().training_record(last), "formula_units_prior": self.formula_units}

    def payload(self, record: dict, weight_dtype: torch.dtype) -> dict:
        return model_payload(self.ema.state_dict(), self.network_config, self.diffusion_config, self.normaliser,
                             record, weight_dtype)


def train(args: argparse.Namespace) -> dict:
    """Run the training loop until the budget (or ``--stop-after``) is spent; returns the last log record."""
    process_start = time.perf_counter()
    prepare_torch(args)
    run = DiffusionRun(args)
    torch.manual_seed(args.seed + run.progress.step)  # a resumed run draws fresh batches and noise
    return train_loop(run, EpochSampler(run.train_rows, args.batch, run.device), process_start)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
