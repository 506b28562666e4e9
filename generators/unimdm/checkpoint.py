"""Uni-MDM Crystal DiT model file ``model.pt`` and training checkpoint (torch only).

``model.pt``: EMA weights as float16 (loaded back to float32), the network and diffusion
configs, the k normaliser's statistics, the space groups' polar axes and a ``training``
record. ``checkpoint.pt`` adds float32 weights, the optimizer and counters for ``--resume``.
Files are written atomically (:func:`generators.training.atomic_save`).

A model file may hold its weight matrices as int8 with one float32 scale per row
(:func:`quantized_payload`, ``python -m generators.unimdm.checkpoint quantize``): half the
size of float16, for the autoguidance guide, a deliberately weaker network whose exact weights
matter less than the main one's (the committed guide is measured as stored).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from generators.diffusion.diffusion import DiffusionConfig, NoiseSchedule
from generators.training import atomic_save
from generators.unimdm.diffusion import Tables
from generators.unimdm.lattice import KNormaliser
from generators.unimdm.network import CrystalDiT, DiTConfig

MODEL_FORMAT = "genms-unimdm-dit/1"
__all__ = ["MODEL_FORMAT", "UniMDMModel", "atomic_save", "load_model", "model_payload", "with_guide", "with_lattice_from"]


@dataclass
class UniMDMModel:
    network: CrystalDiT
    schedule: NoiseSchedule
    normaliser: KNormaliser
    tables: Tables
    training: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device) -> UniMDMModel:
        self.network.to(device)
        self.schedule.to(device)
        self.tables.to(device)
        return self


def model_payload(ema_state: dict, network_config: DiTConfig, diffusion_config: DiffusionConfig, normaliser: KNormaliser,
                  polar_axes: torch.Tensor, training: dict, weight_dtype: torch.dtype = torch.float16) -> dict:
    return {
        "format": MODEL_FORMAT,
        "network": network_config.to_dict(),
        "diffusion": diffusion_config.to_dict(),
        "k_normaliser": {"mean": list(normaliser.mean), "std": list(normaliser.std)},
        "polar_axes": polar_axes.bool().cpu(),
        "state_dict": {name: tensor.detach().to("cpu", weight_dtype) for name, tensor in ema_state.items()},
        "training": training,
    }


def quantized_payload(payload: dict) -> dict:
    """A model file's payload with each floating weight of 2 or more dimensions stored as int8
    with a float32 scale per row (symmetric, ``max |row| / 127``); other tensors stay as they are."""
    state, scales = {}, {}
    for name, tensor in payload["state_dict"].items():
        if tensor.is_floating_point() and tensor.dim() >= 2:
            rows = tensor.float().reshape(tensor.shape[0], -1)
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
            state[name] = torch.round(rows / scale[:, None]).to(torch.int8).reshape(tensor.shape)
            scales[name] = scale
        else:
            state[name] = tensor
    return {**payload, "state_dict": state, "int8_scales": scales}


def float_state(payload: dict) -> dict[str, torch.Tensor]:
    """A model file's weights as float32 (int8 rows times their scales where quantized)."""
    scales = payload.get("int8_scales", {})
    return {name: (tensor.float() * scales[name].reshape(-1, *[1] * (tensor.dim() - 1)) if name in scales else tensor.float())
            for name, tensor in payload["state_dict"].items()}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> UniMDMModel:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a genms Uni-MDM model file (format {payload.get('format')!r})")
    network = CrystalDiT(DiTConfig.from_dict(payload["network"]))
    network.load_state_dict(float_state(payload))
    network.eval()
    model = UniMDMModel(network, NoiseSchedule(DiffusionConfig.from_dict(payload["diffusion"])),
                        KNormaliser(**payload["k_normaliser"]), Tables(payload["polar_axes"]), payload.get("training", {}))
    return model.to(device)


