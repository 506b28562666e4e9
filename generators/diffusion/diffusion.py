"""Noise processes, training loss and samplers of the crystal diffusion model (torch only).

Fractional coordinates: variance-exploding diffusion with wrapped (periodic) Gaussian noise,
``x_t = (x_0 + sigma_t * eps) mod 1`` with ``sigma_t`` geometric from ``sigma_begin`` (t = 1)
to ``sigma_end`` (t = T), as in DiffCSP. The network predicts the negative score of the
wrapped normal ``-d/dx log p(x_t | x_0)`` divided by its root mean square at ``sigma_t``.

Lattice: DDPM with a cosine schedule on the standardised 6-vector of
:class:`~generators.diffusion.representation.LatticeNormaliser`; the network predicts the noise.

Sampling: predictor-corrector (a Langevin corrector step, then an ancestral reverse step) on
the coordinates and DDPM/DDIM steps on the lattice, over all T steps (``ddpm``) or a strided
subset (``fast``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch

from generators.diffusion.representation import LatticeNormaliser, atom_mask, repair_angles, wrap

WRAPPED_NORMAL_TERMS = 10  # periodic images k = -10..10 summed in the wrapped normal
SIGMA_NORM_GRID = 1000  # quadrature points on one period for the score's mean square
LATTICE_CLIP = 7.0  # bound on the predicted clean normalised lattice (training data lies within +-6)


@dataclass
class DiffusionConfig:
    """Noise schedules: ``timesteps`` T, coordinate sigmas (fractional units), corrector step."""

    timesteps: int = 1000
    sigma_begin: float = 0.005
    sigma_end: float = 0.5
    cosine_offset: float = 0.008
    corrector_step_lr: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DiffusionConfig:
        return cls(**values)


def wrapped_normal_negative_score(displacement: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``-d/dx log p(x)`` of the wrapped normal with standard deviation ``sigma`` (broadcast), elementwise.

    ``displacement`` is ``x_t - x_0`` in fractional units (any real number; the result has period 1).
    """
    images = torch.arange(-WRAPPED_NORMAL_TERMS, WRAPPED_NORMAL_TERMS + 1, device=displacement.device, dtype=displacement.dtype)
    shifted = displacement.unsqueeze(-1) + images
    variance = (sigma**2).unsqueeze(-1)
    weights = torch.softmax(-(shifted**2) / (2 * variance), dim=-1)
    return (weights * shifted).sum(-1) / variance.squeeze(-1)


def wrapped_normal_score_mean_square(sigmas: torch.Tensor, chunk: int = 50) -> torch.Tensor:
    """E[score^2] of the wrapped normal for each sigma in ``sigmas`` [S], by quadrature over one period."""
    grid = (torch.arange(SIGMA_NORM_GRID, dtype=torch.float64) + 0.5) / SIGMA_NORM_GRID - 0.5
    images = torch.arange(-WRAPPED_NORMAL_TERMS, WRAPPED_NORMAL_TERMS + 1, dtype=torch.float64)
    shifted = grid[:, None] + images[None, :]  # [G, K]
    result = []
    for part in sigmas.double().split(chunk):
        variance = (part**2)[:, None, None]  # [S, 1, 1]
        log_terms = -(shifted[None] ** 2) / (2 * variance)  # [S, G, K]
        density = torch.exp(torch.logsumexp(log_terms, dim=-1))
        score = (torch.softmax(log_terms, dim=-1) * shifted[None]).sum(-1) / variance[..., 0]
        result.append((density * score**2).sum(-1) / density.sum(-1))
    return torch.cat(result).float()


class NoiseSchedule:
    """Per-timestep tensors, index 0..T (index 0 is the clean data).

    ``sigmas`` (fractional-coordinate noise; 0 at t = 0), ``sigma_norms`` (E[score^2] at each
    sigma), ``alphas_cumprod`` (lattice DDPM signal fraction; 1 at t = 0).
    """

    def __init__(self, config: DiffusionConfig, device: torch.device | str = "cpu"):
        self.config = config
        steps = config.timesteps
        sigmas = torch.exp(torch.linspace(math.log(config.sigma_begin), math.log(config.sigma_end), steps))
        self.sigmas = torch.cat([torch.zeros(1), sigmas]).to(device)
        self.sigma_norms = torch.cat([torch.ones(1), wrapped_normal_score_mean_square(sigmas)]).to(device)
        self.alphas_cumprod = cosine_alphas_cumprod(steps, config.cosine_offset).to(device)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        for name in ("sigmas", "sigma_norms", "alphas_cumprod"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def cosine_alphas_cumprod(steps: int, offset: float) -> torch.Tensor:
    """[T + 1] cumulative signal fractions of the cosine schedule (Nichol & Dhariwal), betas <= 0.999."""
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(1e-4, 0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)]).float()


