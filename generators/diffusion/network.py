"""The denoising network of GenMS Figure 2, in torch (no pymatgen).

Each atom is a token: Fourier features of its noisy fractional coordinates, an embedding of its
element and the continuous atomic number. One extra token carries the lattice. Tokens go
through blocks of a per-token MLP followed by order-invariant multi-head self-attention over
the crystal's atoms (no positional encoding: the network is equivariant to permutations of the
atoms), repeated over stages of growing width; a decoder mirrors the stages and concatenates
the encoder's outputs (U-Net skips), with no down- or up-sampling. Every block is modulated
(adaptive LayerNorm with zero-initialised gates, as in DiT) by a global conditioning vector
made of the diffusion time, the noisy lattice, the number of atoms and the composition.

The attention is geometric: its logits and values also see periodic features of the
fractional offsets between atoms (:class:`SelfAttention`). In a tiny-model test (64 training
crystals, 6 CPU minutes, random translations) plain attention over absolute coordinates left
the coordinate loss at its initial value (1.00) while the lattice loss fell to 0.01; with the
offsets the coordinate loss fell to 0.5. ``pair_frequencies = 0`` gives the plain network.

Outputs: per atom, the (normalised) negative score of the wrapped-normal noise on the
fractional coordinates (3 numbers); for the crystal, the noise of the normalised lattice
(6 numbers), read from the lattice token and the mean over atom tokens (invariant to the order
of the atoms).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from generators.diffusion.representation import MAX_ATOMIC_NUMBER, MAX_ATOMS, continuous_atomic_number, fourier_features


@dataclass
class NetworkConfig:
    """Sizes of the denoising network (widths grow stage by stage, GenMS Figure 2)."""

    widths: list[int] = field(default_factory=lambda: [128, 192, 256, 320])
    blocks_per_stage: int = 1
    middle_blocks: int = 2
    head_dim: int = 32
    mlp_ratio: float = 2.0
    cond_dim: int = 128
    element_dim: int = 128
    time_dim: int = 128
    fourier_frequencies: int = 10
    pair_frequencies: int = 10  # 0: plain attention (no geometric bias)
    max_atoms: int = MAX_ATOMS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetworkConfig:
        return cls(**values)


NETWORK_PRESETS = {
    # about 8.0 M parameters (16 MB as fp16): the GPU model
    "base": {},
    # about 0.1 M parameters: CPU smoke runs and tests
    "tiny": {"widths": [32, 48], "middle_blocks": 1, "head_dim": 16, "cond_dim": 32, "element_dim": 16, "time_dim": 32, "fourier_frequencies": 6, "pair_frequencies": 6},
}


def network_config(preset: str) -> NetworkConfig:
    """The :class:`NetworkConfig` of a named preset (``base`` or ``tiny``)."""
    if preset not in NETWORK_PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; choose from {', '.join(NETWORK_PRESETS)}")
    return NetworkConfig(**NETWORK_PRESETS[preset])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm modulation: ``x * (1 + scale) + shift`` with [B, 1, W] shift and scale."""
    return x * (1 + scale) + shift


