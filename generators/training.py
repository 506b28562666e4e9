"""The wall-clock-budgeted training loop shared by the learned generators (torch, stdlib only).

The crystal diffusion model (:mod:`generators.diffusion.train`) and Uni-MDM's Crystal DiT
(:mod:`generators.unimdm.train`) train the same way; each supplies a :class:`TrainingRun`
subclass (data, network, losses, validation, model file) and calls :func:`train_loop`:

- the learning rate warms up linearly, then follows a cosine over ``--minutes`` of training
  wall time, counted across resumed invocations; ``--stop-after`` ends one invocation early
  (to fit a fixed command limit) with the schedule left where it is;
- AdamW, gradient clipping, an EMA copy of the weights, bf16 autocast on CUDA (inside the
  models' loss functions);
- ``DIR/train_log.jsonl`` (one JSON object per line), ``DIR/model.pt`` (EMA weights, float16),
  ``DIR/model_best.pt`` (the EMA weights at the lowest validation loss) and ``DIR/checkpoint.pt``
  (full state for ``--resume``), written atomically as it goes;
- SIGTERM / SIGINT save and leave;
- ``--cuda-graphs`` (runs that define :meth:`TrainingRun.batch_key` and
  :meth:`TrainingRun.static_losses`): whole optimizer steps recorded as CUDA graphs, one per
  batch shape, and replayed (:class:`GraphedSteps`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "GraphedSteps", "Progress", "StopRequested", "TrainingRun", "add_training_arguments", "atomic_save", "choose_device",
    "learning_rate", "prepare_torch", "train_loop", "update_ema",
]


@dataclass
class Progress:
    """Counters that survive a resume: optimizer steps, crystals seen, training wall seconds."""

    step: int = 0
    samples: int = 0
    seconds: float = 0.0
    best_val_loss: float = math.inf


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived: save and leave. A BaseException, as KeyboardInterrupt is, so that the
    fallbacks' ``except Exception`` (CUDA graph recording, torch.compile) cannot take it for a failure
    and train on (session 25: a SIGTERM during a recording became "cuda_graphs_fallback")."""


def _request_stop(signum, frame):
    raise StopRequested(signal.Signals(signum).name)


def add_training_arguments(parser: argparse.ArgumentParser, lr: float, batch: int) -> None:
    """The options every budgeted training command shares (defaults: peak ``lr``, ``batch`` crystals per step)."""
    parser.add_argument("--data", type=Path, required=True, help="folder of the tensor files")
    parser.add_argument("--out", type=Path, required=True, help="folder for train_log.jsonl, model.pt, checkpoint.pt")
    parser.add_argument("--minutes", type=float, required=True, help="training wall-time budget of the whole run (min)")
    parser.add_argument("--stop-after", type=float, default=None, help="end this invocation this many minutes after it started")
    parser.add_argument("--batch", type=int, default=batch, help="crystals per step")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW)")
    parser.add_argument("--final-lr-fraction", type=float, default=0.05, help="lr at the end of the cosine, as a fraction of --lr")
    parser.add_argument("--warmup-fraction", type=float, default=0.03, help="share of the budget for the linear warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay per step")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training crystals only (smoke tests)")
    parser.add_argument("--val-size", type=int, default=2048, help="validation crystals for val_loss (fixed subset)")
    parser.add_argument("--log-seconds", type=float, default=20.0, help="seconds between log lines")
    parser.add_argument("--val-seconds", type=float, default=90.0, help="seconds between validation losses")
    parser.add_argument("--save-seconds", type=float, default=120.0, help="seconds between saves of model.pt and checkpoint.pt")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint.pt to continue, or model.pt to start from its weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (falls back to eager on failure)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay whole steps as CUDA graphs, one per batch shape (CUDA only; falls back to eager on failure)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--seed", type=int, default=0)


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


