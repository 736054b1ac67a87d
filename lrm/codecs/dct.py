"""The built-in, weight-free latent space: block DCT on YCbCr, 32 channels at 1/8 resolution.

Pixels are converted to full-range YCbCr (JPEG / BT.601), cut into 8x8 blocks and transformed
with the orthonormal DCT-II; the lowest-frequency coefficients of each block, in JPEG zigzag
order, become the latent channels (Y first, then Cb, then Cr). Dropped coefficients decode as
zeros. Every step is linear, so the whole codec is two 1x1 convolutions around a pixel
(un)shuffle: differentiable, fast, on any device and dtype, and encode(decode(z)) == z exactly for latents
that decode inside [0, 1]. Decoding clamps pixels to [0, 1] (real photos' latents overshoot by a few percent
at edges), which changes those latents on re-encoding and gives their clamped pixels no gradient.

Mirroring a block left-right maps pixel column j to 7 - j, which multiplies the DCT-II
coefficient of horizontal frequency v by (-1)^v. So the latents of a mirrored image are the
latents with their block columns reversed and odd-horizontal-frequency channels negated
(`mirror_latents`, exact): flip augmentation costs no re-encoding.

Each channel is standardised with fixed constants measured once on real photos
(CHANNEL_MEAN, CHANNEL_STD below) so that latents have roughly unit variance, like a
diffusion model's latents. Changing the split or the constants changes the latent space:
bump `DCTCodec.version` when you do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lrm.codecs.base import Codec

BLOCK = 8  # DCT block size, and the spatial factor
SPLIT = (26, 3, 3)  # kept coefficients per plane (Y, Cb, Cr): best mean PSNR of the splits searched (32.45 dB)

# Full-range YCbCr (JPEG, ITU-T T.871 / BT.601 luma weights), without the +0.5 chroma offset.
RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
Y_OFFSET = -0.5  # luma is centred on 0 before the DCT, so a mid-grey block has a zero DC coefficient

# Per-channel mean and standard deviation of the raw coefficients (latents = (coef - mean) / std),
# measured on the 158 DreamBooth photos at 256 px (short side resized to 256, centre crop):
#   python benchmarks/dct_constants.py --split 26 3 3
# AC coefficients are symmetric about zero, so only the three DC channels carry a mean.
CHANNEL_MEAN = (
    0.1214, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,  # Y, zigzag 0-12
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,  # Y, zigzag 13-25
    -0.2535, 0.0, 0.0,  # Cb
    0.1284, 0.0, 0.0,  # Cr
)
CHANNEL_STD = (
    1.952, 0.3001, 0.3357, 0.1837, 0.1603, 0.1585, 0.101, 0.1095, 0.1159, 0.1195, 0.08487, 0.08615, 0.08817,
    0.07839, 0.07532, 0.05523, 0.06029, 0.06789, 0.07051, 0.06618, 0.06285, 0.04548, 0.05096, 0.05625,
    0.05735, 0.05289,
    0.5479, 0.08033, 0.08123,
    0.5818, 0.08741, 0.08038,
)


def zigzag(n: int = BLOCK) -> list[tuple[int, int]]:
    """(row, col) frequencies of an n x n block in JPEG zigzag order: (0,0), (0,1), (1,0), (2,0), ..."""
    order = []
    for s in range(2 * n - 1):
        rows = range(max(0, s - n + 1), min(s, n - 1) + 1)
        order += [(r, s - r) for r in (rows if s % 2 else reversed(rows))]
    return order


def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n, n), float64: coefficients = D @ signal."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def horizontal_parity(split: tuple[int, int, int]) -> torch.Tensor:
    """(sum(split),) float64: (-1)^v of each kept coefficient, v its horizontal frequency."""
    return torch.tensor([(-1.0) ** col for kept in split for _, col in zigzag()[:kept]], dtype=torch.float64)


def coefficient_basis(split: tuple[int, int, int]) -> torch.Tensor:
    """(sum(split), 3 * 64) float64: kept DCT coefficients of each YCbCr plane from a pixel-unshuffled block.

    Column index follows F.pixel_unshuffle: plane * 64 + row * 8 + col.
    """
    d = dct_matrix()
    basis_2d = torch.kron(d, d)  # (64, 64): row u*8+v, column i*8+j
    order = [u * BLOCK + v for u, v in zigzag()]
    rows = []
    for plane, kept in enumerate(split):
        if not 0 < kept <= BLOCK * BLOCK:
            raise ValueError(f"dct: each plane keeps 1..64 coefficients, got split {split}")
        block = torch.zeros(kept, 3 * BLOCK * BLOCK, dtype=torch.float64)
        block[:, plane * 64:(plane + 1) * 64] = basis_2d[order[:kept]]
        rows.append(block)
    return torch.cat(rows)


class DCTCodec(Codec):
    """Block DCT of YCbCr, `sum(split)` coefficients per 8x8 block, standardised per channel."""

    name = "dct"
    version = "1"
    spatial_factor = BLOCK
    temporal_factor = 1
    scale = 1.0  # the per-channel standardisation is part of the codec (CHANNEL_MEAN / CHANNEL_STD)

    def __init__(self, batch_size: int = 64, split: tuple[int, int, int] = SPLIT,
                 mean: tuple[float, ...] | None = CHANNEL_MEAN, std: tuple[float, ...] | None = CHANNEL_STD):
        """`mean=None, std=None` gives raw (unstandardised) coefficients, used to measure the constants."""
        super().__init__()
        self.batch_size = batch_size
        self.split = tuple(split)
        self.channels = sum(self.split)
        mean_t = torch.zeros(self.channels, dtype=torch.float64) if mean is None else torch.tensor(mean, dtype=torch.float64)
        std_t = torch.ones(self.channels, dtype=torch.float64) if std is None else torch.tensor(std, dtype=torch.float64)
        if mean_t.shape != (self.channels,) or std_t.shape != (self.channels,):
            raise ValueError(f"dct: mean and std need {self.channels} values for split {self.split}")

        color = torch.tensor(RGB_TO_YCBCR, dtype=torch.float64)
        expand = torch.eye(BLOCK * BLOCK, dtype=torch.float64)
        to_ycbcr = torch.kron(color, expand)  # (192, 192) on pixel-unshuffled channels
        keep = coefficient_basis(self.split)  # (c, 192)
        offset = torch.zeros(3 * BLOCK * BLOCK, dtype=torch.float64)
        offset[:BLOCK * BLOCK] = Y_OFFSET

        # encode: z = (keep @ (to_ycbcr @ x + offset) - mean) / std
        analysis = keep @ to_ycbcr / std_t[:, None]  # (c, 192)
        analysis_bias = (keep @ offset - mean_t) / std_t  # (c,)
        # decode: x = to_rgb @ keep.T @ (z * std + mean - keep @ offset); exact inverse on the kept subspace
        to_rgb = torch.kron(torch.linalg.inv(color).contiguous(), expand)
        synthesis = to_rgb @ keep.T * std_t[None, :]  # (192, c)
        synthesis_bias = to_rgb @ keep.T @ (mean_t - keep @ offset)  # (192,)

        # mirror: coef -> parity * coef, so z -> parity * z + (parity - 1) * mean / std
        parity = horizontal_parity(self.split)
        self.register_buffer("mirror_sign", parity, persistent=False)
        self.register_buffer("mirror_bias", (parity - 1) * mean_t / std_t, persistent=False)
        self.register_buffer("analysis", analysis[:, :, None, None], persistent=False)
        self.register_buffer("analysis_bias", analysis_bias, persistent=False)
        self.register_buffer("synthesis", synthesis[:, :, None, None], persistent=False)
        self.register_buffer("synthesis_bias", synthesis_bias, persistent=False)

    def settings(self) -> dict:
        return {**super().settings(), "split": list(self.split)}

    def mirror_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, c, h, w) -> latents of the left-right mirrored frames, exactly (see the module docstring)."""
        sign = _like(self.mirror_sign, latents)[:, None, None]  # (c, 1, 1)
        bias = _like(self.mirror_bias, latents)[:, None, None]
        return latents.flip(-1) * sign + bias

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = pixels.shape
        frames = F.pixel_unshuffle(pixels.reshape(b * t, 3, h, w), BLOCK)  # (B*T, 192, h/8, w/8)
        weight, bias = _like(self.analysis, pixels), _like(self.analysis_bias, pixels)
        latents = F.conv2d(frames, weight, bias)  # (B*T, c, h/8, w/8)
        return latents.reshape(b, t, self.channels, h // BLOCK, w // BLOCK)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = latents.shape
        weight, bias = _like(self.synthesis, latents), _like(self.synthesis_bias, latents)
        blocks = F.conv2d(latents.reshape(b * t, c, h, w), weight, bias)  # (B*T, 192, h, w)
        pixels = F.pixel_shuffle(blocks, BLOCK).clamp(0, 1)  # (B*T, 3, 8h, 8w)
        return pixels.reshape(b, t, 3, h * BLOCK, w * BLOCK)


def _like(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The float64 matrix on x's device and in x's dtype (devices follow inputs)."""
    return matrix.to(device=x.device, dtype=x.dtype)
