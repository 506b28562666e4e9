"""Uni-MDM's symmetry tensor files and padded batches (torch only; runs on the GPU machine).

One file per split, ``<split>.pt`` (written by :mod:`generators.unimdm.data`), crystals packed
without padding:

- per crystal [M]: ``space_group`` int16, ``lattice`` float32 [M, 6] (conventional cell,
  Å and degrees), ``k`` float32 [M, 6] (:mod:`generators.unimdm.lattice`), ``n_atoms``,
  ``n_orbits`` int16, ``band_gap``, ``formation_energy`` float32 (NaN: unknown),
  ``material_ids``, ``formulas`` (lists)
- per Wyckoff orbit [R] (in crystal order): ``orbit_z`` uint8, ``orbit_letter`` int8 (index
  in :data:`generators.unimdm.symmetry.LETTERS`), ``orbit_multiplicity`` int16,
  ``orbit_coords`` float32 [R, 3] (representative; constrained components 0), ``orbit_free``
  bool [R, 3]
- per atom [A] (orbit by orbit): ``atom_ops`` int8 [A, 12], 9 rotation entries and 24 x translation
- ``polar_axes`` bool [231, 3]: axes of continuous origin shifts of each space group

:func:`collate` turns rows of a split into a padded :class:`SymmetryBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

SPLITS = ("train", "val", "test")
TRANSLATION_GRID = 24.0


def split_path(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}.pt"


def load_split(data_dir: str | Path, name: str) -> dict:
    path = split_path(data_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: build it with `python -m generators.unimdm.data build --out {data_dir}`")
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class SymmetryBatch:
    """Padded crystals: B crystals, at most N atoms and R orbits each.

    Per crystal: ``space_group`` [B], ``n_atoms`` [B], ``k`` [B, 6], ``band_gap`` and
    ``formation_energy`` [B] (NaN unknown). Per orbit: ``orbit_z`` [B, R] (0 = padding),
    ``orbit_coords`` [B, R, 3], ``orbit_free`` [B, R, 3] bool, ``orbit_mask`` [B, R]. Per atom:
    ``rotations`` [B, N, 3, 3], ``rotation_pinv`` [B, N, 3, 3], ``translations`` [B, N, 3],
    ``anchor`` [B, N] (orbit index), ``atom_mask`` [B, N], ``atom_z`` [B, N],
    ``atom_multiplicity`` [B, N] and ``atom_free`` [B, N, 3] (of its orbit).
    """

    space_group: torch.Tensor
    n_atoms: torch.Tensor
    k: torch.Tensor
    band_gap: torch.Tensor
    formation_energy: torch.Tensor
    orbit_z: torch.Tensor
    orbit_coords: torch.Tensor
    orbit_free: torch.Tensor
    orbit_mask: torch.Tensor
    rotations: torch.Tensor
    rotation_pinv: torch.Tensor
    translations: torch.Tensor
    anchor: torch.Tensor
    atom_mask: torch.Tensor
    atom_z: torch.Tensor
    atom_multiplicity: torch.Tensor
    atom_free: torch.Tensor

    def to(self, device) -> SymmetryBatch:
        return SymmetryBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: torch.Tensor) -> SymmetryBatch:
        return SymmetryBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def trim(self, atoms: int | None = None, orbits: int | None = None) -> SymmetryBatch:
        """Cut the padding to this batch's largest crystal, or to ``atoms`` / ``orbits`` columns
        (given both, no value is read back from the device)."""
        n = atoms or (int(self.atom_mask.sum(1).max()) if self.atom_mask.numel() else 1)
        r = orbits or (int(self.orbit_mask.sum(1).max()) if self.orbit_mask.numel() else 1)
        values = {}
        for f in fields(self):
            tensor = getattr(self, f.name)
            if f.name.startswith("orbit_"):
                tensor = tensor[:, :r]
            elif f.name in ("rotations", "rotation_pinv", "translations", "anchor", "atom_mask", "atom_z",
                            "atom_multiplicity", "atom_free"):
                tensor = tensor[:, :n]
            values[f.name] = tensor
        return SymmetryBatch(**values)

    @property
    def size(self) -> int:
        return int(self.space_group.shape[0])

    def expand(self, orbit_coords: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] atom coordinates ``R u_anchor + t`` in [0, 1) from [B, R, 3] representatives."""
        anchored = torch.gather(orbit_coords, 1, self.anchor.unsqueeze(-1).expand(-1, -1, 3))
        coords = torch.einsum("bnij,bnj->bni", self.rotations, anchored) + self.translations
        coords = torch.remainder(coords, 1.0)
        coords = torch.where(coords >= 1.0, torch.zeros_like(coords), coords)
        return coords * self.atom_mask.unsqueeze(-1)

    def project(self, atom_vectors: torch.Tensor) -> torch.Tensor:
        """[B, R, 3] orbit mean of ``pinv(R) v`` over each orbit's atoms, on the free components only."""
        pulled = torch.einsum("bnij,bnj->bni", self.rotation_pinv, atom_vectors) * self.atom_mask.unsqueeze(-1)
        summed = torch.zeros(self.orbit_coords.shape, dtype=pulled.dtype, device=pulled.device)
        summed.scatter_add_(1, self.anchor.unsqueeze(-1).expand(-1, -1, 3), pulled)
        counts = torch.zeros(self.orbit_mask.shape, dtype=pulled.dtype, device=pulled.device)
        counts.scatter_add_(1, self.anchor, self.atom_mask.to(pulled.dtype))
        return summed / counts.clamp_min(1.0).unsqueeze(-1) * self.orbit_free.to(pulled.dtype)


