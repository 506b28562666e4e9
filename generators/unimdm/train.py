"""Train Uni-MDM's Crystal DiT for a wall-clock budget (imports torch, numpy and stdlib only).

``python -m generators.unimdm.train --data .device_data_unimdm --out DIR --minutes M [--batch 256]
[--preset base] [--resume DIR/checkpoint.pt] [--stop-after MIN] [--compile]``

Same conventions as :mod:`generators.diffusion.train` (whose learning-rate schedule, EMA update
and signal handling it reuses): linear warm-up then a cosine over ``--minutes`` of training
wall time counted across resumed invocations, ``--stop-after`` ends one invocation early,
bf16 autocast on CUDA, the whole training set resident on the device. Batches group crystals
of similar size (sorted within random pools of 32 batches) and are padded to a multiple of 8
atoms. Writes ``DIR/train_log.jsonl`` (one JSON object per line), ``DIR/model.pt`` (EMA
weights, float16) and ``DIR/checkpoint.pt`` (full state), atomically.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

from generators.diffusion.diffusion import DiffusionConfig, NoiseSchedule
from generators.diffusion.train import Progress, StopRequested, _request_stop, choose_device, learning_rate, update_ema
from generators.unimdm.checkpoint import MODEL_FORMAT, atomic_save, model_payload
from generators.unimdm.diffusion import Tables, training_losses
from generators.unimdm.lattice import KNormaliser, free_mask_table
from generators.unimdm.network import DIT_PRESETS, CrystalDiT, DiTConfig, dit_config
from generators.unimdm.tensor_files import SymmetryBatch, collate_all, load_split

PAD_MULTIPLE = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the symmetry tensor files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True, help="training wall-time budget of the whole run")
    parser.add_argument("--stop-after", type=float, default=None, help="end this invocation this many minutes after it started")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--final-lr-fraction", type=float, default=0.05)
    parser.add_argument("--warmup-fraction", type=float, default=0.03)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--property-dropout", type=float, default=0.1, help="probability of replacing a property by its null embedding")
    parser.add_argument("--preset", default="base", choices=sorted(DIT_PRESETS))
    parser.add_argument("--train-limit", type=int, default=None, help="first N training crystals only (smoke tests)")
    parser.add_argument("--val-size", type=int, default=2048)
    parser.add_argument("--log-seconds", type=float, default=20.0)
    parser.add_argument("--val-seconds", type=float, default=90.0)
    parser.add_argument("--save-seconds", type=float, default=120.0)
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint.pt to continue, or model.pt to start from its weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (dynamic shapes; eager fallback)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def padded_batch(data: SymmetryBatch, index: torch.Tensor) -> SymmetryBatch:
    """Rows ``index`` of a resident batch, padding cut to a multiple of :data:`PAD_MULTIPLE` atoms."""
    batch = data.select(index)
    n = int(batch.atom_mask.sum(1).max())
    return batch.trim(atoms=min(data.atom_mask.shape[1], -(-n // PAD_MULTIPLE) * PAD_MULTIPLE))


class BucketSampler:
    """Batches of crystals of similar size: random pools of 32 batches, sorted by atoms, cut, shuffled."""

    def __init__(self, n_atoms: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.n_atoms = n_atoms.cpu()
        self.batch_size = min(batch_size, len(n_atoms))
        self.generator = generator
        self.queue: list[torch.Tensor] = []

    def _refill(self) -> None:
        order = torch.randperm(len(self.n_atoms), generator=self.generator)
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


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = choose_device(args.device)
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "train_log.jsonl"
        train_split = load_split(args.data, "train")
        if args.train_limit:
            from generators.unimdm.tensor_files import take_rows

            train_split = take_rows(train_split, list(range(min(args.train_limit, len(train_split["material_ids"])))))
        self.polar_axes = train_split["polar_axes"]
        self.train_rows = len(train_split["material_ids"])
        self.train_data = collate_all(train_split).to(self.device)
        val_split = load_split(args.data, "val")
        rows = len(val_split["material_ids"])
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))[: min(args.val_size, rows)]
        self.val_data = collate_all(val_split).select(order).to(self.device)
        self.tables = Tables(self.polar_axes, self.device)
        self.progress = Progress()
        resumed = torch.load(args.resume, map_location="cpu", weights_only=True) if args.resume else None
        if resumed is not None:
            if resumed.get("format") != MODEL_FORMAT:
                raise ValueError(f"{args.resume} is not a Uni-MDM model or checkpoint")
            self.network_config = DiTConfig.from_dict(resumed["network"])
            self.diffusion_config = DiffusionConfig.from_dict(resumed["diffusion"])
            self.normaliser = KNormaliser(**resumed["k_normaliser"])
        else:
            self.network_config = dit_config(args.preset)
            self.diffusion_config = DiffusionConfig()
            free = free_mask_table()[train_split["space_group"].long()]
            self.normaliser = KNormaliser.fit(train_split["k"], train_split["n_atoms"].long(), free)
        self.schedule = NoiseSchedule(self.diffusion_config, self.device)
        self.model = CrystalDiT(self.network_config).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                           betas=(0.9, 0.99), fused=self.device.type == "cuda")
        if resumed is not None:
            ema_state = {name: tensor.float() for name, tensor in resumed["state_dict"].items()}
            self.ema.load_state_dict(ema_state)
            self.model.load_state_dict(resumed.get("raw_state_dict", ema_state))
            if "optimizer" in resumed:
                self.optimizer.load_state_dict(resumed["optimizer"])
                self.progress = Progress(**resumed["progress"])
        self.training_model = self.model
        self.compiled = False
        if args.compile:
            self._compile()

    def _compile(self) -> None:
        try:
            compiled = torch.compile(self.model, dynamic=True)
            index = torch.arange(min(self.args.batch, self.train_rows), device=self.device)
            self.losses(compiled, padded_batch(self.train_data, index))["loss"].backward()
            self.optimizer.zero_grad(set_to_none=True)
            self.training_model, self.compiled = compiled, True
        except Exception as exc:  # any compiler failure: train eagerly
            self.log({"event": "compile_failed", "error": f"{type(exc).__name__}: {exc}"[:500]})

    def losses(self, model, batch, generator=None, augment=True, dropout=None):
        dropout = self.args.property_dropout if dropout is None else dropout
        return training_losses(model, batch, self.schedule, self.normaliser, self.tables, generator, augment, dropout)

    def log(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        with self.log_path.open("a") as handle:
            handle.write(line + "\n")

    def training_record(self, last: dict) -> dict:
        return {
            "train_rows": self.train_rows,
            "command": "python -m generators.unimdm.train " + " ".join(sys.argv[1:]),
            "steps": self.progress.step,
            "epochs": round(self.progress.samples / max(1, self.train_rows), 2),
            "train_seconds": round(self.progress.seconds, 1),
            "batch": self.args.batch, "peak_lr": self.args.lr, "ema_decay": self.args.ema,
            "property_dropout": self.args.property_dropout,
            "parameters": self.model.parameter_count(),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            **{k: last[k] for k in ("loss", "val_loss", "val_coords", "val_lattice") if k in last},
        }

    def save(self, last: dict) -> None:
        record = self.training_record(last)
        args = (self.ema.state_dict(), self.network_config, self.diffusion_config, self.normaliser, self.polar_axes, record)
        atomic_save(model_payload(*args), self.out / "model.pt")
        full = model_payload(*args, weight_dtype=torch.float32)
        full.update(raw_state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    optimizer=self.optimizer.state_dict(), progress=vars(self.progress))
        atomic_save(full, self.out / "checkpoint.pt")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        generator = torch.Generator(device=self.device).manual_seed(1234)
        totals = {"loss": 0.0, "coords": 0.0, "lattice": 0.0}
        size = self.val_data.size
        order = torch.argsort(self.val_data.n_atoms).to(self.device)
        for start in range(0, size, self.args.batch):
            index = order[start : start + self.args.batch]
            losses = self.losses(self.ema, padded_batch(self.val_data, index), generator, augment=False, dropout=0.0)
            for key in totals:
                totals[key] += float(losses[key]) * len(index) / size
        return {"val_loss": totals["loss"], "val_coords": totals["coords"], "val_lattice": totals["lattice"]}

    def step(self, index: torch.Tensor, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = padded_batch(self.train_data, index.to(self.device))
        try:
            losses = self.losses(self.training_model, batch)
        except Exception as exc:
            if not self.compiled:
                raise
            self.log({"event": "compile_fallback", "error": f"{type(exc).__name__}: {exc}"[:500]})
            self.training_model, self.compiled = self.model, False
            losses = self.losses(self.training_model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        self.optimizer.step()
        decay = min(self.args.ema, (1 + self.progress.step) / (10 + self.progress.step))
        update_ema(list(self.ema.parameters()), list(self.model.parameters()), decay)
        return torch.stack([losses["loss"], losses["coords"], losses["lattice"]]).detach()


def train(args: argparse.Namespace) -> dict:
    """Train until the budget (or ``--stop-after``) is spent; returns the last log record."""
    process_start = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = Run(args)
    torch.manual_seed(args.seed + run.progress.step)
    sampler = BucketSampler(run.train_data.n_atoms, args.batch, torch.Generator().manual_seed(args.seed + run.progress.step))
    total_seconds = args.minutes * 60.0
    stop_seconds = args.stop_after * 60.0 if args.stop_after else float("inf")
    run.log({"event": "start", "device": str(run.device), "parameters": run.model.parameter_count(),
             "train_rows": run.train_rows, "resumed_at_step": run.progress.step, "compiled": run.compiled,
             "batch": args.batch, "max_atoms": int(run.train_data.atom_mask.shape[1])})
    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    start = time.perf_counter()
    base_seconds = run.progress.seconds
    last_log = last_val = last_save = start
    running, running_steps, log_step, log_time = None, 0, run.progress.step, start
    last = {"step": run.progress.step}
    reason = "budget"
    try:
        while True:
            now = time.perf_counter()
            run.progress.seconds = base_seconds + (now - start)
            if run.progress.seconds >= total_seconds:
                break
            if now - process_start >= stop_seconds:
                reason = "stop_after"
                break
            lr = learning_rate(run.progress.seconds / total_seconds, args.lr, args.warmup_fraction, args.final_lr_fraction)
            index = sampler.next()
            values = run.step(index, lr)
            running = values if running is None else running + values
            running_steps += 1
            run.progress.step += 1
            run.progress.samples += len(index)
            if now - last_log >= args.log_seconds:
                mean = (running / running_steps).tolist()
                if not all(math.isfinite(v) for v in mean):
                    raise FloatingPointError(f"training loss became non-finite at step {run.progress.step}: {mean}")
                elapsed = now - log_time
                last = {"step": run.progress.step, "seconds": round(run.progress.seconds, 1), "lr": lr,
                        "loss": mean[0], "coords": mean[1], "lattice": mean[2],
                        "steps_per_s": round((run.progress.step - log_step) / max(elapsed, 1e-9), 2),
                        "epochs": round(run.progress.samples / run.train_rows, 2)}
                if now - last_val >= args.val_seconds:
                    last.update(run.validate())
                    last_val = time.perf_counter()
                run.log(last)
                running, running_steps, last_log = None, 0, time.perf_counter()
                log_step, log_time = run.progress.step, last_log
            if now - last_save >= args.save_seconds:
                run.save(last)
                last_save = time.perf_counter()
    except StopRequested as stop:
        reason = f"signal {stop}"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    last = {**last, "step": run.progress.step, "seconds": round(run.progress.seconds, 1), **run.validate()}
    run.save(last)
    run.log({"event": "end", "reason": reason, **last, "finished": run.progress.seconds >= total_seconds})
    return last


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