@dataclass
class CrystalBatch:
    """A padded batch: ``frac_coords`` [B,N,3] in [0,1), ``atomic_numbers`` [B,N] (0 = padding),
    ``lattice`` [B,6] lengths (Å) and angles (degrees), ``n_atoms`` [B]."""

    frac_coords: torch.Tensor
    atomic_numbers: torch.Tensor
    lattice: torch.Tensor
    n_atoms: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return atom_mask(self.n_atoms, self.frac_coords.shape[1])


def augment(frac_coords: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rigid translation of every crystal and inversion (x -> -x) of half of them.

    Both leave the lattice (lengths, angles) unchanged and give an equivalent crystal (the
    inverted one is its mirror image, of equal energy), so the model learns the symmetry.
    """
    batch = frac_coords.shape[0]
    shift = torch.rand(batch, 1, 3, device=frac_coords.device, generator=generator)
    sign = torch.where(torch.rand(batch, 1, 1, device=frac_coords.device, generator=generator) < 0.5, -1.0, 1.0)
    return wrap(sign * frac_coords + shift)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_losses(
    model,
    batch: CrystalBatch,
    schedule: NoiseSchedule,
    normaliser: LatticeNormaliser,
    generator: torch.Generator | None = None,
    augment_data: bool = True,
) -> dict[str, torch.Tensor]:
    """Denoising losses of one batch at uniformly drawn timesteps (dimensionless, ~1 at init).

    ``coords``: mean square error of the normalised wrapped-normal score over real atoms;
    ``lattice``: mean square error of the lattice noise; ``loss``: their sum.
    """
    device = batch.frac_coords.device
    size = batch.frac_coords.shape[0]
    mask = batch.mask
    timesteps = torch.randint(1, schedule.config.timesteps + 1, (size,), device=device, generator=generator)
    clean_coords = augment(batch.frac_coords, generator) if augment_data else batch.frac_coords
    clean_lattice = normaliser.encode(batch.lattice, batch.n_atoms)

    lattice_noise = torch.randn(clean_lattice.shape, device=device, generator=generator)
    alpha_bar = schedule.alphas_cumprod[timesteps].unsqueeze(-1)
    noisy_lattice = alpha_bar.sqrt() * clean_lattice + (1 - alpha_bar).sqrt() * lattice_noise

    sigma = schedule.sigmas[timesteps][:, None, None]
    displacement = sigma * torch.randn(clean_coords.shape, device=device, generator=generator)
    noisy_coords = wrap(clean_coords + displacement)
    target = wrapped_normal_negative_score(displacement, sigma.expand_as(displacement))
    target = target / schedule.sigma_norms[timesteps].sqrt()[:, None, None]

    time = timesteps.float() / schedule.config.timesteps
    with _autocast(device):
        predicted_lattice, predicted_score = model(noisy_coords, batch.atomic_numbers, mask, noisy_lattice, batch.n_atoms, time)
    weights = mask.unsqueeze(-1).float()
    coords_loss = (((predicted_score.float() - target) ** 2) * weights).sum() / (3 * weights.sum()).clamp_min(1.0)
    lattice_loss = ((predicted_lattice.float() - lattice_noise) ** 2).mean()
    return {"loss": coords_loss + lattice_loss, "coords": coords_loss, "lattice": lattice_loss}


def sampling_timesteps(total: int, steps: int) -> list[int]:
    """Descending timesteps from ``total`` to 1, ``steps`` of them (all of them when steps >= total)."""
    steps = max(1, min(steps, total))
    grid = torch.linspace(total, 1, steps).round().long().tolist()
    return sorted(set(grid), reverse=True)


def lattice_reverse_step(lattice, predicted_noise, alpha_bar_t, alpha_bar_s, eta, noise):
    """One DDIM step of the lattice from alpha_bar_t to alpha_bar_s (eta = 1 and adjacent steps: DDPM).

    The clean lattice implied by the predicted noise is clipped to +-:data:`LATTICE_CLIP` and the
    noise recomputed from it (``clip_denoised`` of Dhariwal & Nichol), which keeps the first
    steps, where alpha_bar is ~1e-9, from amplifying prediction errors.
    """
    clean = ((lattice - (1 - alpha_bar_t).sqrt() * predicted_noise) / alpha_bar_t.sqrt()).clamp(-LATTICE_CLIP, LATTICE_CLIP)
    predicted_noise = (lattice - alpha_bar_t.sqrt() * clean) / (1 - alpha_bar_t).sqrt()
    std = eta * ((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)).clamp_min(0).sqrt()
    direction = (1 - alpha_bar_s - std**2).clamp_min(0).sqrt() * predicted_noise
    return alpha_bar_s.sqrt() * clean + direction + std * noise


@dataclass
class SamplerSettings:
    """``steps``: reverse steps (T for DDPM); ``lattice_eta``: 1 ancestral, 0 deterministic DDIM;
    ``corrector``: a Langevin corrector step on the coordinates before each predictor step;
    ``corrector_step_lr``: its step size at ``sigma_begin`` (None: the model's
    :class:`DiffusionConfig` value, DiffCSP's 1e-5 for MP-20); ``coordinate_temperature``: the
    scale of the fresh noise in the coordinates' predictor and corrector steps (1: the sampler
    as derived; below 1 trades diversity for the most likely structure, as for CSP)."""

    steps: int
    lattice_eta: float = 1.0
    corrector: bool = True
    corrector_step_lr: float | None = None
    coordinate_temperature: float = 1.0

    def corrector_step(self, config: DiffusionConfig, sigma: torch.Tensor) -> torch.Tensor:
        """Langevin step size at noise level ``sigma``: the step at ``sigma_begin`` scaled by (sigma / sigma_begin)^2."""
        step_lr = config.corrector_step_lr if self.corrector_step_lr is None else self.corrector_step_lr
        return step_lr * (sigma / config.sigma_begin) ** 2

    @classmethod
    def for_method(cls, method: str, timesteps: int, steps: int | None = None) -> SamplerSettings:
        """``ddpm``: all T steps, ancestral; ``fast``: ``steps`` (default 100) strided steps, DDIM lattice."""
        if method == "ddpm":
            return cls(steps=steps or timesteps, lattice_eta=1.0, corrector=True)
        if method == "fast":
            return cls(steps=steps or 100, lattice_eta=0.0, corrector=True)
        raise ValueError(f"unknown sampling method {method!r}; choose 'ddpm' or 'fast'")


@torch.no_grad()
def sample(
    model,
    schedule: NoiseSchedule,
    normaliser: LatticeNormaliser,
    atomic_numbers: torch.Tensor,
    n_atoms: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample crystals for given atoms: ``atomic_numbers`` [B,N] (0 = padding), ``n_atoms`` [B].

    Returns fractional coordinates [B,N,3] in [0,1) (padded rows 0) and lattices [B,6]
    (lengths in Å, angles in degrees, repaired to form a cell). Runs on the tensors' device,
    with bf16 autocast on CUDA.
    """
    device = atomic_numbers.device
    mask = atom_mask(n_atoms, atomic_numbers.shape[1])
    config = schedule.config
    coords = torch.rand(*atomic_numbers.shape, 3, device=device, generator=generator)
    lattice = torch.randn(atomic_numbers.shape[0], 6, device=device, generator=generator)
    timesteps = sampling_timesteps(config.timesteps, settings.steps)

    def predict(coords_now, lattice_now, t):
        time = torch.full((coords_now.shape[0],), t / config.timesteps, device=device)
        with _autocast(device):
            lattice_noise, score = model(coords_now, atomic_numbers, mask, lattice_now, n_atoms, time)
        return lattice_noise.float(), -score.float() * schedule.sigma_norms[t].sqrt()

    for index, t in enumerate(timesteps):
        s = timesteps[index + 1] if index + 1 < len(timesteps) else 0
        sigma_t, sigma_s = schedule.sigmas[t], schedule.sigmas[s]
        if settings.corrector:
            _, score = predict(coords, lattice, t)
            step = settings.corrector_step(config, sigma_t)
            noise = torch.randn(coords.shape, device=device, generator=generator) if s > 0 else 0.0
            coords = wrap(coords + step * score + (2 * step).sqrt() * settings.coordinate_temperature * noise)
        lattice_noise, score = predict(coords, lattice, t)
        variance_drop = sigma_t**2 - sigma_s**2
        std = (sigma_s**2 * variance_drop / sigma_t**2).sqrt() * settings.coordinate_temperature
        coords = wrap(coords + variance_drop * score + std * torch.randn(coords.shape, device=device, generator=generator))
        lattice_noise_sample = torch.randn(lattice.shape, device=device, generator=generator)
        lattice = lattice_reverse_step(
            lattice, lattice_noise, schedule.alphas_cumprod[t], schedule.alphas_cumprod[s], settings.lattice_eta, lattice_noise_sample
        )
    coords = coords * mask.unsqueeze(-1)
    return coords, repair_angles(normaliser.decode(lattice, n_atoms))