def sinusoidal_embedding(time: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] diffusion times in [0, 1] -> [B, dim] sin/cos features over geometric frequencies."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=time.device, dtype=torch.float32) / half)
    arguments = 1000.0 * time.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(arguments), torch.cos(arguments)], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens; padded tokens are never attended to.

    With ``pair_features`` > 0 the attention is geometric: each head adds to its logits a
    learned linear function of the periodic features of the fractional offsets
    ``x_j - x_i`` between tokens, and each token also receives the attention-weighted sum of
    those pair features, mapped per head into the value space (relative-position attention in
    the style of Shaw et al. 2018, with the crystal's own periodic offsets). Both depend only on
    differences of coordinates, so they are invariant to translations and to the order of the
    atoms; there is no positional encoding of the token index.
    """

    def __init__(self, width: int, head_dim: int, pair_features: int = 0):
        super().__init__()
        self.heads = max(1, width // head_dim)
        self.head_dim = width // self.heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.pair_bias = nn.Linear(pair_features, self.heads) if pair_features else None
        self.pair_value = (
            nn.Parameter(torch.randn(self.heads, pair_features, self.head_dim) * pair_features**-0.5) if pair_features else None
        )

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = tokens.shape
        q, k, v = self.qkv(tokens).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.pair_bias is None or pairs is None:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
            return self.out(attended.transpose(1, 2).reshape(batch, length, width))
        pairs = pairs.to(q.dtype)
        logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5 + self.pair_bias(pairs).permute(0, 3, 1, 2)
        weights = torch.softmax(logits.masked_fill(~key_mask[:, None, None, :], float("-inf")).float(), dim=-1).to(v.dtype)
        attended = weights @ v  # [B, H, L, d]
        pair_sums = weights.transpose(1, 2) @ pairs  # [B, L, H, F]: sum_j w_hij * pair_ij
        attended = attended + torch.einsum("blhf,hfd->bhld", pair_sums, self.pair_value.to(v.dtype))
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class AtomBlock(nn.Module):
    """Per-token MLP then self-attention, each pre-normed, modulated and gated by the condition."""

    def __init__(self, width: int, config: NetworkConfig):
        super().__init__()
        hidden = int(width * config.mlp_ratio)
        self.mlp_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.attention_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.attention = SelfAttention(width, config.head_dim, 6 * config.pair_frequencies)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.cond_dim, 6 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, key_mask: torch.Tensor, pairs=None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None, :].chunk(6, dim=-1)
        tokens = tokens + gate1 * self.mlp(modulate(self.mlp_norm(tokens), shift1, scale1))
        attended = self.attention(modulate(self.attention_norm(tokens), shift2, scale2), key_mask, pairs)
        return tokens + gate2 * attended


class Stage(nn.Module):
    """A linear map to the stage's width (from the previous width, skips concatenated) and its blocks."""

    def __init__(self, in_width: int, width: int, blocks: int, config: NetworkConfig):
        super().__init__()
        self.project = nn.Linear(in_width, width) if in_width != width else nn.Identity()
        self.blocks = nn.ModuleList(AtomBlock(width, config) for _ in range(blocks))

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, key_mask: torch.Tensor, pairs=None) -> torch.Tensor:
        tokens = self.project(tokens)
        for block in self.blocks:
            tokens = block(tokens, cond, key_mask, pairs)
        return tokens


