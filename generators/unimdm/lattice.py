"""The lattice as DiffCSP++'s 6-vector k in the symmetric-matrix log basis (torch only).

A lattice with metric tensor ``G`` (Gram matrix of the row lattice vectors) is represented by
the symmetric positive-definite matrix ``S = G^(1/2)`` (a lattice with the same lengths and
angles, so the same crystal up to a rotation: the polar decomposition of DiffCSP++) and
``log S = sum_i k_i B_i`` in the basis

    B1 = xy + yx, B2 = xz + zx, B3 = yz + zy, B4 = xx - yy, B5 = xx + yy - 2 zz, B6 = I.

``det S = exp(3 k6)``, so ``k6 = log(V) / 3``. Each crystal family fixes some components (the
conventional cell of its space group, R groups in the hexagonal setting):

| family | free | fixed |
|---|---|---|
| triclinic (1-2) | k1..k6 | |
| monoclinic (3-15, unique axis b) | k2, k4, k5, k6 | k1 = k3 = 0 |
| orthorhombic (16-74) | k4, k5, k6 | k1 = k2 = k3 = 0 |
| tetragonal (75-142) | k5, k6 | k1..k4 = 0 |
| hexagonal and trigonal (143-194) | k5, k6 | k1 = -log(3)/4 (gamma = 120), k2 = k3 = k4 = 0 |
| cubic (195-230) | k6 | k1..k5 = 0 |

The diffusion works on standardised free components (:class:`KNormaliser`): ``k6`` minus
``log(n_atoms)/3`` (log volume per atom / 3), each free component centred and scaled by its
training statistics, fixed components 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

FAMILIES = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "hexagonal", "cubic")
_FREE = {
    "triclinic": (1, 1, 1, 1, 1, 1),
    "monoclinic": (0, 1, 0, 1, 1, 1),
    "orthorhombic": (0, 0, 0, 1, 1, 1),
    "tetragonal": (0, 0, 0, 0, 1, 1),
    "hexagonal": (0, 0, 0, 0, 1, 1),
    "cubic": (0, 0, 0, 0, 0, 1),
}
HEXAGONAL_K1 = -math.log(3.0) / 4.0


def family(space_group: int) -> str:
    """Crystal family of a space group number (trigonal groups count as hexagonal)."""
    sg = int(space_group)
    if not 1 <= sg <= 230:
        raise ValueError(f"space group number must be 1..230, got {sg}")
    for name, last in zip(FAMILIES, (2, 15, 74, 142, 194, 230)):
        if sg <= last:
            return name
    raise AssertionError(sg)


def free_mask_table() -> torch.Tensor:
    """[231, 6] bool: row g says which k components space group g leaves free (row 0 unused, all free)."""
    rows = [_FREE["triclinic"]] + [_FREE[family(g)] for g in range(1, 231)]
    return torch.tensor(rows, dtype=torch.bool)


def fixed_value_table() -> torch.Tensor:
    """[231, 6] float: values of the fixed k components (0 except k1 of hexagonal groups)."""
    table = torch.zeros(231, 6)
    for g in range(143, 195):
        table[g, 0] = HEXAGONAL_K1
    return table


_BASES: dict = {}


def basis(dtype=torch.float64, device=None) -> torch.Tensor:
    """[6, 3, 3] the symmetric basis B1..B6 (made once per dtype and device; do not modify it)."""
    key = (dtype, str(torch.device(device or "cpu")))
    if key not in _BASES:
        _BASES[key] = _make_basis(dtype, device)
    return _BASES[key]


def _make_basis(dtype, device) -> torch.Tensor:
    b = torch.zeros(6, 3, 3, dtype=dtype, device=device)
    b[0, 0, 1] = b[0, 1, 0] = 1
    b[1, 0, 2] = b[1, 2, 0] = 1
    b[2, 1, 2] = b[2, 2, 1] = 1
    b[3, 0, 0], b[3, 1, 1] = 1, -1
    b[4, 0, 0], b[4, 1, 1], b[4, 2, 2] = 1, 1, -2
    b[5] = torch.eye(3, dtype=dtype, device=device)
    return b


def metric_from_parameters(lengths_angles: torch.Tensor) -> torch.Tensor:
    """[B, 6] lengths (Å) and angles (degrees) -> [B, 3, 3] metric tensors."""
    lengths = lengths_angles[:, :3]
    cosines = torch.cos(torch.deg2rad(lengths_angles[:, 3:]))
    a, b, c = lengths.unbind(-1)
    ca, cb, cg = cosines.unbind(-1)
    g = torch.stack(
        [
            torch.stack([a * a, a * b * cg, a * c * cb], -1),
            torch.stack([a * b * cg, b * b, b * c * ca], -1),
            torch.stack([a * c * cb, b * c * ca, c * c], -1),
        ],
        dim=-2,
    )
    return g


def k_from_parameters(lengths_angles: torch.Tensor) -> torch.Tensor:
    """[B, 6] lattice parameters -> [B, 6] k with ``log S = 0.5 log G = sum k_i B_i`` (float64 inside)."""
    g = metric_from_parameters(lengths_angles.double())
    values, vectors = torch.linalg.eigh(g)
    log_s = vectors @ torch.diag_embed(0.5 * torch.log(values.clamp_min(1e-12))) @ vectors.transpose(-1, -2)
    k6 = torch.diagonal(log_s, dim1=-2, dim2=-1).sum(-1) / 3
    d = torch.diagonal(log_s, dim1=-2, dim2=-1) - k6[:, None]
    k = torch.stack([log_s[:, 0, 1], log_s[:, 0, 2], log_s[:, 1, 2], (d[:, 0] - d[:, 1]) / 2, -d[:, 2] / 2, k6], dim=-1)
    return k.to(lengths_angles.dtype)


def matrix_from_k(k: torch.Tensor) -> torch.Tensor:
    """[B, 6] k -> [B, 3, 3] the symmetric lattice matrix S = exp(sum k_i B_i) (rows: lattice vectors)."""
    log_s = torch.einsum("bi,ijk->bjk", k.double(), basis(device=k.device))
    return torch.linalg.matrix_exp(log_s).to(k.dtype)


def matrix_from_k_fixed_steps(k: torch.Tensor, squarings: int = 6, degree: int = 10) -> torch.Tensor:
    """:func:`matrix_from_k` by a Taylor polynomial of fixed degree after a fixed scaling and
    squaring (float64): the same matrix to ~1e-12 while the entries of log S stay below ~8 (the
    network's noisy lattices are clipped at 5 standard deviations), with no step whose count
    depends on the values, so a CUDA graph can record it (``torch.linalg.matrix_exp`` picks its
    number of squarings from the matrix norm)."""
    log_s = torch.einsum("bi,ijk->bjk", k.double(), basis(device=k.device)) / 2.0**squarings
    term = torch.eye(3, dtype=torch.float64, device=k.device).expand_as(log_s)
    total = term
    for power in range(1, degree + 1):
        term = term @ log_s / power
        total = total + term
    for _ in range(squarings):
        total = total @ total
    return total.to(k.dtype)


def parameters_from_k(k: torch.Tensor) -> torch.Tensor:
    """[B, 6] k -> [B, 6] lengths (Å) and angles (degrees)."""
    s = matrix_from_k(k.double())
    g = s @ s.transpose(-1, -2)
    lengths = torch.sqrt(torch.diagonal(g, dim1=-2, dim2=-1))

    def angle(i, j):
        return torch.rad2deg(torch.arccos((g[:, i, j] / (lengths[:, i] * lengths[:, j])).clamp(-1, 1)))

    return torch.cat([lengths, torch.stack([angle(1, 2), angle(0, 2), angle(0, 1)], -1)], -1).to(k.dtype)


@dataclass
class KNormaliser:
    """Standardises the free k components: k6 per atom (minus log(n)/3), then (k - mean) / std."""

    mean: list[float]
    std: list[float]
    _device_stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, k: torch.Tensor, n_atoms: torch.Tensor, free: torch.Tensor) -> KNormaliser:
        """Statistics over the crystals where each component is free ([N, 6] k, [N] atoms, [N, 6] bool)."""
        raw = _per_atom(k.double(), n_atoms)
        weights = free.double()
        count = weights.sum(0).clamp_min(1.0)
        mean = (raw * weights).sum(0) / count
        var = (((raw - mean) ** 2) * weights).sum(0) / count
        return cls(mean.tolist(), var.sqrt().clamp_min(0.02).tolist())

    def _stats(self, like: torch.Tensor):
        """(mean, std) as tensors like ``like``, made once per device and dtype: a copy from the host
        at every step would stall the GPU (and cannot be recorded in a CUDA graph)."""
        key = (like.device, like.dtype)
        if key not in self._device_stats:
            self._device_stats[key] = (torch.tensor(self.mean, dtype=like.dtype, device=like.device),
                                       torch.tensor(self.std, dtype=like.dtype, device=like.device))
        return self._device_stats[key]

    def encode(self, k: torch.Tensor, n_atoms: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(k)
        return (_per_atom(k, n_atoms) - mean) / std * free.to(k.dtype)

    def decode(self, z: torch.Tensor, n_atoms: torch.Tensor, free: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Standardised vector -> k, fixed components taken from ``fixed`` ([B, 6])."""
        mean, std = self._stats(z)
        raw = z * std + mean
        raw = raw.clone()
        raw[:, 5] = raw[:, 5] + torch.log(n_atoms.to(z.dtype)) / 3
        return torch.where(free, raw, fixed.to(z.dtype))


def _per_atom(k: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    out = k.clone()
    out[:, 5] = out[:, 5] - torch.log(n_atoms.to(k.dtype)) / 3
    return out
