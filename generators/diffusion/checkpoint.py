"""Saving and loading the model file ``model.pt`` and the training state (torch only).

``model.pt`` holds what sampling needs: the EMA weights stored as float16 (loaded back to
float32), the network and diffusion configs, the lattice normaliser's statistics and a
``training`` record (data, command, steps, wall time, last losses). ``checkpoint.pt`` holds
the full training state (float32 weights, EMA weights, optimizer, counters) for ``--resume``.
Both are written to a temporary file and renamed, so a killed process leaves the previous
file intact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from generators.diffusion.diffusion import DiffusionConfig, NoiseSchedule
from generators.diffusion.network import CrystalDenoiser, NetworkConfig
from generators.diffusion.representation import LatticeNormaliser
from generators.training import atomic_save

MODEL_FORMAT = "genms-diffusion-csp/1"
__all__ = ["MODEL_FORMAT", "DiffusionModel", "atomic_save", "load_model", "model_payload"]


@dataclass
class DiffusionModel:
    """A loaded model: network (eval mode), noise schedule, lattice normaliser, training record."""

    network: CrystalDenoiser
    schedule: NoiseSchedule
    normaliser: LatticeNormaliser
    training: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> DiffusionModel:
        self.network.to(device)
        self.schedule.to(device)
        return self


def model_payload(
    ema_state: dict[str, torch.Tensor],
    network_config: NetworkConfig,
    diffusion_config: DiffusionConfig,
    normaliser: LatticeNormaliser,
    training: dict,
    weight_dtype: torch.dtype = torch.float16,
) -> dict:
    """The dict stored in ``model.pt`` (EMA weights on the CPU as ``weight_dtype``, float16 by default)."""
    return {
        "format": MODEL_FORMAT,
        "network": network_config.to_dict(),
        "diffusion": diffusion_config.to_dict(),
        "lattice_normaliser": {"mean": list(normaliser.mean), "std": list(normaliser.std)},
        "state_dict": {name: tensor.detach().to("cpu", weight_dtype) for name, tensor in ema_state.items()},
        "training": training,
    }


def load_model(path: str | Path, device: torch.device | str = "cpu") -> DiffusionModel:
    """A :class:`DiffusionModel` from ``model.pt`` (or from a ``checkpoint.pt``, using its EMA weights)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a genms diffusion model file (format {payload.get('format')!r})")
    network = CrystalDenoiser(NetworkConfig.from_dict(payload["network"]))
    network.load_state_dict({name: tensor.float() for name, tensor in payload["state_dict"].items()})
    network.eval()
    model = DiffusionModel(
        network=network,
        schedule=NoiseSchedule(DiffusionConfig.from_dict(payload["diffusion"])),
        normaliser=LatticeNormaliser(**payload["lattice_normaliser"]),
        training=payload.get("training", {}),
    )
    return model.to(device)
