"""Train Uni-MDM's Crystal DiT for a wall-clock budget (imports torch, numpy and stdlib only).

``python -m generators.unimdm.train --data .device_data_unimdm --out DIR --minutes M [--batch 256]
[--preset base] [--resume DIR/checkpoint.pt] [--stop-after MIN] [--compile] [--metric-features 12]
[--low-symmetry-weight 2] [--train-sets train,val_rest] [--cuda-graphs] [--message-layers 4]
[--self-conditioning]``

The loop is :mod:`generators.training`'s, as for the diffusion model: linear warm-up then a
cosine over ``--minutes`` of training wall time counted across resumed invocations,
``--stop-after`` ends one invocation early, bf16 autocast on CUDA, the whole training set
resident on the device. ``--metric-features`` gives the attention pair distances (a model.pt
without them resumes with the new weights at zero, so it starts from the same function);
``--message-layers M`` adds CSPNet message layers, to a resumed model.pt as identities;
``--self-conditioning`` lets the network see its own previous clean estimate (zero maps added to a
resumed model.pt);
``--low-symmetry-weight W`` draws monoclinic and triclinic crystals W times per pass;
``--cuda-graphs`` records each padded width's whole step as a CUDA graph and replays it (the
eager step is launch-bound); ``--train-sets train,val_rest`` adds the MP-20 val rows that bring the shared train split back to
the standard 27,136 crystals and ``mp2018_extra`` the 2018 MP crystals outside MP-20 (up to 40 sites, no
formula of MP-20 val or test; :mod:`generators.unimdm.data`). Batches group crystals
of similar size (sorted within random pools of 32 batches) and are padded to a multiple of 8
atoms. Writes ``DIR/train_log.jsonl`` (one JSON object per line), ``DIR/model.pt`` (EMA
weights, float16) and ``DIR/checkpoint.pt`` (full state), atomically.
"""

from __future__ import annotations

import argparse
import time

import torch

from generators.diffusion.diffusion import DiffusionConfig, NoiseSchedule
from generators.training import TrainingRun, add_training_arguments, prepare_torch, train_loop
from generators.unimdm.checkpoint import MODEL_FORMAT, float_state, model_payload
from generators.unimdm.diffusion import Tables, training_losses
from generators.unimdm.lattice import KNormaliser, free_mask_table
from generators.unimdm.network import DIT_PRESETS, CrystalDiT, DiTConfig, dit_config, grow_network
from generators.unimdm.tensor_files import SymmetryBatch, collate_all, concatenate, load_split, take_rows

PAD_MULTIPLE = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.train", description=__doc__.splitlines()[0])
    add_training_arguments(parser, lr=5e-4, batch=256)
    parser.add_argument("--property-dropout", type=float, default=0.1, help="probability of replacing a property by its null embedding")
    parser.add_argument("--preset", default="base", choices=sorted(DIT_PRESETS))
    parser.add_argument("--dropout", type=float, default=None,
                        help="residual dropout in the DiT blocks, 0 <= p < 1 (default: the preset's or the resumed model's)")
    parser.add_argument("--metric-features", type=int, default=None,
                        help="Gaussian pair-distance features in the attention, 0-32 (default: the preset's or the resumed model's)")
    parser.add_argument("--message-layers", type=int, default=None,
                        help="CSPNet message-passing layers before the first blocks, 0 to the depth (default: the preset's "
                             "or the resumed model's; a resumed model.pt gains new ones as identities)")
    parser.add_argument("--self-conditioning", action="store_true",
                        help="the network also sees its previous estimate of the clean crystal (a resumed model.pt "
                             "gains it as zero maps, the same function at first)")
    parser.add_argument("--polar-invariant", action="store_true",
                        help="make the network blind to absolute coordinates along polar axes (no new weights; also for a resumed model)")
    parser.add_argument("--low-symmetry-weight", type=int, default=1,
                        help="times each monoclinic or triclinic crystal (space group 1-15) is drawn per pass, 1-8")
    parser.add_argument("--train-sets", default="train",
                        help="comma-separated split files to train on: train, val_rest, mp2018_extra (val and test are held out)")
    args = parser.parse_args(argv)
    args.train_sets = [s for s in args.train_sets.split(",") if s]
    held_out = [s for s in args.train_sets if s in ("val", "test")]
    if held_out or not args.train_sets:
        parser.error(f"--train-sets must name training splits, not {', '.join(held_out) or 'nothing'}")
    if args.metric_features is not None and not 0 <= args.metric_features <= 32:
        parser.error(f"--metric-features must be 0..32, got {args.metric_features}")
    if args.message_layers is not None and not 0 <= args.message_layers <= 16:
        parser.error(f"--message-layers must be 0..16 (at most the network's depth), got {args.message_layers}")
    if not 1 <= args.low_symmetry_weight <= 8:
        parser.error(f"--low-symmetry-weight must be 1..8, got {args.low_symmetry_weight}")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be at least 0 and below 1, got {args.dropout}")
    return args