class TwoNetworkDenoiser(torch.nn.Module):
    """Two networks called at every network call of one sampling (the split and guided denoisers)."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module):
        super().__init__()
        self.first, self.second = first, second

    @property
    def config(self) -> SimpleNamespace:
        """What the sampler asks of a network's config: whether either needs the lattice matrix or
        self-conditions (both then get the estimate; a network without self-conditioning ignores it)."""
        return SimpleNamespace(
            uses_lattice_matrix=self.first.config.uses_lattice_matrix or self.second.config.uses_lattice_matrix,
            self_conditioning=self.first.config.self_conditioning or self.second.config.self_conditioning)


class SplitDenoiser(TwoNetworkDenoiser):
    """The coordinate scores of one network with the lattice noise of another, e.g. an early
    checkpoint's lattice (its validation lattice loss is lowest after ~100 epochs and then rises)
    beside a late one's coordinates (which keep improving). Two network calls per step."""

    def __init__(self, coordinates: CrystalDiT, lattice: CrystalDiT):
        super().__init__(coordinates, lattice)

    def forward(self, *inputs, **options):
        lattice_noise, _ = self.second(*inputs, **options)  # the lattice network
        _, atom_score = self.first(*inputs, **options)  # the coordinate network
        return lattice_noise, atom_score


def _check_compatible(model: UniMDMModel, other: UniMDMModel, role: str) -> None:
    """Two models whose networks share one sampling: the same diffusion, k normaliser (to 1e-6)
    and polar axes, as runs on the same data have."""
    if model.schedule.config != other.schedule.config:
        raise ValueError(f"the {role} model was trained with another diffusion config")
    for ours, theirs in ((model.normaliser.mean, other.normaliser.mean), (model.normaliser.std, other.normaliser.std)):
        if max(abs(a - b) for a, b in zip(ours, theirs)) > 1e-6:
            raise ValueError(f"the {role} model standardises k otherwise (another k normaliser): train both on the same data")
    if not torch.equal(model.tables.polar.cpu(), other.tables.polar.cpu()):
        raise ValueError(f"the {role} model's polar axes differ")


def with_lattice_from(model: UniMDMModel, lattice_model: UniMDMModel) -> UniMDMModel:
    """``model`` sampling its lattices with ``lattice_model``'s network; both must share the
    diffusion, the k normaliser (to 1e-6) and the polar axes, as runs on the same data do."""
    _check_compatible(model, lattice_model, "lattice")
    network = SplitDenoiser(model.network, lattice_model.network.to(model.device)).eval()
    return UniMDMModel(network, model.schedule, model.normaliser, model.tables,
                       {**model.training, "lattice_from": lattice_model.training})


class AutoGuidedDenoiser(TwoNetworkDenoiser):
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
    itself"): ``(1 + w) main - w guide`` for the lattice noise and the coordinate scores, where
    the guide is a weaker model of the same task (here an earlier, shorter-trained checkpoint).
    It moves samples away from what only the weaker model believes, towards the main model's
    confident modes, without the uniform sharpening of a lower temperature. Two network calls
    per step."""

    def __init__(self, main: torch.nn.Module, guide: torch.nn.Module, weight: float):
        super().__init__(main, guide)
        self.weight = float(weight)

    def forward(self, *inputs, **options):
        main_noise, main_score = self.first(*inputs, **options)
        guide_noise, guide_score = self.second(*inputs, **options)
        w = self.weight
        return ((1 + w) * main_noise.float() - w * guide_noise.float(),
                (1 + w) * main_score.float() - w * guide_score.float())


def with_guide(model: UniMDMModel, guide_model: UniMDMModel, weight: float) -> UniMDMModel:
    """``model`` sampling with autoguidance by ``guide_model`` of weight ``weight`` >= 0 (0: the
    main model alone; the guide must share the diffusion, k normaliser and polar axes)."""
    if not (weight >= 0 and math.isfinite(weight)):
        raise ValueError(f"the autoguidance weight must be a finite number >= 0, got {weight}")
    _check_compatible(model, guide_model, "guide")
    network = AutoGuidedDenoiser(model.network, guide_model.network.to(model.device), weight).eval()
    return UniMDMModel(network, model.schedule, model.normaliser, model.tables,
                       {**model.training, "guided_by": guide_model.training, "autoguidance": weight})


def lowest_validation_loss(paths: list[str | Path]) -> tuple[Path, list[dict]]:
    """The model file whose training record has the lowest ``val_loss``, and every file's (path, val_loss, step)."""
    scores = []
    for path in map(Path, paths):
        if not path.exists():
            continue
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} is not a genms Uni-MDM model file (format {payload.get('format')!r})")
        training = payload.get("training", {})
        scores.append({"path": str(path), "val_loss": float(training.get("val_loss", float("inf"))),
                       "step": training.get("step", training.get("steps"))})
    if not scores:
        raise FileNotFoundError(f"none of {', '.join(map(str, paths))} exists")
    return Path(min(scores, key=lambda s: s["val_loss"])["path"]), scores


