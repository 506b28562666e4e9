"""Crystal-GFN rewards (log scale): Boltzmann of the proxy formation energy, closeness of the proxy
band gap to a target, and the exact density from composition and lattice volume."""

from __future__ import annotations

from functools import lru_cache

import torch

AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


@lru_cache(maxsize=1)
def atomic_masses(max_z: int = 94) -> torch.Tensor:
    from pymatgen.core import Element

    return torch.tensor([float(Element.from_Z(z).atomic_mass) for z in range(1, max_z + 1)])


def cell_volumes(lattice: torch.Tensor) -> torch.Tensor:
    """Volumes (A^3) of [B, 6] lattices (a, b, c in A; angles in degrees); 0 where degenerate."""
    a, b, c = lattice[:, 0], lattice[:, 1], lattice[:, 2]
    ca, cb, cg = (torch.cos(torch.deg2rad(lattice[:, i])) for i in (3, 4, 5))
    arg = 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg
    return a * b * c * torch.sqrt(arg.clamp_min(0))


def density(counts: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Exact density (g/cm^3) from atom counts [B, MAX_Z] and lattice [B, 6]."""
    mass = counts.float() @ atomic_masses(counts.shape[1]).to(counts.device)
    return mass * AMU_PER_A3_TO_G_PER_CM3 / cell_volumes(lattice.float()).clamp_min(1e-6)


def log_reward_formation_energy(e_form: torch.Tensor, temperature: float) -> torch.Tensor:
    """log R = -E_f / T (Boltzmann): lower formation energy, higher reward."""
    return -e_form / temperature


def log_reward_band_gap(gap: torch.Tensor, target: float = 1.34, width: float = 0.5) -> torch.Tensor:
    """log R = -|gap - target| / width (peaked at the target, 1.34 eV Shockley-Queisser by default)."""
    return -(gap - target).abs() / width


def log_reward_density(rho: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.log(rho.clamp_min(1e-6))