def padded_width(largest: int, limit: int) -> int:
    """Atom columns of a batch whose largest crystal has ``largest`` atoms: the next multiple of
    :data:`PAD_MULTIPLE`, at most ``limit`` (the resident data's width)."""
    return min(limit, -(-largest // PAD_MULTIPLE) * PAD_MULTIPLE)


def padded_batch(data: SymmetryBatch, index: torch.Tensor) -> SymmetryBatch:
    """Rows ``index`` of a resident batch, padding cut to a multiple of :data:`PAD_MULTIPLE` atoms."""
    batch = data.select(index)
    return batch.trim(atoms=padded_width(int(batch.atom_mask.sum(1).max()), data.atom_mask.shape[1]))


class BucketSampler:
    """Batches of crystals of similar size: random pools of 32 batches, sorted by atoms, cut, shuffled.
    ``repeats`` [N] (default 1): how many times each crystal is drawn per pass."""

    def __init__(self, n_atoms: torch.Tensor, batch_size: int, generator: torch.Generator,
                 repeats: torch.Tensor | None = None):
        self.n_atoms = n_atoms.cpu()
        self.rows = torch.arange(len(self.n_atoms))
        if repeats is not None:
            self.rows = torch.repeat_interleave(self.rows, repeats.cpu().long())
        self.batch_size = min(batch_size, len(self.rows))
        self.generator = generator
        self.queue: list[torch.Tensor] = []

    def _refill(self) -> None:
        order = self.rows[torch.randperm(len(self.rows), generator=self.generator)]
        pool = self.batch_size * 32
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[torch.argsort(self.n_atoms[chunk], stable=True)]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk) - self.batch_size + 1, self.batch_size)]
        shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
        self.queue = [batches[i] for i in shuffle]

    def next(self) -> torch.Tensor:
        if not self.queue:
            self._refill()
        return self.queue.pop()


