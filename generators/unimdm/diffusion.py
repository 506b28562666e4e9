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
- Self-conditioning (a ``self_conditioning`` network): the network also sees the clean crystal
  its previous call estimated (:func:`clean_estimate`); in training half the crystals get the
  estimate of a first, gradient-free pass at the same level.
- Property conditioning with dropout (each property replaced by the null embedding with
  probability ``property_dropout``), so sampling can use classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import warnings

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


SELF_CONDITION_PROBABILITY = 0.5  # crystals of a training batch given a first pass's estimate


def uses_self_conditioning(model) -> bool:
    return bool(getattr(getattr(model, "config", None), "self_conditioning", False))


def clean_estimate(batch: SymmetryBatch, u: torch.Tensor, z: torch.Tensor, lattice_noise: torch.Tensor,
                   atom_score: torch.Tensor, schedule: NoiseSchedule, t: torch.Tensor, free: torch.Tensor,
                   free_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean crystal a network's outputs at level ``t`` ([B] or [1]) point to: atom
    coordinates [B, N, 3] (Tweedie's step ``u - sigma^2 s`` on the representatives' free
    components, expanded, so the estimate keeps the symmetry) and the standardised k vector [B, 6]
    (``(z - sqrt(1 - abar) eps) / sqrt(abar)``, clipped as noisy ones are)."""
    sigma = schedule.sigmas[t].reshape(-1, 1, 1)
    negative_score = batch.project(atom_score.float()) * schedule.sigma_norms[t].sqrt().reshape(-1, 1, 1)
    clean_u = wrap(u - sigma**2 * negative_score) * free
    alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1).clamp_min(1e-6)
    clean_z = (z - (1 - alpha_bar).sqrt() * lattice_noise.float()) / alpha_bar.sqrt()
    return batch.expand(clean_u), clean_z.clamp(-NOISY_Z_CLIP, NOISY_Z_CLIP) * free_k


def training_estimate(model, inputs: tuple, batch: SymmetryBatch, noisy_u: torch.Tensor, noisy_z: torch.Tensor,
                      timesteps: torch.Tensor, schedule: NoiseSchedule, free: torch.Tensor, free_k: torch.Tensor,
                      generator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A first, gradient-free pass's clean estimate for a :data:`SELF_CONDITION_PROBABILITY` share
    of the crystals (the others: zeros, flag 0), as the self-conditioned pass sees it. The pass
    runs on the whole batch, not only that share: the step keeps static shapes, as a CUDA graph
    needs."""
    with torch.no_grad():
        with _autocast(noisy_u.device):
            lattice_noise, atom_score = model(*inputs)
        coords, z = clean_estimate(batch, noisy_u, noisy_z, lattice_noise, atom_score, schedule, timesteps, free, free_k)
    present = (torch.rand(batch.size, device=noisy_u.device, generator=generator) < SELF_CONDITION_PROBABILITY).float()
    return coords * present[:, None, None], z * present[:, None], present


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
    inputs = (coords, batch, noisy_z, free_k, time, properties, matrices, tables.polar[batch.space_group])
    options = {}
    if uses_self_conditioning(model):
        options["estimate"] = training_estimate(model, inputs, batch, noisy_u, noisy_z, timesteps, schedule, free,
                                                free_k, generator)
    with _autocast(device):
        predicted_lattice, atom_score = model(*inputs, **options)
    predicted = batch.project(atom_score.float())
    coords_loss = (((predicted - target) ** 2) * free).sum() / free.sum().clamp_min(1.0)
    lattice_loss = (((predicted_lattice.float() - lattice_noise) ** 2) * free_k).sum() / free_k.sum().clamp_min(1.0)
    return {"loss": coords_loss + lattice_loss, "coords": coords_loss, "lattice": lattice_loss}


@torch.no_grad()
def sample(model, batch: SymmetryBatch, schedule: NoiseSchedule, normaliser: KNormaliser, tables: Tables,
           settings: SamplerSettings, properties: torch.Tensor | None = None, guidance: float = 0.0,
           generator=None, recorder=None, start_level: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample crystals for a batch's symmetry (space group, orbits, operations) and properties.

    ``properties`` [B, P] scaled values (NaN: unconditional; default: the batch's own values).
    ``guidance`` w > 0: classifier-free guidance, ``(1 + w) conditional - w unconditional``.
    ``recorder`` (a :class:`CudaGraphRecorder`, on CUDA): the reverse steps after the first are
    replayed from one recorded CUDA graph (:class:`ReplayedSteps`; the sampler is launch-bound
    like the training step); one recorder shared by many calls counts their recordings; tests
    pass one that replays eagerly.
    ``start_level`` L (1..T): start from the batch's own representatives and lattice (e.g. a
    prototype template, :mod:`generators.unimdm.templates`) noised to level L, and take only the
    reverse steps from L down (SDEdit): the network keeps or leaves the start's arrangement.
    Returns (representatives [B, R, 3], atom coordinates [B, N, 3] in [0, 1), lattice
    parameters [B, 6] in Å and degrees).
    """
    device = batch.orbit_coords.device
    step = ReverseStep(model, batch, schedule, normaliser, tables, settings, properties, guidance, generator)
    timesteps = sampling_timesteps(schedule.config.timesteps, settings.steps)
    if start_level is None:
        u = torch.rand(batch.orbit_coords.shape, device=device, generator=generator) * step.free
        z = torch.randn(batch.k.shape, device=device, generator=generator) * step.free_k
    else:
        u, z = noised_start(batch, schedule, normaliser, step, start_level, generator)
        # the first step leaves exactly the start's level, then the grid's levels below it (a coarse grid
        # may have none between: the start is still denoised, never returned as noised)
        timesteps = [start_level] + [t for t in timesteps if t < start_level]
    timesteps = timesteps + [0]
    levels = torch.tensor(timesteps, device=device)  # one copy to the device; each step takes views of it
    first = 0
    if recorder is not None:
        u, z, first = ReplayedSteps(step, recorder).run(u, z, levels, timesteps)
    for i in range(first, len(timesteps) - 1):
        u, z = step(u, z, levels[i : i + 1], levels[i + 1 : i + 2], noisy=timesteps[i + 1] > 0)
    k = normaliser.decode(z.double(), batch.n_atoms, step.free_k, tables.fixed[batch.space_group].double())
    return u, batch.expand(u), parameters_from_k(k).float()


def noised_start(batch: SymmetryBatch, schedule: NoiseSchedule, normaliser: KNormaliser, step: ReverseStep,
                 level: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's representatives and lattice noised to ``level`` as training noises them (u: wrapped
    normal of sigma_level; z: DDPM with alpha_bar_level)."""
    if not 1 <= level <= schedule.config.timesteps:
        raise ValueError(f"start level {level} outside 1..{schedule.config.timesteps}")
    device = batch.orbit_coords.device
    u = wrap(batch.orbit_coords + schedule.sigmas[level] * torch.randn(batch.orbit_coords.shape, device=device, generator=generator)) * step.free
    alpha_bar = schedule.alphas_cumprod[level]
    clean_z = normaliser.encode(batch.k, batch.n_atoms, step.free_k)
    z = (alpha_bar.sqrt() * clean_z + (1 - alpha_bar).sqrt() * torch.randn(batch.k.shape, device=device, generator=generator)) * step.free_k
    return u, z.float()


class ReverseStep:
    """One reverse step of :func:`sample` (corrector, coordinate predictor, lattice step) from level
    ``t`` to ``s``, both [1] device tensors, so a CUDA graph records it once and replays it at
    every level. ``noisy`` False (the last step, s = 0) skips the corrector's fresh noise."""

    def __init__(self, model, batch: SymmetryBatch, schedule: NoiseSchedule, normaliser: KNormaliser, tables: Tables,
                 settings: SamplerSettings, properties: torch.Tensor | None, guidance: float, generator):
        device = batch.orbit_coords.device
        self.model, self.batch, self.schedule, self.normaliser, self.tables = model, batch, schedule, normaliser, tables
        self.settings, self.guidance, self.generator = settings, guidance, generator
        self.properties = property_values(batch) if properties is None else properties.float().to(device)
        self.unconditional = torch.full_like(self.properties, float("nan"))
        self.free_k = tables.free[batch.space_group]
        self.free = (batch.orbit_free & batch.orbit_mask.unsqueeze(-1)).float()
        self.polar = tables.polar[batch.space_group]
        total = schedule.config.timesteps
        self.times = (torch.arange(total + 1, dtype=torch.float64) / total).float().to(device)  # t / T as torch.full gave it
        self.estimate = None  # a self-conditioning network's last clean estimate, updated in place (CUDA graphs)
        if uses_self_conditioning(model):
            self.estimate = (torch.zeros(batch.size, batch.atom_mask.shape[1], 3, device=device),
                             torch.zeros(batch.k.shape, device=device), torch.zeros(batch.size, device=device))

    def predict(self, u, z, t):
        batch, model = self.batch, self.model
        time = self.times[t].expand(batch.size)
        coords = batch.expand(u)
        matrices = lattice_matrices(model, z, batch, self.normaliser, self.tables, self.free_k)
        options = {} if self.estimate is None else {"estimate": self.estimate}
        with _autocast(u.device):
            lattice_noise, atom_score = model(coords, batch, z, self.free_k, time, self.properties, matrices, self.polar, **options)
            if self.guidance:
                lattice_u, score_u = model(coords, batch, z, self.free_k, time, self.unconditional, matrices, self.polar,
                                           **options)
                lattice_noise = (1 + self.guidance) * lattice_noise.float() - self.guidance * lattice_u.float()
                atom_score = (1 + self.guidance) * atom_score.float() - self.guidance * score_u.float()
        lattice_noise = lattice_noise.float() * self.free_k
        if self.estimate is not None:
            self.remember(u, z, lattice_noise, atom_score, t)
        score = batch.project(atom_score.float()) * self.schedule.sigma_norms[t].sqrt()
        return lattice_noise, -score

    def remember(self, u, z, lattice_noise, atom_score, t) -> None:
        """Keep this call's clean estimate for the next call, in place (a CUDA graph replays it)."""
        coords, clean_z = clean_estimate(self.batch, u, z, lattice_noise, atom_score, self.schedule, t, self.free, self.free_k)
        self.estimate[0].copy_(coords)
        self.estimate[1].copy_(clean_z)
        self.estimate[2].fill_(1.0)

    def __call__(self, u, z, t, s, noisy: bool = True):
        schedule, settings, free, generator = self.schedule, self.settings, self.free, self.generator
        sigma_t, sigma_s = schedule.sigmas[t], schedule.sigmas[s]
        if settings.corrector:
            _, score = self.predict(u, z, t)
            step = settings.corrector_step(schedule.config, sigma_t)
            noise = torch.randn(u.shape, device=u.device, generator=generator) * free if noisy else 0.0
            u = wrap(u + step * score + (2 * step).sqrt() * settings.coordinate_temperature * noise) * free
        lattice_noise, score = self.predict(u, z, t)
        variance_drop = sigma_t**2 - sigma_s**2
        std = (sigma_s**2 * variance_drop / sigma_t**2).sqrt() * settings.coordinate_temperature
        u = wrap(u + variance_drop * score + std * torch.randn(u.shape, device=u.device, generator=generator) * free) * free
        fresh = torch.randn(z.shape, device=z.device, generator=generator) * self.free_k
        z = lattice_reverse_step(z, lattice_noise, schedule.alphas_cumprod[t], schedule.alphas_cumprod[s],
                                 settings.lattice_eta, fresh) * self.free_k
        return u, z


class CudaGraphRecorder:
    """Records a function as a CUDA graph (the sampler's generator registered, so each replay
    draws fresh noise from it) and replays it. One recorder may serve many :func:`sample` calls
    (each records anew); ``recorded`` and ``failed`` count its recordings, so a caller can say
    how many calls were replayed and how many fell back to eager steps."""

    def __init__(self, generator=None):
        self.generator, self.graph = generator, None
        self.recorded = self.failed = 0

    def record(self, function) -> None:
        self.graph = None  # the previous call's graph and its memory go first
        try:
            graph = torch.cuda.CUDAGraph()
            if self.generator is not None:
                graph.register_generator_state(self.generator)
            with torch.cuda.graph(graph):
                function()
        except Exception:
            self.failed += 1
            raise
        self.graph = graph
        self.recorded += 1

    def replay(self) -> None:
        self.graph.replay()


class ReplayedSteps:
    """The reverse steps of :func:`sample` but the last: the first eagerly (the warm-up a
    recording needs), then one recorded step that updates static state in place, replayed at
    each later level; the last step (s = 0, no corrector noise) is left to the caller. A failed
    recording hands back after the first step, so the caller goes on eagerly."""

    def __init__(self, step: ReverseStep, recorder):
        self.step, self.recorder = step, recorder

    def run(self, u, z, levels: torch.Tensor, timesteps: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(u, z, index of the first step still to take)."""
        if len(timesteps) < 4:  # fewer than two steps before the last: nothing to replay
            return u, z, 0
        u, z = self.step(u, z, levels[0:1], levels[1:2], noisy=True)
        static_u, static_z = u.clone(), z.clone()
        static_t, static_s = levels[1:2].clone(), levels[2:3].clone()

        def one_step():
            new_u, new_z = self.step(static_u, static_z, static_t, static_s, noisy=True)
            static_u.copy_(new_u)
            static_z.copy_(new_z)

        try:
            self.recorder.record(one_step)
        except Exception as exc:  # a network the recording cannot take: the caller samples eagerly
            warnings.warn(f"sampling without CUDA graphs: {type(exc).__name__}: {exc}"[:300])
            return u, z, 1
        for i in range(1, len(timesteps) - 2):
            static_t.copy_(levels[i : i + 1])
            static_s.copy_(levels[i + 1 : i + 2])
            self.recorder.replay()
        return static_u, static_z, len(timesteps) - 2