def update_ema(ema_parameters: list[torch.Tensor], parameters: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * parameter``, for all tensors at once."""
    torch._foreach_lerp_(ema_parameters, parameters, 1.0 - decay)


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay of optimizer step ``step``: ramped up over the first steps, then ``decay``."""
    return min(decay, (1 + step) / (10 + step))


class GraphedSteps:
    """Whole optimizer steps (losses, backward, gradient clipping, AdamW, EMA) recorded once per
    batch shape as CUDA graphs, then replayed.

    Why: the eager step is bound by the CPU that launches its ~2,000 small kernels (Uni-MDM's
    network at batch 256 on an H100: 67 ms per step, of which the GPU works 8.5 ms;
    ``evals.profile_unimdm_step``). A replay launches the recorded kernels at once. The run
    gives each batch a shape key computed on the CPU (:meth:`TrainingRun.batch_key`) and its
    losses at that fixed shape (:meth:`TrainingRun.static_losses`: no host synchronisation and
    no host-to-device copy inside). The first batch of a shape runs eagerly on a side stream
    (it is a real step, and the warm-up CUDA graphs need), then the step is recorded; later
    batches of that shape copy their row indices into the graph's input and replay it. All
    graphs share one memory pool: nothing a graph leaves behind is read after another replays
    (the losses are copied out at once; weights, optimizer state and inputs live outside).
    The optimizer takes its learning rate as a device tensor (:meth:`TrainingRun.setup`).
    """

    def __init__(self, run: TrainingRun):
        self.run = run
        self.graphs: dict = {}  # key -> (graph, index input, [loss, coords, lattice] output)
        self.learning_rate = run.optimizer.param_groups[0]["lr"]
        self.ema_weight = torch.zeros((), device=run.device)  # 1 - decay
        self.pool = None
        self.failure: str | None = None  # why a recording failed (the step itself was taken eagerly)

    def body(self, index: torch.Tensor, key) -> torch.Tensor:
        """One step on rows ``index`` (device) at shape ``key``: what a graph records."""
        run = self.run
        losses = run.static_losses(run.model, index, key)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip)
        run.optimizer.step()
        ema = list(run.ema.parameters())
        # ema += (parameter - ema) * weight, the weight a device tensor (_foreach_lerp_ would read it on the host)
        difference = torch._foreach_sub(list(run.model.parameters()), ema)
        torch._foreach_mul_(difference, self.ema_weight)
        torch._foreach_add_(ema, difference)
        return torch.stack([losses["loss"], losses["coords"], losses["lattice"]]).detach()

    def step(self, index: torch.Tensor, lr: float, decay: float) -> torch.Tensor:
        """The optimizer step on training rows ``index`` (CPU) at learning rate ``lr``; [loss, coords, lattice]."""
        self.learning_rate.fill_(lr)
        self.ema_weight.fill_(1.0 - decay)
        key = self.run.batch_key(index)
        if key in self.graphs:
            graph, static_index, output = self.graphs[key]
            static_index.copy_(index, non_blocking=True)
            graph.replay()
            return output.clone()
        with warnings.catch_warnings():
            # the weights' AccumulateGrad nodes come from steps on another stream than the side stream's
            # warm-up and the capture's; harmless, the recording works (H100, session 14)
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
            return self._first(index.to(self.run.device), key)

    def _first(self, index: torch.Tensor, key) -> torch.Tensor:
        """The first batch of a shape: an eager step on a side stream, then the recording."""
        run = self.run
        side = torch.cuda.Stream(run.device)
        side.wait_stream(torch.cuda.current_stream(run.device))
        with torch.cuda.stream(side):
            run.optimizer.zero_grad(set_to_none=True)
            values = self.body(index, key)
        torch.cuda.current_stream(run.device).wait_stream(side)
        static_index = index.clone()
        run.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes its own gradients
        try:
            self.pool = self.pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                output = self.body(static_index, key)
        except Exception as exc:  # the warm-up step has updated the weights: keep it, say why no graph
            self.failure = f"{type(exc).__name__}: {exc}"[:500]
        else:
            self.graphs[key] = (graph, static_index, output)
        run.optimizer.zero_grad(set_to_none=True)
        return values


def atomic_save(payload: dict, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, temporary)
    os.replace(temporary, path)


