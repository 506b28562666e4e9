"""Uni-MDM: symmetry prediction (space group + Wyckoff letters from a composition and a target
property) and a space-group-constrained Crystal DiT (DiffCSP++-style) with the property fused
by attention.

Modules: ``symmetry`` and ``data`` (CPU, pymatgen/pyxtal: Wyckoff extraction and the tensor
files), ``lattice``, ``tensor_files``, ``network``, ``diffusion``, ``checkpoint``, ``train``,
``sample_tensors`` (torch only: they run on the GPU machine), ``predictor`` (the symmetry
predictor), ``sampler`` (user-facing). Nothing is imported or loaded at package import time.
"""