class Conditioning(nn.Module):
    """Global condition [B, cond_dim]: diffusion time + noisy lattice + atom count + composition."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        dim = config.cond_dim
        self.time_dim = config.time_dim
        self.time = nn.Sequential(nn.Linear(config.time_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.lattice = nn.Sequential(nn.Linear(6, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.atom_count = nn.Embedding(config.max_atoms + 1, dim)
        self.composition = nn.Sequential(nn.Linear(config.element_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, time, lattice, n_atoms, element_embeddings, mask) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(element_embeddings.dtype)
        composition = (element_embeddings * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return (
            self.time(sinusoidal_embedding(time, self.time_dim))
            + self.lattice(lattice)
            + self.atom_count(n_atoms.clamp(0, self.atom_count.num_embeddings - 1))
            + self.composition(composition)
        )


class OutputHead(nn.Module):
    """Modulated LayerNorm and a zero-initialised linear map to ``outputs`` numbers."""

    def __init__(self, width: int, outputs: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))
        self.linear = nn.Linear(width, outputs)
        for layer in (self.modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).chunk(2, dim=-1)
        if features.dim() == 3:
            shift, scale = shift[:, None, :], scale[:, None, :]
        return self.linear(modulate(self.norm(features), shift, scale))


class CrystalDenoiser(nn.Module):
    """U-Net of MLP + self-attention stages over atom tokens and a lattice token (GenMS Figure 2).

    ``forward(frac_coords [B,N,3] in [0,1), atomic_numbers [B,N] int (0 = padding),
    mask [B,N] bool, lattice [B,6] normalised noisy lattice, n_atoms [B] int, time [B] in (0,1])``
    returns ``(lattice_noise [B,6], coord_score [B,N,3])``; padded rows of ``coord_score`` are 0.
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        widths = config.widths
        self.element_embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, config.element_dim, padding_idx=0)
        self.conditioning = Conditioning(config)
        atom_features = 6 * config.fourier_frequencies + config.element_dim + 1
        self.atom_input = nn.Sequential(nn.Linear(atom_features, widths[0]), nn.SiLU(), nn.Linear(widths[0], widths[0]))
        self.lattice_token = nn.Sequential(nn.Linear(config.cond_dim, widths[0]), nn.SiLU(), nn.Linear(widths[0], widths[0]))
        previous = [widths[0], *widths[:-1]]
        self.encoder = nn.ModuleList(
            Stage(previous[i], width, config.blocks_per_stage, config) for i, width in enumerate(widths)
        )
        self.middle = Stage(widths[-1], widths[-1], config.middle_blocks, config)
        decoder_inputs = [widths[i] + (widths[i + 1] if i + 1 < len(widths) else widths[-1]) for i in range(len(widths))]
        self.decoder = nn.ModuleList(
            Stage(decoder_inputs[i], widths[i], config.blocks_per_stage, config) for i in reversed(range(len(widths)))
        )
        self.coord_head = OutputHead(widths[0], 3, config.cond_dim)
        self.lattice_head = OutputHead(2 * widths[0], 6, config.cond_dim)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _tokens(self, frac_coords, atomic_numbers, element_embeddings, cond) -> torch.Tensor:
        features = torch.cat(
            [
                fourier_features(frac_coords, self.config.fourier_frequencies),
                element_embeddings,
                continuous_atomic_number(atomic_numbers).unsqueeze(-1),
            ],
            dim=-1,
        )
        atoms = self.atom_input(features)
        return torch.cat([self.lattice_token(cond).unsqueeze(1), atoms], dim=1)

    def _pair_features(self, frac_coords: torch.Tensor) -> torch.Tensor | None:
        """[B, N+1, N+1, 6K] periodic features of x_j - x_i; zeros on the lattice token's row and column."""
        if not self.config.pair_frequencies:
            return None
        offsets = frac_coords.float()[:, None, :, :] - frac_coords.float()[:, :, None, :]  # [B, i, j, 3]: x_j - x_i
        features = fourier_features(offsets, self.config.pair_frequencies)
        return F.pad(features, (0, 0, 1, 0, 1, 0))

    def forward(self, frac_coords, atomic_numbers, mask, lattice, n_atoms, time):
        element_embeddings = self.element_embedding(atomic_numbers.long())
        cond = self.conditioning(time, lattice, n_atoms, element_embeddings, mask)
        tokens = self._tokens(frac_coords, atomic_numbers, element_embeddings, cond)
        key_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        pairs = self._pair_features(frac_coords)
        skips = []
        for stage in self.encoder:
            tokens = stage(tokens, cond, key_mask, pairs)
            skips.append(tokens)
        tokens = self.middle(tokens, cond, key_mask, pairs)
        for stage, skip in zip(self.decoder, reversed(skips)):
            tokens = stage(torch.cat([tokens, skip], dim=-1), cond, key_mask, pairs)
        atom_mask = mask.unsqueeze(-1).to(tokens.dtype)
        atoms = tokens[:, 1:]
        pooled = (atoms * atom_mask).sum(1) / atom_mask.sum(1).clamp_min(1.0)
        lattice_noise = self.lattice_head(torch.cat([tokens[:, 0], pooled], dim=-1), cond)
        coord_score = self.coord_head(atoms, cond) * atom_mask
        return lattice_noise, coord_score