class SplitIndex:
    """Offsets of each crystal's orbits and atoms in a packed split (for :func:`collate`)."""

    def __init__(self, split: dict):
        self.split = split
        n_orbits = split["n_orbits"].long()
        self.orbit_start = torch.cat([torch.zeros(1, dtype=torch.long), n_orbits.cumsum(0)])
        multiplicity = split["orbit_multiplicity"].long()
        self.orbit_atom_start = torch.cat([torch.zeros(1, dtype=torch.long), multiplicity.cumsum(0)])
        self.rows = len(n_orbits)

    def __len__(self) -> int:
        return self.rows


def collate(index: SplitIndex, rows: list[int] | torch.Tensor, max_atoms: int | None = None,
            max_orbits: int | None = None) -> SymmetryBatch:
    """A padded :class:`SymmetryBatch` of the given rows (on the CPU)."""
    split = index.split
    rows = [int(r) for r in rows]
    n_atoms = split["n_atoms"][rows].long()
    n_orbits = split["n_orbits"][rows].long()
    b = len(rows)
    n = max_atoms or max(1, int(n_atoms.max()))
    r = max_orbits or max(1, int(n_orbits.max()))
    orbit_z = torch.zeros(b, r, dtype=torch.long)
    orbit_coords = torch.zeros(b, r, 3)
    orbit_free = torch.zeros(b, r, 3, dtype=torch.bool)
    ops = torch.zeros(b, n, 12)
    anchor = torch.zeros(b, n, dtype=torch.long)
    atom_multiplicity = torch.zeros(b, n)
    for i, row in enumerate(rows):
        o0, o1 = int(index.orbit_start[row]), int(index.orbit_start[row + 1])
        a0, a1 = int(index.orbit_atom_start[o0]), int(index.orbit_atom_start[o1])
        count = o1 - o0
        orbit_z[i, :count] = split["orbit_z"][o0:o1].long()
        orbit_coords[i, :count] = split["orbit_coords"][o0:o1]
        orbit_free[i, :count] = split["orbit_free"][o0:o1]
        ops[i, : a1 - a0] = split["atom_ops"][a0:a1].float()
        multiplicity = split["orbit_multiplicity"][o0:o1].long()
        anchor[i, : a1 - a0] = torch.repeat_interleave(torch.arange(count), multiplicity)
        atom_multiplicity[i, : a1 - a0] = torch.repeat_interleave(multiplicity, multiplicity).float()
    atom_mask = torch.arange(n)[None, :] < n_atoms[:, None]
    orbit_mask = torch.arange(r)[None, :] < n_orbits[:, None]
    rotations = ops[..., :9].reshape(b, n, 3, 3)
    translations = ops[..., 9:] / TRANSLATION_GRID
    pinv = torch.linalg.pinv(rotations.double()).float() * atom_mask[..., None, None]
    gather = lambda t: torch.gather(t, 1, anchor.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
    return SymmetryBatch(
        space_group=split["space_group"][rows].long(),
        n_atoms=n_atoms,
        k=split["k"][rows].float(),
        band_gap=split["band_gap"][rows].float(),
        formation_energy=split["formation_energy"][rows].float(),
        orbit_z=orbit_z,
        orbit_coords=orbit_coords,
        orbit_free=orbit_free,
        orbit_mask=orbit_mask,
        rotations=rotations,
        rotation_pinv=pinv,
        translations=translations,
        anchor=anchor,
        atom_mask=atom_mask,
        atom_z=gather(orbit_z.unsqueeze(-1)).squeeze(-1) * atom_mask,
        atom_multiplicity=atom_multiplicity,
        atom_free=gather(orbit_free.float()) * atom_mask.unsqueeze(-1),
    )


def collate_all(split: dict) -> SymmetryBatch:
    """The whole split as one padded batch (the GPU keeps it resident and indexes rows)."""
    index = SplitIndex(split)
    return collate(index, list(range(len(index))))


def concatenate(parts: list[dict]) -> dict:
    """Packed splits joined in order (per-crystal, per-orbit and per-atom rows appended)."""
    merged = {}
    for key, value in parts[0].items():
        if key in ("format", "polar_axes"):
            merged[key] = value
        elif isinstance(value, torch.Tensor):
            merged[key] = torch.cat([p[key] for p in parts], dim=0)
        else:
            merged[key] = [item for p in parts for item in p[key]]
    return merged


def take_rows(split: dict, rows: list[int]) -> dict:
    """A packed split of the given crystal rows (same format)."""
    index = SplitIndex(split)
    orbit_rows = torch.cat([torch.arange(int(index.orbit_start[r]), int(index.orbit_start[r + 1])) for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
    atom_rows = torch.cat([torch.arange(int(index.orbit_atom_start[o]), int(index.orbit_atom_start[o + 1])) for o in orbit_rows.tolist()]) if len(orbit_rows) else torch.zeros(0, dtype=torch.long)
    crystal = torch.tensor(rows, dtype=torch.long)
    out = {}
    for key, value in split.items():
        if key == "polar_axes" or not isinstance(value, (torch.Tensor, list)):
            out[key] = value
        elif key.startswith("orbit_"):
            out[key] = value[orbit_rows]
        elif key == "atom_ops":
            out[key] = value[atom_rows]
        elif isinstance(value, list):
            out[key] = [value[r] for r in rows]
        else:
            out[key] = value[crystal]
    return out