class TrainingRun:
    """One training invocation: network, EMA copy, optimizer, counters and output files.

    Subclasses set ``train_rows`` and build their data, then call :meth:`setup` with the
    network; they define :meth:`losses` (a dict with ``loss``, ``coords``, ``lattice`` for the
    training rows ``index``), :meth:`validate` and :meth:`payload` (the ``model.pt`` dict),
    and may extend :meth:`training_record` and :meth:`start_record`.
    """

    module = "generators.training"  # the command recorded in the model file
    model_format = ""
    train_rows = 0

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = choose_device(args.device)
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "train_log.jsonl"
        self.progress = Progress()

    def load_resumed(self) -> dict | None:
        """The ``--resume`` file's payload (None without it), refused when it is another model's."""
        if self.args.resume is None:
            return None
        resumed = torch.load(self.args.resume, map_location="cpu", weights_only=True)
        if resumed.get("format") != self.model_format:
            raise ValueError(f"{self.args.resume} is not a {self.model_format} model or checkpoint")
        return resumed

    def setup(self, model: torch.nn.Module, resumed: dict | None, dynamic_compile: bool | None = None) -> None:
        """Network on the device, its EMA copy and optimizer; weights and counters from ``resumed``."""
        self.model = model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()  # eval: no dropout in validation or saved weights
        graphs = (getattr(self.args, "cuda_graphs", False) and self.device.type == "cuda"
                  and type(self).static_losses is not TrainingRun.static_losses)
        # CUDA graphs: the learning rate is a device tensor that each step fills, and AdamW capturable
        self.optimizer = torch.optim.AdamW(self.model.parameters(), weight_decay=self.args.weight_decay, betas=(0.9, 0.99),
                                           lr=torch.tensor(self.args.lr, device=self.device) if graphs else self.args.lr,
                                           fused=self.device.type == "cuda", capturable=graphs)
        if resumed is not None:
            ema_state = {name: tensor.float() for name, tensor in resumed["state_dict"].items()}
            self.ema.load_state_dict(ema_state)
            self.model.load_state_dict(resumed.get("raw_state_dict", ema_state))
            if "optimizer" in resumed:  # a full checkpoint: continue the same run
                learning_rates = [group["lr"] for group in self.optimizer.param_groups]
                self.optimizer.load_state_dict(resumed["optimizer"])
                for group, lr in zip(self.optimizer.param_groups, learning_rates):
                    group["lr"] = lr  # the schedule sets it each step; a graph needs its own tensor
                self.progress = Progress(**resumed["progress"])
        self.training_model = self.model
        self.graphed = GraphedSteps(self) if graphs else None
        if self.args.compile:
            self._compile(dynamic_compile)

    def _compile(self, dynamic: bool | None) -> None:
        try:
            compiled = torch.compile(self.model, dynamic=dynamic)
            index = torch.arange(min(self.args.batch, self.train_rows), device=self.device)
            self.losses(compiled, index)["loss"].backward()
            self.optimizer.zero_grad(set_to_none=True)
            self.training_model = compiled
        except Exception as exc:  # any compiler failure: train eagerly rather than not at all
            self.log({"event": "compile_failed", "error": f"{type(exc).__name__}: {exc}"[:500]})

    @property
    def compiled(self) -> bool:
        return self.training_model is not self.model

    def losses(self, model: torch.nn.Module, index: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch_key(self, index: torch.Tensor):
        """The shape of the batch of training rows ``index`` (CPU), computed on the CPU (``--cuda-graphs``)."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-shape batches for --cuda-graphs")

    def static_losses(self, model: torch.nn.Module, index: torch.Tensor, key) -> dict[str, torch.Tensor]:
        """:meth:`losses` of rows ``index`` (device) padded to shape ``key``, without host synchronisation."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-shape batches for --cuda-graphs")

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def payload(self, record: dict, weight_dtype: torch.dtype) -> dict:
        raise NotImplementedError

    def log(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        with self.log_path.open("a") as handle:
            handle.write(line + "\n")

    def start_record(self) -> dict:
        return {"event": "start", "device": str(self.device), "parameters": self.model.parameter_count(),
                "train_rows": self.train_rows, "resumed_at_step": self.progress.step,
                "resumed_seconds": round(self.progress.seconds, 1), "compiled": self.compiled, "batch": self.args.batch,
                "cuda_graphs": self.graphed is not None}

    def training_record(self, last: dict) -> dict:
        """What the model card needs: data, command, steps, epochs, wall time, last losses."""
        return {
            "train_rows": self.train_rows,
            "command": f"python -m {self.module} " + " ".join(sys.argv[1:]),
            "steps": self.progress.step,
            "epochs": round(self.progress.samples / max(1, self.train_rows), 2),
            "train_seconds": round(self.progress.seconds, 1),
            "batch": self.args.batch,
            "peak_lr": self.args.lr,
            "ema_decay": self.args.ema,
            "parameters": self.model.parameter_count(),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            **{k: last[k] for k in ("loss", "val_loss", "val_coords", "val_lattice") if k in last},
        }

    def save(self, last: dict) -> None:
        """``model.pt`` (EMA weights, float16) and ``checkpoint.pt`` (float32, raw weights, optimizer, counters)."""
        record = self.training_record(last)
        atomic_save(self.payload(record, torch.float16), self.out / "model.pt")
        full = self.payload(record, torch.float32)
        full.update(raw_state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    optimizer=self.optimizer.state_dict(), progress=vars(self.progress))
        atomic_save(full, self.out / "checkpoint.pt")

    def keep_best(self, record: dict) -> None:
        """``model_best.pt``: the EMA weights at the lowest validation loss so far (kept across resumes)."""
        if record["val_loss"] < self.progress.best_val_loss:
            self.progress.best_val_loss = record["val_loss"]
            selected = {**self.training_record(record), "selected": "lowest validation loss", "step": self.progress.step}
            atomic_save(self.payload(selected, torch.float16), self.out / "model_best.pt")

    def step(self, index: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimizer step on the training rows ``index``; returns the detached [loss, coords, lattice]."""
        decay = ema_decay(self.progress.step, self.args.ema)
        if self.graphed is not None:
            try:
                values = self.graphed.step(index, lr, decay)
            except Exception as exc:  # failed before any update (no CUDA stream, ...): this step runs eagerly
                self.log({"event": "cuda_graphs_fallback", "error": f"{type(exc).__name__}: {exc}"[:500]})
                self.graphed = None
            else:
                if self.graphed.failure:  # recorded nothing, but its warm-up took this step: eager from the next
                    self.log({"event": "cuda_graphs_fallback", "error": self.graphed.failure})
                    self.graphed = None
                return values
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        try:
            losses = self.losses(self.training_model, index)
        except Exception as exc:
            if not self.compiled:
                raise
            self.log({"event": "compile_fallback", "error": f"{type(exc).__name__}: {exc}"[:500]})
            self.training_model = self.model
            losses = self.losses(self.training_model, index)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        self.optimizer.step()
        update_ema(list(self.ema.parameters()), list(self.model.parameters()), decay)
        return torch.stack([losses["loss"], losses["coords"], losses["lattice"]]).detach()


def prepare_torch(args: argparse.Namespace) -> None:
    """Seed, CPU threads and TF32 matmuls (CUDA) as the options ask."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def train_loop(run: TrainingRun, batches, process_start: float) -> dict:
    """Train ``run`` on ``batches.next()`` (row indices) until the budget or ``--stop-after``; the last log record.

    The budget (``--minutes``) counts training-loop wall time only, summed over resumed
    invocations; ``--stop-after`` counts this process's wall time from ``process_start``,
    data loading and compilation included, so an invocation fits a fixed command limit.
    """
    args = run.args
    total_seconds = args.minutes * 60.0
    stop_seconds = args.stop_after * 60.0 if args.stop_after else float("inf")
    run.log(run.start_record())
    previous_handlers = {s: signal.signal(s, _request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    start = time.perf_counter()
    base_seconds = run.progress.seconds
    last_log = last_val = last_save = start
    running, running_steps, log_start_step, log_start_time = None, 0, run.progress.step, start
    last = {"step": run.progress.step}
    stop_reason = "budget"
    try:
        while True:
            now = time.perf_counter()
            run.progress.seconds = base_seconds + (now - start)
            if run.progress.seconds >= total_seconds:
                break
            if now - process_start >= stop_seconds:
                stop_reason = "stop_after"
                break
            lr = learning_rate(run.progress.seconds / total_seconds, args.lr, args.warmup_fraction, args.final_lr_fraction)
            index = batches.next()
            values = run.step(index, lr)
            running = values if running is None else running + values
            running_steps += 1
            run.progress.step += 1
            run.progress.samples += len(index)
            if now - last_log >= args.log_seconds:
                mean = (running / running_steps).tolist()
                if not all(math.isfinite(v) for v in mean):
                    raise FloatingPointError(f"training loss became non-finite at step {run.progress.step}: {mean}")
                last = {"step": run.progress.step, "seconds": round(run.progress.seconds, 1), "lr": lr,
                        "loss": mean[0], "coords": mean[1], "lattice": mean[2],
                        "steps_per_s": round((run.progress.step - log_start_step) / max(now - log_start_time, 1e-9), 2),
                        "epochs": round(run.progress.samples / run.train_rows, 2)}
                if now - last_val >= args.val_seconds:
                    last.update(run.validate())
                    run.keep_best(last)
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
    run.keep_best(last)
    run.save(last)
    run.log({"event": "end", "reason": stop_reason, **last, "finished": run.progress.seconds >= total_seconds})
    return last
