"""Space-group-constrained diffusion of Uni-MDM's Crystal DiT, in the DiffCSP++ manner (torch only).

State: the fractional coordinates ``u`` of each Wyckoff orbit's representative (free
components only) and the standardised lattice vector ``z`` (free k components only,
:mod:`generators.unimdm.lattice`). The atoms of the conventional cell are always the expansion
``x_j = R_j u_anchor(j) + t_j`` (:meth:`SymmetryBatch.expand`), so every intermediate and final
structure has the exact space group and Wyckoff assignment.

- Coordinates: variance-exploding wrapped normal noise on ``u`` (the schedule, the score of the
  wrapped normal and its normalisation are those of :mod:`generators.diffusion.diffusion`);
  the network predicts a score per atom, which is pulled back to the representatives
  (orbit mean of ``pinv(R_j) s_j``, free components; :meth:`SymmetryBatch.project`).
- Lattice: DDPM (cosine schedule) on ``z``, the noise confined to the free components.
- Training augmentation: a random origin shift along the space group's polar axes (continuous
  normalizer translations; all three axes for P1), which leaves the crystal unchanged.
- Property conditioning with dropout (each property replaced by the null embedding with
  probability ``property_dropout``), so sampling can use classifier-free guidance.
"""

from __future__ import annotations

import contextlib

import torch

from generators.diffusion.diffusion import (
    NoiseSchedule,
    SamplerSettings,
    lattice_reverse_step,
    sampling_timesteps,
    wrapped_normal_negative_score,
)
from generators.diffusion.representation import wrap
from generators.unimdm.lattice import KNormaliser, fixed_value_table, free_mask_table, matrix_from_k_fixed_steps, parameters_from_k
from generators.unimdm.network import PROPERTIES, PROPERTY_SCALE
from generators.unimdm.tensor_files import SymmetryBatch


class Tables:
    """Per-space-group tensors on a device: free k components, fixed k values, polar axes."""

    def __init__(self, polar_axes: torch.Tensor, device: torch.device | str = "cpu"):
        self.free = free_mask_table().to(device)
        self.fixed = fixed_value_table().to(device)
        self.polar = polar_axes.bool().to(device)

    def to(self, device) -> Tables:
        self.free, self.fixed, self.polar = self.free.to(device), self.fixed.to(device), self.polar.to(device)
        return self


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def property_values(batch: SymmetryBatch) -> torch.Tensor:
    """[B, P] scaled property values (NaN: unknown)."""
    columns = [getattr(batch, name) / PROPERTY_SCALE[name] for name in PROPERTIES]
    return torch.stack(columns, dim=-1).float()


def drop_properties(values: torch.Tensor, probability: float, generator=None) -> torch.Tensor:
    if probability <= 0:
        return values
    drop = torch.rand(values.shape, device=values.device, generator=generator) < probability
    return torch.where(drop, torch.full_like(values, float("nan")), values)


NOISY_Z_CLIP = 5.0  # standard deviations: keeps the lattices decoded from pure noise finite


def lattice_matrices(model, z: torch.Tensor, batch: SymmetryBatch, normaliser: KNormaliser, tables: Tables,
                     free_k: torch.Tensor) -> torch.Tensor | None:
    """[B, 3, 3] lattices (Å) decoded from the (noisy) standardised k vectors, for a network whose
    pair features use the lattice (None for one whose do not)."""
    if not getattr(model, "config", None) or not model.config.uses_lattice_matrix:
        return None
    k = normaliser.decode(z.float().clamp(-NOISY_Z_CLIP, NOISY_Z_CLIP), batch.n_atoms, free_k, tables.fixed[batch.space_group])
    return matrix_from_k_fixed_steps(k)