def average_payloads(paths: list[str | Path]) -> dict:
    """One model file whose weights are the mean of several (a "model soup").

    Meant for fine-tunings of one start: their weights lie in one basin, so the mean averages out
    each run's noise. Networks may differ only in distance features: those without them gain them
    with zero weights (:func:`generators.unimdm.network.grow_network`, the same function)
    before the mean. Diffusion configs, k normalisers and polar axes must agree."""
    from generators.unimdm.network import grow_network

    payloads = []
    for path in map(Path, paths):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} is not a genms Uni-MDM model file (format {payload.get('format')!r})")
        payloads.append(payload)
    if len(payloads) < 2:
        raise ValueError("averaging needs at least two model files")
    first = payloads[0]
    for path, payload in zip(paths[1:], payloads[1:]):
        for key in ("diffusion", "k_normaliser"):
            if payload[key] != first[key]:
                raise ValueError(f"{path}: its {key} differs from {paths[0]}'s; only fine-tunings of one model can be averaged")
        if not torch.equal(payload["polar_axes"], first["polar_axes"]):
            raise ValueError(f"{path}: its polar axes differ from {paths[0]}'s")
    configs = [DiTConfig.from_dict(payload["network"]) for payload in payloads]
    if len({json.dumps({**config.to_dict(), "metric_features": 0, "dropout": 0.0}, sort_keys=True) for config in configs}) > 1:
        raise ValueError("the networks differ in more than distance features; only fine-tunings of one model can be averaged")
    target = max(configs, key=lambda config: config.metric_features)
    states = [grow_network(float_state(payload), config, target) for payload, config in zip(payloads, configs)]
    mean = {name: torch.stack([state[name] for state in states]).mean(0) for name in states[0]}
    training = {"averaged": [str(path) for path in paths],
                "epochs": [payload.get("training", {}).get("epochs") for payload in payloads]}
    weight_dtype = torch.float16 if "int8_scales" in first else next(iter(first["state_dict"].values())).dtype
    header = {key: value for key, value in first.items() if key != "int8_scales"}
    return {**header, "network": target.to_dict(), "training": training,
            "state_dict": {name: tensor.to(weight_dtype) for name, tensor in mean.items()}}


def main(argv: list[str] | None = None) -> None:
    """``python -m generators.unimdm.checkpoint select OUT.pt CANDIDATE.pt...``: copy the lowest-validation-loss model
    to OUT; ``... average OUT.pt MODEL.pt MODEL.pt...``: write the mean of the models' weights to OUT;
    ``... quantize OUT.pt MODEL.pt``: write MODEL with int8 weight matrices to OUT."""
    import argparse
    import shutil

    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.checkpoint", description=main.__doc__)
    parser.add_argument("command", choices=["select", "average", "quantize"])
    parser.add_argument("out", type=Path)
    parser.add_argument("candidates", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "quantize":
        if len(args.candidates) != 1:
            parser.error("quantize takes one model file")
        payload = torch.load(args.candidates[0], map_location="cpu", weights_only=True)
        if payload.get("format") != MODEL_FORMAT:
            parser.error(f"{args.candidates[0]} is not a genms Uni-MDM model file")
        atomic_save(quantized_payload(payload), args.out)
        print(json.dumps({"quantized": str(args.candidates[0]), "out": str(args.out), "bytes": args.out.stat().st_size}))
        return
    if args.command == "average":
        atomic_save(average_payloads(args.candidates), args.out)
        print(json.dumps({"averaged": [str(path) for path in args.candidates], "out": str(args.out)}))
        return
    chosen, scores = lowest_validation_loss(args.candidates)
    shutil.copyfile(chosen, args.out)
    print(json.dumps({"selected": str(chosen), "by": "lowest validation loss", "candidates": scores}))


if __name__ == "__main__":
    main()