class DiTRun(TrainingRun):
    """The Crystal DiT's symmetry data (resident on the device), network, k normaliser and model file."""

    module = "generators.unimdm.train"
    model_format = MODEL_FORMAT

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        train_split = concatenate([load_split(args.data, name) for name in args.train_sets])
        if args.train_limit:
            train_split = take_rows(train_split, list(range(min(args.train_limit, len(train_split["material_ids"])))))
        self.polar_axes = train_split["polar_axes"]
        self.train_rows = len(train_split["material_ids"])
        self.train_data = collate_all(train_split).to(self.device)
        self.train_atoms = train_split["n_atoms"].long()  # on the CPU: batch shapes without reading the device
        val_split = load_split(args.data, "val")
        rows = len(val_split["material_ids"])
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))[: min(args.val_size, rows)]
        self.val_data = collate_all(val_split).select(order).to(self.device)
        self.tables = Tables(self.polar_axes, self.device)
        resumed = self.load_resumed()
        if resumed is not None:
            resumed = self.grown(resumed)
            self.network_config = DiTConfig.from_dict(resumed["network"])
            self.diffusion_config = DiffusionConfig.from_dict(resumed["diffusion"])
            self.normaliser = KNormaliser(**resumed["k_normaliser"])
        else:
            self.network_config = dit_config(args.preset)
            self.diffusion_config = DiffusionConfig()
            free = free_mask_table()[train_split["space_group"].long()]
            self.normaliser = KNormaliser.fit(train_split["k"], train_split["n_atoms"].long(), free)
        if args.dropout is not None:  # also for a resumed model: dropout has no weights
            self.network_config.dropout = args.dropout
        if args.metric_features is not None:
            self.network_config.metric_features = args.metric_features
        if args.message_layers is not None:
            self.network_config.message_layers = args.message_layers
        if args.polar_invariant:
            self.network_config.polar_invariant = True
        if args.self_conditioning:
            self.network_config.self_conditioning = True
        self.schedule = NoiseSchedule(self.diffusion_config, self.device)
        self.setup(CrystalDiT(self.network_config), resumed, dynamic_compile=True)

    def load_resumed(self) -> dict | None:
        """The ``--resume`` payload; an int8 model file (``checkpoint quantize``) comes back as float32
        weights, since its int8 rows alone, without their scales, are not the network."""
        resumed = super().load_resumed()
        if resumed is None or "int8_scales" not in resumed:
            return resumed
        payload = {key: value for key, value in resumed.items() if key != "int8_scales"}
        return {**payload, "state_dict": float_state(resumed)}

    def grown(self, resumed: dict) -> dict:
        """``resumed`` with its network grown (the same function) for ``--metric-features`` /
        ``--message-layers`` beyond its own or ``--self-conditioning`` (:func:`grow_network`)."""
        config = DiTConfig.from_dict(resumed["network"])
        wanted = {"metric_features": self.args.metric_features, "message_layers": self.args.message_layers,
                  "self_conditioning": True if self.args.self_conditioning else None}
        changes = {name: value for name, value in wanted.items() if value is not None and value != getattr(config, name)}
        if not changes:
            return resumed
        if "optimizer" in resumed:
            raise ValueError("a training checkpoint continues its own network: give its model.pt to add "
                             "distance features, message layers or self-conditioning")
        new_config = DiTConfig.from_dict({**config.to_dict(), **changes})
        state = grow_network(resumed["state_dict"], config, new_config, seed=self.args.seed)
        return {**resumed, "state_dict": state, "network": new_config.to_dict()}

    def sampling_repeats(self) -> torch.Tensor:
        """[rows] draws per pass: ``--low-symmetry-weight`` for space groups 1-15, else 1."""
        low = self.train_data.space_group.cpu().long() <= 15
        return torch.where(low, self.args.low_symmetry_weight, 1)

    def batch_losses(self, model, batch: SymmetryBatch, generator=None, augment=True, dropout=None):
        dropout = self.args.property_dropout if dropout is None else dropout
        return training_losses(model, batch, self.schedule, self.normaliser, self.tables, generator, augment, dropout)

    def losses(self, model, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.batch_losses(model, padded_batch(self.train_data, index.to(self.device)))

    def batch_key(self, index: torch.Tensor) -> int:
        """The padded atom width of the training rows ``index``, from the atom counts kept on the CPU."""
        return padded_width(int(self.train_atoms[index].max()), self.train_data.atom_mask.shape[1])

    def static_losses(self, model, index: torch.Tensor, key: int) -> dict[str, torch.Tensor]:
        """:meth:`losses` with ``key`` atom columns and at most as many orbits (``--cuda-graphs``)."""
        orbits = min(key, self.train_data.orbit_mask.shape[1])
        return self.batch_losses(model, self.train_data.select(index).trim(atoms=key, orbits=orbits))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Losses on the fixed validation subset with fixed noise, no augmentation, no property dropout."""
        generator = torch.Generator(device=self.device).manual_seed(1234)
        totals = {"loss": 0.0, "coords": 0.0, "lattice": 0.0}
        size = self.val_data.size
        order = torch.argsort(self.val_data.n_atoms).to(self.device)
        for start in range(0, size, self.args.batch):
            index = order[start : start + self.args.batch]
            losses = self.batch_losses(self.ema, padded_batch(self.val_data, index), generator, augment=False, dropout=0.0)
            for key in totals:
                totals[key] += float(losses[key]) * len(index) / size
        return {"val_loss": totals["loss"], "val_coords": totals["coords"], "val_lattice": totals["lattice"]}

    def start_record(self) -> dict:
        return {**super().start_record(), "max_atoms": int(self.train_data.atom_mask.shape[1])}

    def training_record(self, last: dict) -> dict:
        return {**super().training_record(last), "train_sets": self.args.train_sets, "property_dropout": self.args.property_dropout,
                "low_symmetry_weight": self.args.low_symmetry_weight}

    def payload(self, record: dict, weight_dtype: torch.dtype) -> dict:
        return model_payload(self.ema.state_dict(), self.network_config, self.diffusion_config, self.normaliser,
                             self.polar_axes, record, weight_dtype)


def train(args: argparse.Namespace) -> dict:
    """Train until the budget (or ``--stop-after``) is spent; returns the last log record."""
    process_start = time.perf_counter()
    prepare_torch(args)
    run = DiTRun(args)
    torch.manual_seed(args.seed + run.progress.step)
    generator = torch.Generator().manual_seed(args.seed + run.progress.step)
    batches = BucketSampler(run.train_data.n_atoms, args.batch, generator, run.sampling_repeats())
    return train_loop(run, batches, process_start)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