def training_losses(model, batch: SymmetryBatch, schedule: NoiseSchedule, normaliser: KNormaliser, tables: Tables,
                    generator=None, augment: bool = True, property_dropout: float = 0.1) -> dict[str, torch.Tensor]:
    """Denoising losses of one batch at uniform timesteps: ``coords`` (score MSE on the
    representatives' free components), ``lattice`` (noise MSE on free k components), ``loss``."""
    device = batch.orbit_coords.device
    size = batch.size
    free_k = tables.free[batch.space_group]
    timesteps = torch.randint(1, schedule.config.timesteps + 1, (size,), device=device, generator=generator)
    clean_z = normaliser.encode(batch.k, batch.n_atoms, free_k)
    lattice_noise = torch.randn(clean_z.shape, device=device, generator=generator) * free_k
    alpha_bar = schedule.alphas_cumprod[timesteps].unsqueeze(-1)
    noisy_z = alpha_bar.sqrt() * clean_z + (1 - alpha_bar).sqrt() * lattice_noise

    free = (batch.orbit_free & batch.orbit_mask.unsqueeze(-1)).float()
    clean_u = batch.orbit_coords
    if augment:
        shift = torch.rand(size, 1, 3, device=device, generator=generator) * tables.polar[batch.space_group].unsqueeze(1)
        clean_u = wrap(clean_u + shift) * free
    sigma = schedule.sigmas[timesteps][:, None, None]
    displacement = sigma * torch.randn(clean_u.shape, device=device, generator=generator) * free
    noisy_u = wrap(clean_u + displacement) * free
    target = wrapped_normal_negative_score(displacement, sigma.expand_as(displacement))
    target = target / schedule.sigma_norms[timesteps].sqrt()[:, None, None] * free
    coords = batch.expand(noisy_u)
    properties = drop_properties(property_values(batch), property_dropout, generator)
    time = timesteps.float() / schedule.config.timesteps
    matrices = lattice_matrices(model, noisy_z, batch, normaliser, tables, free_k)
    with _autocast(device):
        predicted_lattice, atom_score = model(coords, batch, noisy_z, free_k, time, properties, matrices,
                                              tables.polar[batch.space_group])
    predicted = batch.project(atom_score.float())
    coords_loss = (((predicted - target) ** 2) * free).sum() / free.sum().clamp_min(1.0)
    lattice_loss = (((predicted_lattice.float() - lattice_noise) ** 2) * free_k).sum() / free_k.sum().clamp_min(1.0)
    return {"loss": coords_loss + lattice_loss, "coords": coords_loss, "lattice": lattice_loss}


@torch.no_grad()
def sample(model, batch: SymmetryBatch, schedule: NoiseSchedule, normaliser: KNormaliser, tables: Tables,
           settings: SamplerSettings, properties: torch.Tensor | None = None, guidance: float = 0.0,
           generator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample crystals for a batch's symmetry (space group, orbits, operations) and properties.

    ``properties`` [B, P] scaled values (NaN: unconditional; default: the batch's own values).
    ``guidance`` w > 0: classifier-free guidance, ``(1 + w) conditional - w unconditional``.
    Returns (representatives [B, R, 3], atom coordinates [B, N, 3] in [0, 1), lattice
    parameters [B, 6] in Å and degrees).
    """
    device = batch.orbit_coords.device
    config = schedule.config
    free_k = tables.free[batch.space_group]
    fixed_k = tables.fixed[batch.space_group]
    free = (batch.orbit_free & batch.orbit_mask.unsqueeze(-1)).float()
    properties = property_values(batch) if properties is None else properties.float().to(device)
    unconditional = torch.full_like(properties, float("nan"))
    polar = tables.polar[batch.space_group]
    u = torch.rand(batch.orbit_coords.shape, device=device, generator=generator) * free
    z = torch.randn(batch.k.shape, device=device, generator=generator) * free_k

    def predict(u_now, z_now, t):
        time = torch.full((batch.size,), t / config.timesteps, device=device)
        coords = batch.expand(u_now)
        matrices = lattice_matrices(model, z_now, batch, normaliser, tables, free_k)
        with _autocast(device):
            lattice_noise, atom_score = model(coords, batch, z_now, free_k, time, properties, matrices, polar)
            if guidance:
                lattice_u, score_u = model(coords, batch, z_now, free_k, time, unconditional, matrices, polar)
                lattice_noise = (1 + guidance) * lattice_noise.float() - guidance * lattice_u.float()
                atom_score = (1 + guidance) * atom_score.float() - guidance * score_u.float()
        score = batch.project(atom_score.float()) * schedule.sigma_norms[t].sqrt()
        return lattice_noise.float() * free_k, -score

    timesteps = sampling_timesteps(config.timesteps, settings.steps)
    for index, t in enumerate(timesteps):
        s = timesteps[index + 1] if index + 1 < len(timesteps) else 0
        sigma_t, sigma_s = schedule.sigmas[t], schedule.sigmas[s]
        if settings.corrector:
            _, score = predict(u, z, t)
            step = settings.corrector_step(config, sigma_t)
            noise = torch.randn(u.shape, device=device, generator=generator) * free if s > 0 else 0.0
            u = wrap(u + step * score + (2 * step).sqrt() * settings.coordinate_temperature * noise) * free
        lattice_noise, score = predict(u, z, t)
        variance_drop = sigma_t**2 - sigma_s**2
        std = (sigma_s**2 * variance_drop / sigma_t**2).sqrt() * settings.coordinate_temperature
        u = wrap(u + variance_drop * score + std * torch.randn(u.shape, device=device, generator=generator) * free) * free
        fresh = torch.randn(z.shape, device=device, generator=generator) * free_k
        z = lattice_reverse_step(z, lattice_noise, schedule.alphas_cumprod[t], schedule.alphas_cumprod[s],
                                 settings.lattice_eta, fresh) * free_k
    k = normaliser.decode(z.double(), batch.n_atoms, free_k, fixed_k.double())
    return u, batch.expand(u), parameters_from_k(k).float()
