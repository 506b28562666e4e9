"""Crystal DiT of Uni-MDM: transformer blocks over atom tokens with the property fused by attention (torch only).

Tokens: one per atom of the conventional cell plus one lattice token. An atom token sees its
element (learned embedding), its Wyckoff operation (the 3 x 4 affine map from its orbit's
representative: rotation entries and sin/cos of the translation), its orbit's free components
and multiplicity, and Fourier features of its noisy fractional coordinates. The lattice
token sees the noisy standardised k vector and the space group's free-component mask.

With ``metric_features`` > 0 the pair features of the attention also hold Gaussian features of
each pair's periodic distance in Å (nearest of the 27 neighbouring images, in the lattice
decoded from the noisy k vector): fractional offsets alone say little about distances in
a skewed monoclinic or triclinic cell, where the model misses most.

With ``edge_features`` > 0 the pair features are instead an edge embedding in the manner of
DiffCSP++'s CSPNet (whose edge features Uni-MDM's DiT follows): an MLP, shared by the blocks, of
the Fourier features of the fractional offset, the lattice's shape (lengths and angles of the
cell scaled to the volume per atom) and Gaussians of the pair's distance in those units (the
shortest of 8 images: a third of the 27-image search's cost, exact but for very skewed cells). The linear pair
features alone are one separable function of the three fractional offsets for every lattice, so
the attention cannot tell near from far atoms in a monoclinic or triclinic cell. Trained from
scratch for ~851 epochs (session 12) it matched 76.0% of MP-20 test against run 4's 77.2% (~979
epochs, twice the optimizer steps); resumed on 27,136 crystals (session 13) 77.9% against the
base network's 78.0% the same way: no gain that shows; off in the committed weights.

With ``message_layers`` = M > 0 the first M blocks are each preceded by a message-passing layer of
DiffCSP's CSPNet over the atoms (Uni-MDM's DiT is DiffCSP++'s network with transformer blocks
added): every pair's message is an MLP of both atoms' states and the pair's edge inputs (as
above), the messages are averaged over the cell and an MLP updates each atom from its state and
that mean. Unlike attention, whose pair features only add a bias, the message is a joint
nonlinear function of both atoms and their geometry.

With ``self_conditioning`` (Chen et al. 2023, "Analog bits"; as protein backbone diffusion uses it)
the network also sees an estimate of the clean crystal: each atom its estimated clean coordinates
(Fourier features and the wrapped offset from its noisy ones), the lattice token the estimated
clean k vector, both through zero-initialised linear maps (absent: zeros and a 0 flag). Training
gives half the crystals the estimate of a first, gradient-free pass; sampling gives every call the
previous call's estimate, meant to keep the trajectory on the structure it has begun to form
(the misses are mostly structures the model samples only sometimes). Grown into run 10 and
fine-tuned ~418 epochs (session 18) it matched 79.8% / 79.7% of MP-20 test (two seeds) against
79.5%, within the noise; off in the committed weights.

With ``polar_invariant`` the atoms' absolute coordinate features ignore the components along
the space group's polar axes, where the origin is free (all three in P1, the c axis in P6_3mc):
the network is then exactly invariant to those shifts, as the crystal is, instead of learning
it from the training's random origin shifts. Polar groups are where run 4 lags its own crystal
family most (test, match rate of the valid: P1 10% against P-1 40%; polar hexagonal and
trigonal 72% against 95%). A fine-tuning of run 4 with it did not close the gap (README); off in
the committed weights.

Each block (DiT, adaLN-single as PixArt-alpha: one modulation MLP shared by the blocks plus a
learned per-block offset; zero-initialised gates) is

1. geometric multi-head self-attention over the crystal's tokens
   (:class:`generators.diffusion.network.SelfAttention`: logits and values see periodic
   features of the fractional offsets between atoms);
2. the crystal multi-head attention of Uni-MDM: the tokens (queries) attend to the property
   tokens (keys/values): one token per property (band gap, formation energy), its value
   embedded by an MLP, or a learned null embedding when the property is unknown or dropped
   (classifier-free guidance), plus an always-present register token;
3. a per-token MLP.

The global condition (diffusion time, space group embedding, number of atoms) drives the
modulation. Outputs: per atom the normalised wrapped-normal score (3 numbers, projected onto
the orbit representatives by the diffusion), and the noise of the lattice's k vector (6).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generators.diffusion.network import OutputHead, SelfAttention, modulate, sinusoidal_embedding
from generators.diffusion.representation import MAX_ATOMIC_NUMBER, fourier_features

PROPERTIES = ("band_gap", "formation_energy")
PROPERTY_SCALE = {"band_gap": 3.0, "formation_energy": 2.0}  # eV, eV/atom: values divided by these
MAX_CELL_ATOMS = 160  # embedding size of the atom count


@dataclass
class DiTConfig:
    width: int = 224
    depth: int = 7
    head_dim: int = 32
    mlp_ratio: float = 2.5
    element_dim: int = 64
    time_dim: int = 128
    fourier_frequencies: int = 8
    pair_frequencies: int = 6
    metric_features: int = 0  # Gaussian features of pair distances (0: fractional offsets only, as the first runs)
    dropout: float = 0.0  # residual dropout on each branch of a block (training only; regularises MP-20's 21k crystals)
    polar_invariant: bool = False  # absolute coordinate features blind along the space group's polar axes
    edge_features: int = 0  # width of the CSPNet-style edge embedding (0: linear pair features, as runs 1-4)
    message_layers: int = 0  # blocks preceded by a CSPNet message-passing layer (0: none, as runs 1-4)
    message_width: int = 128  # width of those layers' messages
    self_conditioning: bool = False  # the network also sees its own previous estimate of the clean crystal

    @property
    def pair_dim(self) -> int:
        """Pair features each attention block sees."""
        return self.edge_features or 6 * self.pair_frequencies + self.metric_features

    @property
    def uses_lattice_matrix(self) -> bool:
        """Whether the network's forward needs the (noisy) lattice matrix."""
        return bool(self.metric_features or self.edge_features or self.message_layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DiTConfig:
        return cls(**values)


DIT_PRESETS = {
    # about 5.5 M parameters, 11 MB as float16: the GPU model
    "base": {},
    # about 8.4 M parameters, 16.9 MB as float16 (under the 20 MB a weights file may take): more
    # capacity for the low-symmetry crystals, where most coordinates are free
    "large": {"width": 256, "depth": 8},
    # run 4's network with the CSPNet-style edge embedding (about 5.9 M parameters)
    "edges": {"edge_features": 64},
    # run 4's network with a CSPNet message-passing layer before each of its first 4 blocks (about
    # 6.7 M parameters, 13.4 MB). Memory: the messages are [B, N, N, 128] per layer; at batch 1024
    # a batch of 80-atom cells saves ~40 GB for the backward pass (7 layers: ~60 GB)
    "csp": {"message_layers": 4},
    # DiffCSP++'s 6 message-passing layers, at 448 (its 512 would take 20.5 MB), one before each of
    # the first 6 blocks: about 9.6 M parameters, 19.3 MB as float16. Memory: [B, N, N, 448]
    # messages per layer, so batch 256 (~40 GB at 80-atom cells)
    "csp_wide": {"message_layers": 6, "message_width": 448},
    # the width of DiffCSP++'s CSPNet (6 message-passing layers of 512) under 6 transformer blocks of
    # 512, as Uni-MDM's DiT stacks them: about 35.9 M parameters (72 MB as float16, 36 MB as int8,
    # over the 20 MB a weights file may take); for cost estimates (`evals.profile_unimdm_step`)
    "diffcsp_width": {"width": 512, "depth": 6, "head_dim": 64, "message_layers": 6, "message_width": 512},
    # about 0.1 M parameters: tests and CPU dry runs
    "tiny": {"width": 48, "depth": 2, "head_dim": 16, "mlp_ratio": 2.0, "element_dim": 16, "time_dim": 32,
             "fourier_frequencies": 4, "pair_frequencies": 3},
}


METRIC_CUTOFF = 6.0  # Å: the last Gaussian centre of the distance features
_DEVICE_CONSTANTS: dict = {}


def on_device(constant: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A module constant on ``device``, copied there once: a host copy at every call stalls the
    GPU and cannot be recorded in a CUDA graph (``train.py --cuda-graphs``)."""
    key = (id(constant), str(device))
    if key not in _DEVICE_CONSTANTS:
        _DEVICE_CONSTANTS[key] = constant.to(device)
    return _DEVICE_CONSTANTS[key]

_NEIGHBOUR_IMAGES = torch.tensor([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=torch.float32)


def shortest_length(images: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """[B, N, N, K, 3] fractional vectors (K images of each pair's offset) and [B, 3, 3] metric
    tensors -> [B, N, N] length of the shortest image, sqrt(v G v); elementwise in float32, so bf16
    autocast does not touch it."""
    g = metric.float()[:, None, None, None]
    x, y, z = images.float().unbind(-1)
    squared = (g[..., 0, 0] * x * x + g[..., 1, 1] * y * y + g[..., 2, 2] * z * z
               + 2 * (g[..., 0, 1] * x * y + g[..., 0, 2] * x * z + g[..., 1, 2] * y * z))
    return squared.clamp_min(0).amin(-1).sqrt()


def metric_tensor(lattice_matrix: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] lattices (rows: vectors) -> [B, 3, 3] metric tensors G = S S^T, elementwise in float32
    (a matmul would run in bf16 under autocast)."""
    rows = lattice_matrix.float()
    return (rows.unsqueeze(-2) * rows.unsqueeze(-3)).sum(-1)


def periodic_distances(offsets: torch.Tensor, lattice_matrix: torch.Tensor) -> torch.Tensor:
    """[B, N, N, 3] fractional offsets and [B, 3, 3] lattices (rows: vectors, Å) -> [B, N, N] distances (Å)
    to the nearest of the 27 images around the offset wrapped into [-0.5, 0.5)."""
    wrapped = (offsets - torch.round(offsets)).float()
    images = wrapped.unsqueeze(-2) + on_device(_NEIGHBOUR_IMAGES, offsets.device)  # [B, N, N, 27, 3]
    return shortest_length(images, metric_tensor(lattice_matrix))


def gaussian_features(values: torch.Tensor, count: int, cutoff: float) -> torch.Tensor:
    """[...] -> [..., count] Gaussians centred evenly on 0..``cutoff``, one spacing wide."""
    centres = torch.linspace(0.0, cutoff, count, device=values.device)
    spacing = cutoff / max(1, count - 1)
    return torch.exp(-(((values.unsqueeze(-1) - centres) / spacing) ** 2))


def distance_features(distances: torch.Tensor, count: int) -> torch.Tensor:
    """[...] distances (Å) -> [..., count] Gaussians centred 0..:data:`METRIC_CUTOFF` Å, one spacing wide."""
    return gaussian_features(distances, count, METRIC_CUTOFF)


EDGE_DISTANCE_BINS = 16
EDGE_DISTANCE_CUTOFF = 3.0  # in units of the cube root of the volume per atom


def symmetric_determinant(g: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] symmetric matrices -> [B] determinants, elementwise (no LU factorisation: nothing
    read back, so a CUDA graph can record it)."""
    return (g[:, 0, 0] * (g[:, 1, 1] * g[:, 2, 2] - g[:, 1, 2] ** 2)
            - g[:, 0, 1] * (g[:, 0, 1] * g[:, 2, 2] - g[:, 1, 2] * g[:, 0, 2])
            + g[:, 0, 2] * (g[:, 0, 1] * g[:, 1, 2] - g[:, 1, 1] * g[:, 0, 2]))


def lattice_shape(lattice_matrix: torch.Tensor, n_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, 3] lattices (rows, Å) -> ([B, 3, 3] metric tensor in units of (volume per atom)^(2/3),
    [B, 6] shape features: log squared lengths and cosines of the angles), in float32."""
    metric = metric_tensor(lattice_matrix)
    volume = symmetric_determinant(metric).clamp_min(1e-6).sqrt()
    scale = (volume / n_atoms.float().clamp_min(1)) ** (2.0 / 3.0)
    metric = metric / scale[:, None, None]
    lengths = metric.diagonal(dim1=-2, dim2=-1).clamp_min(1e-6)
    # basic indexing only: a tuple index is a host tensor, copied to the GPU at every call, which a
    # CUDA graph cannot record (the message layers fell back to eager in session 15)
    cosines = torch.stack([metric[:, i, j] / (lengths[:, i] * lengths[:, j]).sqrt() for i, j in ((1, 2), (0, 2), (0, 1))], dim=-1)
    return metric, torch.cat([lengths.log().clamp(-5, 5), cosines.clamp(-1, 1)], dim=-1)


_CORNER_CHOICES = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float32)


def scaled_distances(offsets: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """[B, N, N, 3] fractional offsets and [B, 3, 3] metric tensors -> [B, N, N] pair distances in the
    metric's units: the shortest of the 8 images around the offset wrapped into [-0.5, 0.5) (each
    component w or w - sign(w)), which is the nearest image but in very skewed cells and, unlike one
    image, continuous where a component crosses 0.5."""
    wrapped = (offsets - torch.round(offsets)).float()
    images = wrapped.unsqueeze(-2) - on_device(_CORNER_CHOICES, offsets.device) * torch.sign(wrapped).unsqueeze(-2)  # [B, N, N, 8, 3]
    return shortest_length(images, metric)


def edge_input_width(frequencies: int) -> int:
    """Channels of :func:`edge_inputs`."""
    return 6 * frequencies + 6 + EDGE_DISTANCE_BINS


def edge_inputs(offsets: torch.Tensor, lattice_matrix: torch.Tensor, n_atoms: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[B, N, N, 3] fractional offsets -> [B, N, N, edge_input_width(frequencies)]: Fourier
    features, the lattice's shape, Gaussians of the pair distance (volume-per-atom units)."""
    metric, shape = lattice_shape(lattice_matrix, n_atoms)
    distance = gaussian_features(scaled_distances(offsets, metric), EDGE_DISTANCE_BINS, EDGE_DISTANCE_CUTOFF)
    b, n = offsets.shape[:2]
    return torch.cat([fourier_features(offsets, frequencies), shape[:, None, None, :].expand(b, n, n, 6), distance], dim=-1)


def grow_network(state: dict, old_config: DiTConfig, new_config: DiTConfig, seed: int = 0) -> dict:
    """A state dict of ``old_config``'s network for ``new_config``'s, which may only add distance
    features (when it has none: the new pair-feature weights are zero), message layers (fresh
    layers, drawn with ``seed``, whose update starts at zero) and self-conditioning (zero maps of
    the clean estimate). The grown network computes exactly the same function, so a fine-tuning
    starts where the trained network stopped."""
    def rest(config: DiTConfig) -> dict:
        return {**config.to_dict(), "metric_features": 0, "message_layers": 0, "dropout": 0.0, "self_conditioning": False}

    added = new_config.metric_features - old_config.metric_features
    new_layers = new_config.message_layers - old_config.message_layers
    self_conditioning = new_config.self_conditioning and not old_config.self_conditioning
    if (rest(old_config) != rest(new_config) or added < 0 or new_layers < 0 or (added and old_config.metric_features)
            or (old_config.self_conditioning and not new_config.self_conditioning)):
        raise ValueError("a network can only gain distance features (when it has none), message layers and "
                         "self-conditioning, all else equal")
    grown = dict(state)
    if added:
        for name, tensor in state.items():
            if name.endswith("attention.pair_bias.weight") or name.endswith("attention.pair_value"):
                pad = torch.zeros(*tensor.shape[:1], added, *tensor.shape[2:], dtype=tensor.dtype)
                grown[name] = torch.cat([tensor, pad], dim=1)
    if new_layers or self_conditioning:
        with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
            torch.manual_seed(seed)
            fresh = CrystalDiT(new_config).state_dict()
        for name, tensor in fresh.items():
            new_message = name.startswith("messages.") and int(name.split(".")[1]) >= old_config.message_layers
            if new_message or (self_conditioning and name.startswith(("clean_atoms.", "clean_lattice."))):
                grown[name] = tensor
    return grown


def dit_config(preset: str) -> DiTConfig:
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(DIT_PRESETS)}")
    return DiTConfig(**DIT_PRESETS[preset])


class PropertyTokens(nn.Module):
    """[B, 1 + P, W]: a register token and one token per property (MLP of the value, or a null embedding)."""

    def __init__(self, width: int):
        super().__init__()
        self.register = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.kind = nn.Parameter(torch.randn(len(PROPERTIES), width) * 0.02)
        self.null = nn.Parameter(torch.randn(len(PROPERTIES), width) * 0.02)
        self.value = nn.ModuleList(
            nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width)) for _ in PROPERTIES
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` [B, P] already scaled, NaN = unknown/dropped."""
        batch = values.shape[0]
        tokens = [self.register.expand(batch, -1, -1)]
        frequencies = torch.arange(1, 9, device=values.device, dtype=torch.float32)
        for p in range(len(PROPERTIES)):
            v = values[:, p]
            known = torch.isfinite(v)
            v = torch.where(known, v, torch.zeros_like(v)).float()
            features = torch.cat([torch.sin(v[:, None] * frequencies), torch.cos(v[:, None] * frequencies)], -1)
            embedded = self.value[p](features) + self.kind[p]
            tokens.append(torch.where(known[:, None], embedded, self.null[p].expand(batch, -1)).unsqueeze(1))
        return torch.cat(tokens, dim=1)


class CrossAttention(nn.Module):
    """Multi-head attention of crystal tokens (queries) to property tokens (keys, values)."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.heads = max(1, width // head_dim)
        self.head_dim = width // self.heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, length, width = tokens.shape
        q = self.q(tokens).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, context.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        width = config.width
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in range(3))
        self.attention = SelfAttention(width, config.head_dim, config.pair_dim)
        self.cross = CrossAttention(width, config.head_dim)
        hidden = int(width * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.offset = nn.Parameter(torch.randn(9, width) * width**-0.5)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens, modulation, key_mask, pairs, context):
        m = (modulation.view(modulation.shape[0], 9, -1) + self.offset)[:, :, None, :]
        shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3 = m.unbind(1)
        tokens = tokens + gate1 * self.dropout(self.attention(modulate(self.norms[0](tokens), shift1, scale1), key_mask, pairs))
        tokens = tokens + gate2 * self.dropout(self.cross(modulate(self.norms[1](tokens), shift2, scale2), context))
        return tokens + gate3 * self.dropout(self.mlp(modulate(self.norms[2](tokens), shift3, scale3)))


class MessageLayer(nn.Module):
    """A CSPNet layer over the atom tokens: m_ij = MLP(h_i, h_j, e_ij), h_i += MLP(h_i, mean_j m_ij).
    The first linear map of the message is split into its three inputs' parts so that the [B, N, N]
    tensors hold ``message_width`` channels, never 2 x width; the update starts at zero (identity)."""

    def __init__(self, width: int, edge_in: int, message_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.source = nn.Linear(width, message_width)
        self.target = nn.Linear(width, message_width, bias=False)
        self.edge = nn.Linear(edge_in, message_width, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(message_width, message_width), nn.SiLU())
        self.update = nn.Sequential(nn.Linear(width + message_width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.update[-1].weight)
        nn.init.zeros_(self.update[-1].bias)

    def forward(self, atoms: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``atoms`` [B, N, W], ``edges`` [B, N, N, E] (row i, column j), ``mask`` [B, N] real atoms."""
        h = self.norm(atoms)
        messages = self.message(self.source(h)[:, :, None] + self.target(h)[:, None, :] + self.edge(edges.to(h.dtype)))
        weights = mask[:, None, :, None].to(messages.dtype)
        mean = (messages * weights).sum(2) / mask.sum(1).clamp_min(1)[:, None, None].to(messages.dtype)
        return atoms + self.update(torch.cat([h, mean], dim=-1))


class CrystalDiT(nn.Module):
    """``forward(coords [B,N,3], batch, lattice_z [B,6], lattice_free [B,6], time [B], properties [B,P],
    lattice_matrix [B,3,3] in Å (needed when ``config.uses_lattice_matrix``), polar [B,3] bool (the space
    group's polar axes; needed when ``polar_invariant``), estimate (the clean estimate
    ``(coords [B,N,3], k [B,6] standardised, present [B])`` of a ``self_conditioning`` network; None:
    absent; other networks ignore it))``
    -> ``(lattice_noise [B,6], atom_score [B,N,3])`` (padded atoms 0)."""

    def __init__(self, config: DiTConfig | None = None):
        super().__init__()
        self.config = config = config or DiTConfig()
        if config.edge_features and config.metric_features:
            raise ValueError("edge_features replaces metric_features: set one of them")
        width = config.width
        self.element = nn.Embedding(MAX_ATOMIC_NUMBER + 1, config.element_dim, padding_idx=0)
        self.space_group = nn.Embedding(231, width)
        self.atom_count = nn.Embedding(MAX_CELL_ATOMS + 1, width)
        self.time = nn.Sequential(nn.Linear(config.time_dim, width), nn.SiLU(), nn.Linear(width, width))
        atom_features = config.element_dim + 9 + 6 + 3 + 1 + 6 * config.fourier_frequencies
        self.atom_input = nn.Sequential(nn.Linear(atom_features, width), nn.SiLU(), nn.Linear(width, width))
        self.lattice_input = nn.Sequential(nn.Linear(12, width), nn.SiLU(), nn.Linear(width, width))
        self.properties = PropertyTokens(width)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)
        edge_in = edge_input_width(config.pair_frequencies)
        self.edges = None
        if config.edge_features:
            self.edges = nn.Sequential(nn.Linear(edge_in, config.edge_features), nn.SiLU(),
                                       nn.Linear(config.edge_features, config.edge_features))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        if not 0 <= config.message_layers <= config.depth:
            raise ValueError(f"message_layers must lie in 0..depth ({config.depth}), got {config.message_layers}")
        self.messages = nn.ModuleList(MessageLayer(width, edge_in, config.message_width) for _ in range(config.message_layers))
        self.coord_head = OutputHead(width, 3, width)
        self.lattice_head = OutputHead(2 * width, 6, width)
        if config.self_conditioning:  # zero maps: a grown network computes what it did before
            self.clean_atoms = nn.Linear(6 * config.fourier_frequencies + 4, width)
            self.clean_lattice = nn.Linear(7, width)
            for layer in (self.clean_atoms, self.clean_lattice):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def absolute_coordinates(self, coords: torch.Tensor, polar: torch.Tensor | None) -> torch.Tensor:
        """The coordinates the atom features see: 0 along polar axes for a ``polar_invariant`` network."""
        if not self.config.polar_invariant:
            return coords
        if polar is None:
            raise ValueError("this network is blind along polar axes: pass polar [B, 3]")
        return coords * (~polar.bool()).unsqueeze(1).to(coords.dtype)

    def self_condition(self, tokens: torch.Tensor, coords: torch.Tensor, estimate, polar) -> torch.Tensor:
        """``tokens`` [B, 1 + N, W] plus the embedded clean estimate ``(coords [B, N, 3], k [B, 6],
        present [B])`` (None: absent, as zeros with a 0 flag)."""
        batch, atoms = coords.shape[:2]
        if estimate is None:
            clean_coords, clean_z = torch.zeros_like(coords), coords.new_zeros(batch, 6)
            present = coords.new_zeros(batch)
        else:
            clean_coords, clean_z, present = estimate
        flag = present.to(coords.dtype)[:, None]
        clean = self.absolute_coordinates(clean_coords.to(coords.dtype), polar)
        offset = clean - self.absolute_coordinates(coords, polar)
        atom_features = torch.cat([fourier_features(clean, self.config.fourier_frequencies), offset - torch.round(offset),
                                   flag[:, None].expand(batch, atoms, 1)], dim=-1) * flag[:, None]
        lattice_features = torch.cat([clean_z.to(coords.dtype), flag], dim=-1) * flag
        added = torch.cat([self.clean_lattice(lattice_features).unsqueeze(1), self.clean_atoms(atom_features)], dim=1)
        return tokens + added

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, coords, batch, lattice_z, lattice_free, time, properties, lattice_matrix=None, polar=None,
                estimate=None):
        mask = batch.atom_mask
        cond = (self.time(sinusoidal_embedding(time, self.config.time_dim)) + self.space_group(batch.space_group)
                + self.atom_count(batch.n_atoms.clamp(0, MAX_CELL_ATOMS)))
        translation_angles = 2 * math.pi * batch.translations
        features = torch.cat([
            self.element(batch.atom_z),
            batch.rotations.flatten(-2) / 2,
            torch.sin(translation_angles), torch.cos(translation_angles),
            batch.atom_free,
            torch.log(batch.atom_multiplicity.clamp_min(1)).unsqueeze(-1) / 4,
            fourier_features(self.absolute_coordinates(coords, polar), self.config.fourier_frequencies),
        ], dim=-1)
        atoms = self.atom_input(features)
        lattice = self.lattice_input(torch.cat([lattice_z, lattice_free.to(lattice_z.dtype)], dim=-1))
        tokens = torch.cat([lattice.unsqueeze(1), atoms], dim=1)
        if self.config.self_conditioning:
            tokens = self.self_condition(tokens, coords, estimate, polar)
        key_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        offsets = coords.float()[:, None, :, :] - coords.float()[:, :, None, :]
        if self.config.uses_lattice_matrix and lattice_matrix is None:
            raise ValueError("this network's pair features use the lattice: pass lattice_matrix")
        geometry = (edge_inputs(offsets, lattice_matrix, batch.n_atoms, self.config.pair_frequencies)
                    if self.edges is not None or self.messages else None)
        if self.edges is not None:
            pairs = self.edges(geometry)
        elif self.config.metric_features:
            distances = periodic_distances(offsets, lattice_matrix)
            pairs = torch.cat([fourier_features(offsets, self.config.pair_frequencies),
                               distance_features(distances, self.config.metric_features)], dim=-1)
        else:
            pairs = fourier_features(offsets, self.config.pair_frequencies)
        pairs = F.pad(pairs, (0, 0, 1, 0, 1, 0))
        context = self.properties(properties)
        modulation = self.modulation(cond)
        for index, block in enumerate(self.blocks):
            if index < len(self.messages):
                tokens = torch.cat([tokens[:, :1], self.messages[index](tokens[:, 1:], geometry, mask)], dim=1)
            tokens = block(tokens, modulation, key_mask, pairs, context)
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        atoms = tokens[:, 1:]
        pooled = (atoms * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        lattice_noise = self.lattice_head(torch.cat([tokens[:, 0], pooled], dim=-1), cond)
        return lattice_noise, self.coord_head(atoms, cond) * weights
