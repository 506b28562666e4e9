"""The compact tensor files that carry preprocessed crystals to the GPU machine (torch only).

One file per split, ``<split>.pt``, a ``torch.save``d dict:

- ``frac_coords`` float32 [N, 20, 3], fractional coordinates in [0, 1) (padded rows 0)
- ``atomic_numbers`` uint8 [N, 20] (0 = padding)
- ``mask`` bool [N, 20], True on real atoms
- ``lattice`` float32 [N, 6], lengths a, b, c (Å) and angles alpha, beta, gamma (degrees)
- ``n_atoms`` int16 [N]
- ``material_ids`` list[str] and ``formulas`` list[str] (the cell's formula, e.g. ``Li4O2``)

Splits: ``train``, ``val`` and ``test`` (MP-20) and ``extra`` (2018 MP snapshot structures of
<= 20 sites whose ids are in no MP-20 split).
"""

from __future__ import annotations

from pathlib import Path

import torch

from generators.diffusion.diffusion import CrystalBatch

SPLITS = ("train", "val", "test", "extra")


def split_path(data_dir: str | Path, split: str) -> Path:
    """Path of one split's tensor file in a data directory (raises ValueError for unknown splits)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return Path(data_dir) / f"{split}.pt"


def load_split(data_dir: str | Path, split: str) -> dict:
    """The dict of one split's tensor file (see the module docstring)."""
    path = split_path(data_dir, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: build it with `python -m generators.diffusion.data build --out {data_dir}`")
    return torch.load(path, map_location="cpu", weights_only=True)


def as_batch(split: dict, device: torch.device | str = "cpu", index: torch.Tensor | None = None) -> CrystalBatch:
    """A split (or the rows ``index`` of it) as a float32/int64 :class:`CrystalBatch` on ``device``."""
    pick = (lambda t: t) if index is None else (lambda t: t[index])
    return CrystalBatch(
        frac_coords=pick(split["frac_coords"]).float().to(device),
        atomic_numbers=pick(split["atomic_numbers"]).long().to(device),
        lattice=pick(split["lattice"]).float().to(device),
        n_atoms=pick(split["n_atoms"]).long().to(device),
    )


def concatenate(splits: list[dict]) -> dict:
    """Several split dicts as one (tensors concatenated along rows, lists joined)."""
    merged = {}
    for key, value in splits[0].items():
        if isinstance(value, torch.Tensor):
            merged[key] = torch.cat([s[key] for s in splits], dim=0)
        else:
            merged[key] = [item for s in splits for item in s[key]]
    return merged


SAMPLES_FORMAT = "genms-diffusion-samples/1"


def pack_samples(split: dict, coords: list[list[torch.Tensor]], lattices: torch.Tensor, info: dict) -> dict:
    """The dict of a samples file: K samples for each of the M crystals of ``split``.

    ``coords[k][m]`` is [n_m, 3] fractional coordinates of sample k of crystal m, ``lattices``
    [K, M, 6] lengths (Å) and angles (degrees). Atoms are stored packed (no padding):
    ``frac_coords`` [K, total_atoms, 3] float32 and ``atomic_numbers`` [total_atoms] uint8, in
    the order of the crystals, each ``n_atoms[m]`` long.
    """
    n_atoms = split["n_atoms"].long()
    mask = split["mask"]
    return {
        "format": SAMPLES_FORMAT,
        "material_ids": list(split["material_ids"]),
        "n_atoms": n_atoms.to(torch.int16),
        "atomic_numbers": split["atomic_numbers"][mask].to(torch.uint8),
        "frac_coords": torch.stack([torch.cat(sample, dim=0) for sample in coords]).float().cpu(),
        "lattice": lattices.float().cpu(),
        "info": info,
    }


def unpack_samples(samples: dict) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """``result[k][m] = (frac_coords [n,3], atomic_numbers [n], lattice [6])`` from a samples file dict."""
    if samples.get("format") != SAMPLES_FORMAT:
        raise ValueError(f"not a genms diffusion samples file (format {samples.get('format')!r})")
    sizes = samples["n_atoms"].long().tolist()
    numbers = samples["atomic_numbers"].long().split(sizes)
    result = []
    for k in range(samples["frac_coords"].shape[0]):
        coords = samples["frac_coords"][k].split(sizes)
        result.append([(coords[m], numbers[m], samples["lattice"][k, m]) for m in range(len(sizes))])
    return result
