"""The compact crystal representation of GenMS, in torch (no pymatgen).

A crystal of ``n`` atoms is ``n`` rows ``(x, y, z, a)``: fractional coordinates in [0, 1) and
the atomic number ``a`` as a continuous value scaled to [-1, 1]; plus a 2x3 lattice
(lengths a, b, c in Å; angles alpha, beta, gamma in degrees) of the Niggli-reduced cell.
Batches pad every crystal to :data:`MAX_ATOMS` rows with a boolean mask.

The diffusion model works on a normalised lattice vector of 6 numbers: the log of each length
divided by ``n_atoms ** (1/3)`` and the logit of each angle mapped from
(:data:`ANGLE_LOW`, :data:`ANGLE_HIGH`) degrees onto (0, 1), each then standardised with the
training set's mean and standard deviation (:class:`LatticeNormaliser`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_ATOMS = 20  # atoms per cell, the MP-20 limit
MAX_ATOMIC_NUMBER = 100  # element embedding covers Z = 1..100; 0 is padding
ANGLE_LOW = 55.0  # degrees; Niggli-reduced cells of MP-20 have angles in [60, 120]
ANGLE_HIGH = 125.0
MIN_CELL_VOLUME_FACTOR = 0.05  # sqrt(1 - cos^2 a - cos^2 b - cos^2 g + 2 cos a cos b cos g) floor


def continuous_atomic_number(atomic_numbers: torch.Tensor) -> torch.Tensor:
    """Atomic number as GenMS's continuous row value: Z = 1..100 mapped linearly onto [-1, 1]."""
    return (atomic_numbers.float() - 1.0) / (MAX_ATOMIC_NUMBER - 1.0) * 2.0 - 1.0


def wrap(frac_coords: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates wrapped into [0, 1) (guards the float rounding of ``x % 1 == 1``)."""
    wrapped = torch.remainder(frac_coords, 1.0)
    return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped)


def atom_mask(n_atoms: torch.Tensor, max_atoms: int = MAX_ATOMS) -> torch.Tensor:
    """Boolean mask [B, max_atoms], True for the first ``n_atoms[b]`` rows of each crystal."""
    return torch.arange(max_atoms, device=n_atoms.device)[None, :] < n_atoms[:, None]


def _raw_lattice_features(lengths_angles: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """[B, 6]: log(length / n_atoms^(1/3)) for a, b, c and logit of the scaled angles."""
    lengths, angles = lengths_angles[:, :3], lengths_angles[:, 3:]
    scaled_lengths = torch.log(lengths / n_atoms.float().unsqueeze(-1) ** (1.0 / 3.0))
    unit = ((angles - ANGLE_LOW) / (ANGLE_HIGH - ANGLE_LOW)).clamp(1e-4, 1 - 1e-4)
    return torch.cat([scaled_lengths, torch.logit(unit)], dim=-1)


def _lattice_from_raw_features(features: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_raw_lattice_features`: [B, 6] lengths (Å) and angles (degrees)."""
    lengths = torch.exp(features[:, :3]) * n_atoms.float().unsqueeze(-1) ** (1.0 / 3.0)
    angles = ANGLE_LOW + (ANGLE_HIGH - ANGLE_LOW) * torch.sigmoid(features[:, 3:])
    return torch.cat([lengths, angles], dim=-1)


@dataclass
class LatticeNormaliser:
    """Maps lattice lengths (Å) and angles (degrees) to standardised 6-vectors and back.

    ``mean`` and ``std`` are the per-component statistics of the raw features on the training
    set (see :meth:`fit`); they are stored in the model's config so sampling reproduces them.
    """

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, lengths_angles: torch.Tensor, n_atoms: torch.Tensor) -> LatticeNormaliser:
        """Statistics of the raw features of a training set ([N, 6] lattices, [N] atom counts)."""
        raw = _raw_lattice_features(lengths_angles.double(), n_atoms)
        return cls(raw.mean(0).tolist(), raw.std(0).clamp_min(1e-3).tolist())

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        return mean, std

    def encode(self, lengths_angles: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """[B, 6] lengths (Å) and angles (degrees) -> [B, 6] standardised features."""
        mean, std = self._stats(lengths_angles)
        return (_raw_lattice_features(lengths_angles, n_atoms) - mean) / std

    def decode(self, features: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """[B, 6] standardised features -> [B, 6] lengths (Å) and angles (degrees)."""
        mean, std = self._stats(features)
        return _lattice_from_raw_features(features * std + mean, n_atoms)


def cell_volume_factor(angles_degrees: torch.Tensor) -> torch.Tensor:
    """Volume of a cell with unit lengths and these angles ([..., 3] degrees); NaN-free, may be <= 0."""
    cosines = torch.cos(torch.deg2rad(angles_degrees))
    ca, cb, cg = cosines.unbind(-1)
    squared = 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg
    return torch.sqrt(squared.clamp_min(0.0)) * torch.sign(squared)


def repair_angles(lengths_angles: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Pull angles of cells that are (nearly) impossible towards 90 degrees until they form a cell.

    A generated set of angles can violate the triangle inequalities of the unit sphere (the
    volume factor of :func:`cell_volume_factor` falls to zero); such cells are moved along the
    straight line to (90, 90, 90) in ``steps`` increments until the factor exceeds
    :data:`MIN_CELL_VOLUME_FACTOR`. Valid cells are returned unchanged.
    """
    lengths, angles = lengths_angles[:, :3], lengths_angles[:, 3:].clone()
    for step in range(steps + 1):
        bad = cell_volume_factor(angles) < MIN_CELL_VOLUME_FACTOR
        if not bool(bad.any()):
            break
        weight = (step + 1) / steps
        angles[bad] = angles[bad] + weight * (90.0 - angles[bad])
    return torch.cat([lengths, angles], dim=-1)


def lattice_matrix(lengths_angles: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] row-vector lattice matrices (Å) in pymatgen's ``Lattice.from_parameters`` orientation.

    ``c`` lies along z, ``a`` in the x-z plane, exactly as pymatgen builds it, so fractional
    coordinates and these matrices give the same Cartesian positions as pymatgen.
    """
    a, b, c = lengths_angles[:, 0], lengths_angles[:, 1], lengths_angles[:, 2]
    alpha, beta, gamma = (torch.deg2rad(lengths_angles[:, i]) for i in (3, 4, 5))
    val = (torch.cos(alpha) * torch.cos(beta) - torch.cos(gamma)) / (torch.sin(alpha) * torch.sin(beta))
    gamma_star = torch.arccos(val.clamp(-1.0, 1.0))
    zeros = torch.zeros_like(a)
    vector_a = torch.stack([a * torch.sin(beta), zeros, a * torch.cos(beta)], dim=-1)
    vector_b = torch.stack(
        [-b * torch.sin(alpha) * torch.cos(gamma_star), b * torch.sin(alpha) * torch.sin(gamma_star), b * torch.cos(alpha)],
        dim=-1,
    )
    vector_c = torch.stack([zeros, zeros, c], dim=-1)
    return torch.stack([vector_a, vector_b, vector_c], dim=1)


def fourier_features(frac_coords: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[..., 3] fractional coordinates -> [..., 6 * frequencies]: sin and cos of 2 pi k x, k = 1..K.

    Periodic in each coordinate with period 1, so the features do not see where the cell was cut.
    """
    k = torch.arange(1, frequencies + 1, device=frac_coords.device, dtype=frac_coords.dtype)
    angles = 2.0 * math.pi * frac_coords.unsqueeze(-1) * k  # [..., 3, K]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
