"""GenMS low-level policy pi_lo: a diffusion model that samples crystal structures for a formula.

Modules (torch-only unless noted): ``representation`` (rows, lattice normalisation),
``network`` (MLP + self-attention U-Net of GenMS Figure 2), ``diffusion`` (noise schedules,
training loss, samplers), ``train`` and ``sample_tensors`` (GPU command lines), ``crystal``
(pymatgen conversions), ``data`` (CPU preprocessing with pymatgen), ``sampler`` (the
user-facing :class:`~generators.diffusion.sampler.DiffusionSampler`).
Nothing is imported or loaded at package import time.
"""
